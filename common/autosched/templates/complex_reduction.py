"""Complex reduction (matmul, conv): multi-level tiling with a register micro-tile.

Loop structure per block, MetaSchedule's CPU "SSRSRS": every spatial axis is split in four
(s0 parallel, s1 cache tile, s2 register tile, s3 vector/innermost), every reduction axis in
two (r0, r1), ordered ``s0 s1 r0 [s2 r1 | r1 s2] s3``. The accumulator tile is a write cache
(or the fused elementwise consumer) computed at the s0 or s1 loop.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir, tirx
from tvm.tirx import IndexMap

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue, TileKnob, divisors, tile_candidates
from autosched.templates.base import (
    UNROLL_STEPS,
    ApplyState,
    MetaTemplate,
    TemplateContext,
    block_exists,
    loop_extent,
    math_knobs,
    math_static,
    reuse_axis,
)

SPATIAL_LEVELS, REDUCTION_LEVELS = 4, 2
INNER_ORDERS = ("r1_s2_s3", "s2_r1_s3")
MAX_VECTOR = 64


def _tile_name(stage: StageInfo, axis: int) -> str:
    return f"tile_{stage.iter_kinds[axis].lower()}{axis}"


def _tile_knob(stage: StageInfo, axis: int) -> TileKnob:
    levels = SPATIAL_LEVELS if stage.iter_kinds[axis] == "S" else REDUCTION_LEVELS
    extent = stage.extents[axis]
    return TileKnob(_tile_name(stage, axis), extent, levels, tile_candidates(extent))


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
        if _vector_axis(stage) is not None and _has_reused_operand(stage):
            knobs.append(ChoiceKnob("pack", (False, True)))
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

        vec_axis = _vector_axis(stage)
        if vec_axis is not None:
            inner[vec_axis][2] = _pick_vector(extents[vec_axis], lanes)
        vec_regs = -(-inner[vec_axis][2] // lanes) if vec_axis is not None else 1
        reg_axis = reuse_axis(stage, vec_axis)
        if reg_axis is not None:
            inner[reg_axis][1] = _largest_divisor_at_most(
                extents[reg_axis], max(1, acc_budget // vec_regs)
            )

        # Cache tile: grow s1, innermost axis first, while the output tile stays in L1/2 and
        # enough parallel work remains outside.
        tile_budget = max(256, hw.l1_bytes // 2 // 4)
        min_outer = 4 * hw.num_cores
        for axis in reversed(spatial):
            while True:
                s1, s2, s3 = inner[axis]
                rest = extents[axis] // (s1 * s2 * s3)
                # A factor over tile_budget could never pass the check below.
                grow = _smallest_factor(rest, tile_budget)
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
        if vec_axis is not None and _has_reused_operand(stage):
            # Packing pays when the micro-kernel would otherwise read the operand with a
            # stride (dense's W[j, k]) or when long reductions stream whole panels of it.
            reduction = math.prod(extents[a] for a in stage.reduction_axes)
            values["pack"] = reduction >= 64
        return values | math_static(stage)

    # ---- apply --------------------------------------------------------------------------
    def apply(self, sch, stage, values, ctx, state) -> None:
        block = sch.get_sblock(stage.name)
        writeback = None
        if _will_fuse_epilogue(sch, stage, values, ctx):
            epilogue = sch.get_consumers(block)[0]
        elif values["write_cache"] and not _has_guarded_tile(stage, values):
            # The block now accumulates into a cache buffer; the returned block copies the
            # finished tile out, so it goes where a fused epilogue would.
            epilogue = sch.cache_write(block, 0, "global")
            writeback = sch.get(epilogue).name_hint
        else:
            epilogue = None

        vec_axis = _vector_axis(stage)
        if values.get("pack") and vec_axis is not None:
            width = values[_tile_name(stage, vec_axis)][3]
            read_index = _packable_read(sch, block, vec_axis, width) if width > 1 else None
            if read_index is not None:
                vec_var = sch.get(block).iter_vars[vec_axis].var
                _pack(sch, block, read_index, vec_var, width, state)

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
        s3 = [splits[a][3] for a in spatial]
        r0 = [splits[a][0] for a in reduction]
        r1 = [splits[a][1] for a in reduction]
        middle = r1 + s2 if values["inner_order"] == "r1_s2_s3" else s2 + r1
        sch.reorder(*s0, *s1, *r0, *middle, *s3)
        outer = sch.fuse(*s0) if len(s0) > 1 else s0[0]
        sch.parallel(outer)
        tile_loop = s1[-1]
        innermost = s3[-1]
        # Vectors wider than MAX_VECTOR make LLVM's code generation crawl: leave those scalar.
        if 1 < values[_tile_name(stage, spatial[-1])][3] <= MAX_VECTOR:
            sch.vectorize(innermost)
        if values["unroll"]:
            sch.annotate(outer, "pragma_auto_unroll_max_step", values["unroll"])
            sch.annotate(outer, "pragma_unroll_explicit", 1)

        attach = outer if values["write_level"] == 0 else tile_loop
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, attach, preserve_unit_loops=True)
            _vectorize_inner(sch, epilogue, ctx.hw.vector_lanes_f32)
            state.placed.add(sch.get(epilogue).name_hint)
        # With a guarded tile TVM's decomposition leaves stale block flags (its own debug
        # verification fails); the init then stays inside the reduction, which is correct.
        if r0 and not _has_guarded_tile(stage, values):
            sch.decompose_reduction(block, r0[0])
        state.attach_points[stage.name] = [outer, tile_loop]
        state.placed.add(stage.name)
        if writeback is not None:
            state.placed.add(writeback)


def _has_guarded_tile(stage: StageInfo, values: dict[str, Any]) -> bool:
    """A guarded (non-dividing) spatial tile leaves the producer's region smaller than a
    consumer loop placed at the tile: TVM refuses both the epilogue fusion and the write-back
    of a write cache there (region cover), so those stay off for such configs."""
    return any(
        stage.extents[axis] % math.prod(values[_tile_name(stage, axis)][1:])
        for axis in stage.spatial_axes
    )


def _will_fuse_epilogue(
    sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], ctx: TemplateContext
) -> bool:
    """Fuse the one injective consumer left after inlining (bias, ReLU) into the tile."""
    if not values.get("fuse_epilogue") or _has_guarded_tile(stage, values):
        return False
    consumers = sch.get_consumers(sch.get_sblock(stage.name))
    if len(consumers) != 1:
        return False
    consumer = sch.get(consumers[0])
    if any(iv.iter_type != 0 for iv in consumer.iter_vars):  # 0: data parallel
        return False
    if len(consumer.iter_vars) != len(stage.spatial_axes):
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


def _packable_read(sch: s_tir.Schedule, block: Any, vec_axis: int, width: int) -> int | None:
    """Index of an operand worth packing: read at a point, indexed by the vector axis alone in
    exactly one dimension (so ``x // width, ..., x % width`` is a valid blocked layout), and
    reused along another spatial axis (so the copy is amortized)."""
    blk = sch.get(block)
    vec_var = blk.iter_vars[vec_axis].var
    spatial = {i for i, iv in enumerate(blk.iter_vars) if iv.iter_type == 0}
    for index, region in enumerate(blk.reads):
        dims = [r.min for r in region.region]
        if len(dims) < 2 or any(int(r.extent) != 1 for r in region.region):
            continue
        hits = [d for d, e in enumerate(dims) if vec_var.same_as(e)]
        others = [d for d, e in enumerate(dims) if d not in hits and _uses(e, vec_var)]
        used = {i for i, iv in enumerate(blk.iter_vars) if any(_uses(e, iv.var) for e in dims)}
        shape = [int(x) for x in region.source.shape]
        if len(hits) == 1 and not others and spatial - used and shape[hits[0]] % width == 0:
            return index
    return None


def _uses(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _pack(
    sch: s_tir.Schedule,
    block: Any,
    read_index: int,
    vec_axis_var: Any,
    width: int,
    state: ApplyState,
) -> None:
    """Copy the operand into a blocked layout ``[x // width, ..., x % width]`` so the micro-
    kernel's vector loads are contiguous and a panel of it is contiguous in memory."""

    region = sch.get(block).reads[read_index]
    dims = [r.min for r in region.region]
    d = next(i for i, e in enumerate(dims) if vec_axis_var.same_as(e))
    ndim = len(dims)
    copy = sch.cache_read(block, read_index, "global")

    # Index variables must be int32 like te loops (IndexMap.from_func makes int64
    # ones, which TVM then fails to parse against int32 loops).
    idx = [tirx.Var(f"i{n}", "int32") for n in range(ndim)]
    rest = [idx[i] for i in range(ndim) if i != d]
    blocked = IndexMap(idx, [idx[d] // width, *rest, idx[d] % width], None)
    sch.transform_layout(block, ("read", read_index), blocked)
    name = sch.get(copy).name_hint
    loops = sch.get_loops(copy)
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(outer)
    state.placed.add(name)


def _has_reused_operand(stage: StageInfo) -> bool:
    spatial = {a for a in stage.spatial_axes if stage.extents[a] > 1}
    return any(
        len(r.index_vars) >= 2 and spatial - {v for i in r.index_vars for v in i}
        for r in stage.reads
    )


def _vector_axis(stage: StageInfo) -> int | None:
    """The innermost spatial axis with extent > 1: contiguous in the output."""
    for axis in reversed(stage.spatial_axes):
        if stage.extents[axis] > 1:
            return axis
    return None


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
    return math.prod(extents[a] // math.prod(v) for a, v in inner.items())
