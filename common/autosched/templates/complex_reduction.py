"""Complex reduction (matmul, conv): multi-level tiling with a register micro-tile.

Loop structure per block, MetaSchedule's CPU "SSRSRS": every spatial axis is split in four
(s0 parallel, s1 cache tile, s2 register tile, s3 vector/innermost), every reduction axis in
two (r0, r1), ordered ``s0 s1 r0 [s2 r1 | r1 s2] s3``. The accumulator tile is a write cache
(or the fused elementwise consumer) computed at the s0 or s1 loop. With ``pad`` (``padding``)
an einsum-like block is padded so that tiles that do not divide their axis (awkward, prime
extents) still give an unguarded micro-kernel; only the write-back of the output is guarded.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue, TileKnob, divisors, tile_candidates
from autosched.templates.base import (
    UNROLL_STEPS,
    MetaTemplate,
    TemplateContext,
    block_exists,
    loop_extent,
    math_knobs,
    math_static,
    reuse_axis,
)
from autosched.templates.packing import has_reused_operand, pack, packable_read
from autosched.templates.padding import (
    PAD,
    copy_at_root,
    guarded_at_tile,
    least_padding,
    may_pad,
    padded_tile_growth,
    place_writeback,
    try_pad,
)
from autosched.templates.reduction_lanes import (
    REDUCE_LANES,
    lanes_axis,
    low_reuse,
    place_reduce_lanes,
)
from autosched.templates.vector_axis import (
    VECTOR_AXIS,
    innermost_axis,
    lanes_innermost,
    static_vector_axis,
    vector_axis_options,
    write_dim,
)

SPATIAL_LEVELS, REDUCTION_LEVELS = 4, 2
INNER_ORDERS = ("r1_s2_s3", "s2_r1_s3")
MAX_VECTOR = 64
MAX_REGISTER_TILE = 16
MAX_SCALAR_INNER, MAX_UNROLL_SCALAR_INNER = 4, 64


def _tile_name(stage: StageInfo, axis: int) -> str:
    return f"tile_{stage.iter_kinds[axis].lower()}{axis}"


def _tile_knob(stage: StageInfo, axis: int) -> TileKnob:
    extent = stage.extents[axis]
    if stage.iter_kinds[axis] != "S":
        return TileKnob(_tile_name(stage, axis), extent, REDUCTION_LEVELS, tile_candidates(extent))
    # Every small register tile too: with padding, 6 or 12 rows need not divide the axis.
    small = set(range(1, min(extent, MAX_REGISTER_TILE) + 1))
    candidates = tuple(sorted(set(tile_candidates(extent)) | small))
    return TileKnob(_tile_name(stage, axis), extent, SPATIAL_LEVELS, candidates)


def _epilogue_possible(stage: StageInfo, ctx: TemplateContext) -> bool:
    consumers = [ctx.stages[c] for c in stage.consumers if c in ctx.stages]
    return len(consumers) == 1 and "R" not in consumers[0].iter_kinds


class ComplexReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.COMPLEX_REDUCTION
    phase: ClassVar[int] = 1

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        knobs: list[Knob] = []
        for axis in range(len(stage.iter_kinds)):
            knobs.append(_tile_knob(stage, axis))
        knobs += [
            ChoiceKnob("inner_order", INNER_ORDERS),
            ChoiceKnob("unroll", UNROLL_STEPS),
            ChoiceKnob("write_level", (0, 1)),
            ChoiceKnob("write_cache", (True, False)),
        ]
        if _epilogue_possible(stage, ctx):
            knobs.append(ChoiceKnob("fuse_epilogue", (True, False)))
        if innermost_axis(stage) is not None and has_reused_operand(stage):
            knobs.append(ChoiceKnob("pack", (False, True)))
        if len(vector_axis_options(stage)) > 1:
            knobs.append(ChoiceKnob(VECTOR_AXIS, vector_axis_options(stage)))
        if may_pad(stage):
            knobs.append(ChoiceKnob(PAD, (False, True)))
        if low_reuse(stage) and lanes_axis(stage, ctx.hw.vector_lanes_f32) is not None:
            knobs.append(ChoiceKnob(REDUCE_LANES, (False, True)))
        return knobs + math_knobs(stage)

    # ---- static heuristic -------------------------------------------------------------
    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        hw = ctx.hw
        lanes = hw.vector_lanes_f32
        # Accumulators that fit in the vector register file with room for operands.
        acc_budget = 12 if hw.vector_bits >= 512 else 8
        spatial = stage.spatial_axes
        extents = stage.extents
        inner = {a: [1, 1, 1] for a in spatial}  # s1, s2, s3 per spatial axis
        # Axes whose divisors are poor get tiles that do not divide them, padded (``pad``).
        vec_axis = static_vector_axis(stage, lanes)
        # Lanes moved off the innermost axis already fill whole vectors (no padding then).
        can_pad = may_pad(stage) and vec_axis == innermost_axis(stage)
        padded: set[int] = set()

        if vec_axis is not None:
            vector = _pick_vector(extents[vec_axis], lanes)
            if can_pad and vector < lanes < extents[vec_axis]:
                vector = lanes
                padded.add(vec_axis)
            inner[vec_axis][2] = vector
        vec_regs = -(-inner[vec_axis][2] // lanes) if vec_axis is not None else 1
        reg_axis = reuse_axis(stage, vec_axis)
        if reg_axis is not None:
            budget = min(MAX_REGISTER_TILE, max(1, acc_budget // vec_regs))
            rows = _largest_divisor_at_most(extents[reg_axis], budget)
            if can_pad and 2 * rows <= budget < extents[reg_axis]:
                rows = least_padding(extents[reg_axis], budget)
                padded.add(reg_axis)
            inner[reg_axis][1] = rows

        # Cache tile: grow s1, innermost axis first, while the output tile stays in L1/2 and
        # enough parallel work remains outside.
        tile_budget = max(256, hw.l1_bytes // 2 // 4)
        min_outer = 4 * hw.num_cores
        for axis in reversed(spatial):
            while True:
                step = math.prod(inner[axis])
                if axis in padded:
                    grow = padded_tile_growth(extents[axis], step)
                else:  # a factor over tile_budget could never pass the check below
                    grow = _smallest_factor(extents[axis] // step, tile_budget)
                if grow is None:
                    break
                tile = math.prod(math.prod(v) for v in inner.values()) * grow
                outer = _outer_product(inner, extents) // grow
                if tile > tile_budget or outer < min_outer:
                    break
                inner[axis][0] *= grow

        values: dict[str, KnobValue] = {}
        for axis in spatial:
            knob = _tile_knob(stage, axis)
            values[knob.name] = knob.make(inner[axis])
        # Reduction: keep kernel windows whole and a short contiguous chunk of the rest inside.
        r_budget = 64
        for axis in reversed(stage.reduction_axes):
            knob = _tile_knob(stage, axis)
            r1 = _largest_divisor_at_most(extents[axis], r_budget)
            r_budget = max(1, r_budget // r1)
            values[knob.name] = knob.make([r1])
        values.update(inner_order="r1_s2_s3", unroll=64, write_level=1, write_cache=True)
        if _epilogue_possible(stage, ctx):
            values["fuse_epilogue"] = True
        if len(vector_axis_options(stage)) > 1:
            values[VECTOR_AXIS] = vec_axis
        if vec_axis is not None and has_reused_operand(stage):
            # Packing pays when the micro-kernel would otherwise read the operand with a
            # stride (dense's W[j, k]) or when long reductions stream whole panels of it.
            reduction = math.prod(extents[a] for a in stage.reduction_axes)
            values["pack"] = reduction >= 64
        if may_pad(stage):
            values[PAD] = bool(padded)
        if low_reuse(stage) and lanes_axis(stage, lanes) is not None:
            values[REDUCE_LANES] = True
        return values | math_static(stage)

    # ---- apply --------------------------------------------------------------------------
    def apply(self, sch, stage, values, ctx, state) -> None:
        block = sch.get_sblock(stage.name)
        # Its own loop nest: the tiling, caching and padding knobs do not apply.
        if values.get(REDUCE_LANES) and place_reduce_lanes(sch, block, stage, ctx, state):
            return
        tiles = {axis: values[_tile_name(stage, axis)] for axis in range(len(stage.iter_kinds))}
        padded = try_pad(sch, block, stage, tiles, set(ctx.stages)) if values.get(PAD) else None
        # Padding makes every spatial tile divide: the write-back alone is guarded.
        guarded = padded is None and _has_guarded_tile(stage, values)
        writeback, epilogue = None, None
        if padded is not None:
            state.placed.update(sch.get(b).name_hint for b in padded.inputs)
        if padded is not None and padded.writeback is not None:
            state.placed.add(sch.get(padded.writeback).name_hint)
            fuse = _will_fuse_epilogue(sch, padded.writeback, values, ctx, guarded=False)
            epilogue = place_writeback(sch, padded.writeback, fuse, ctx.hw.vector_lanes_f32)
        elif _will_fuse_epilogue(sch, block, values, ctx, guarded):
            epilogue = sch.get_consumers(block)[0]
        vec_axis = _lanes_axis(stage, values, padded is not None or guarded)
        moved = vec_axis != innermost_axis(stage)
        if epilogue is None and (values["write_cache"] or moved) and not guarded:
            # The block now accumulates into a cache buffer; the returned block copies the
            # finished tile out, so it goes where a fused epilogue would.
            epilogue = sch.cache_write(block, 0, "global")
            writeback = sch.get(epilogue).name_hint
        if moved:
            # The accumulator keeps the lanes innermost (its own buffer: a write cache or the
            # fused epilogue's input); the write-back restores the output's layout per tile.
            width = values[_tile_name(stage, vec_axis)][3]
            ndim = len(stage.spatial_axes)
            blocked = lanes_innermost(ndim, write_dim(stage, vec_axis), width)
            sch.transform_layout(block, ("write", 0), blocked)

        if values.get("pack") and vec_axis is not None:
            width = values[_tile_name(stage, vec_axis)][3]
            read_index = packable_read(sch, block, vec_axis, width) if width > 1 else None
            if read_index is not None:
                vec_var = sch.get(block).iter_vars[vec_axis].var
                copies = padded.inputs if padded is not None else ()
                pack(sch, block, read_index, vec_var, width, state, copies)
        if padded is not None:
            # The zero-padded copies: one parallel, vectorized pass each, at root.
            for copy in padded.inputs:
                copy_at_root(sch, copy, ctx.hw.vector_lanes_f32)

        loops = sch.get_loops(block)
        kinds = stage.iter_kinds
        splits: dict[int, list[Any]] = {}
        for axis, loop in enumerate(loops):
            factors = values[_tile_name(stage, axis)]
            splits[axis] = sch.split(loop, factors=[None, *factors[1:]])
        spatial = [a for a, k in enumerate(kinds) if k == "S"]
        reduction = [a for a, k in enumerate(kinds) if k == "R"]
        s0 = [splits[a][0] for a in spatial]
        s1 = [splits[a][1] for a in spatial]
        s2 = [splits[a][2] for a in spatial]
        # The vector axis' innermost loop last, whichever axis carries the lanes.
        s3 = [splits[a][3] for a in spatial if a != vec_axis]
        s3 += [splits[vec_axis][3]] if vec_axis is not None else []
        r0 = [splits[a][0] for a in reduction]
        r1 = [splits[a][1] for a in reduction]
        middle = r1 + s2 if values["inner_order"] == "r1_s2_s3" else s2 + r1
        sch.reorder(*s0, *s1, *r0, *middle, *s3)
        outer = sch.fuse(*s0) if len(s0) > 1 else s0[0]
        sch.parallel(outer)
        tile_loop = s1[-1]
        innermost = s3[-1]
        # Vectors wider than MAX_VECTOR make LLVM's code generation crawl: leave those scalar.
        if vec_axis is not None and 1 < values[_tile_name(stage, vec_axis)][3] <= MAX_VECTOR:
            sch.vectorize(innermost)
        # The other axes' innermost tiles are scalar loops around each vector operation; when
        # they are long, 512 unrolled steps made LLVM take over a minute per candidate.
        scalar_inner = math.prod(values[_tile_name(stage, a)][3] for a in spatial if a != vec_axis)
        unroll = values["unroll"]
        if scalar_inner > MAX_SCALAR_INNER:
            unroll = min(unroll, MAX_UNROLL_SCALAR_INNER)
        if unroll:
            sch.annotate(outer, "pragma_auto_unroll_max_step", unroll)
            sch.annotate(outer, "pragma_unroll_explicit", 1)

        attach = outer if values["write_level"] == 0 else tile_loop
        if padded is not None and epilogue is not None:
            epilogue = guarded_at_tile(sch, epilogue, attach, ctx.hw.vector_lanes_f32)
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, attach, preserve_unit_loops=True)
            _vectorize_inner(sch, epilogue, ctx.hw.vector_lanes_f32)
            state.placed.add(sch.get(epilogue).name_hint)
        # With a guarded tile TVM's decomposition leaves stale block flags (its own debug
        # verification fails); the init then stays inside the reduction, which is correct.
        if r0 and not guarded:
            sch.decompose_reduction(block, r0[0])
        if r0:
            state.reduction_points[stage.name] = r0[0]
        state.attach_points[stage.name] = [outer, tile_loop]
        state.placed.add(stage.name)
        if writeback is not None:
            state.placed.add(writeback)


def _lanes_axis(stage: StageInfo, values: dict[str, Any], guarded_or_padded: bool) -> int | None:
    """The axis that carries the vector lanes (``vector_axis``): another than the innermost
    only where its vector tile divides it, no other axis has an innermost tile, and no tile
    is guarded or padded (the accumulator's blocked layout needs whole vectors, and a
    guarded tile gets no write cache)."""
    inner = innermost_axis(stage)
    chosen = values.get(VECTOR_AXIS, inner)
    if chosen == inner or guarded_or_padded:
        return inner
    # Other axes' innermost tiles would be scalar loops inside the moved layout's vector
    # loop: LLVM took 70-90 s to compile such candidates, and they are never fast.
    if any(values[_tile_name(stage, a)][3] > 1 for a in stage.spatial_axes if a != chosen):
        return inner
    width = values[_tile_name(stage, chosen)][3]
    return chosen if width > 1 and stage.extents[chosen] % width == 0 else inner


def _has_guarded_tile(stage: StageInfo, values: dict[str, Any]) -> bool:
    """A guarded (non-dividing) spatial tile leaves the producer's region smaller than a
    consumer loop placed at the tile: TVM refuses both the epilogue fusion and the write-back
    of a write cache there (region cover), so those stay off for such configs."""
    return any(
        stage.extents[axis] % math.prod(values[_tile_name(stage, axis)][1:])
        for axis in stage.spatial_axes
    )


def _will_fuse_epilogue(
    sch: s_tir.Schedule, producer: Any, values: dict[str, Any], ctx: TemplateContext, guarded: bool
) -> bool:
    """Fuse the one injective consumer left after inlining (bias, ReLU) into the tile."""
    if not values.get("fuse_epilogue") or guarded:
        return False
    consumers = sch.get_consumers(producer)
    if len(consumers) != 1:
        return False
    # Every block the consumer reads must be under the tile loop (TVM's rule): another
    # stage left at root (a bias broadcast that is not inlined) rules the fusion out.
    if len(sch.get_producers(consumers[0])) != 1:
        return False
    consumer = sch.get(consumers[0])
    if any(iv.iter_type != 0 for iv in consumer.iter_vars):  # 0: data parallel
        return False
    spatial = [iv for iv in sch.get(producer).iter_vars if iv.iter_type == 0]
    if len(consumer.iter_vars) != len(spatial):
        return False
    # Only an output (or a stage nobody reads further) is fused; others are placed later.
    name = consumer.name_hint
    info = ctx.stages.get(name)
    return info is None or info.is_output or not info.consumers or not block_exists(sch, name)


def _vectorize_inner(sch: s_tir.Schedule, block: Any, lanes: int) -> None:
    inner = sch.get_loops(block)[-1]
    extent = loop_extent(sch, inner)
    if extent > MAX_VECTOR and extent % lanes == 0:
        inner = sch.split(inner, factors=[None, lanes])[1]
    elif extent > MAX_VECTOR or extent <= 1:
        return
    sch.vectorize(inner)


def _pick_vector(extent: int, lanes: int) -> int:
    """The innermost tile: the divisor (up to two vectors) that fills vector lanes best,
    the narrower one on ties (fewer registers per accumulator row)."""
    options = divisors(extent, 2 * lanes)
    best = max(options, key=lambda d: (d / (-(-d // lanes) * lanes), -d if d > lanes else d))
    return best


def _largest_divisor_at_most(extent: int, limit: int) -> int:
    return divisors(extent, max(1, limit))[-1]


def _smallest_factor(n: int, limit: int) -> int | None:
    """The smallest factor > 1 of ``n`` if it is at most ``limit``, else None.

    Trial division stops at ``limit`` (the caller rejects anything larger anyway) and at
    sqrt(n), so neither a huge prime extent nor a huge limit makes it slow.
    """
    for d in range(2, min(math.isqrt(n), limit) + 1):
        if n % d == 0:
            return d
    return n if 1 < n <= limit else None  # no factor up to sqrt(n): n is prime (or 1)


def _outer_product(inner: dict[int, list[int]], extents: tuple[int, ...]) -> int:
    return math.prod(-(-extents[a] // math.prod(v)) for a, v in inner.items())
