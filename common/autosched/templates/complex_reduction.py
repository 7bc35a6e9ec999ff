"""Complex reduction (matmul, conv): multi-level tiling with a register micro-tile.

Loop structure per block, MetaSchedule's CPU "SSRSRS": every spatial axis is split in four
(s0 parallel, s1 cache tile, s2 register tile, s3 vector/innermost), every reduction axis in
two (r0, r1), ordered ``s0 s1 r0 [s2 r1 | r1 s2] s3``. The accumulator tile is a write cache
(or the fused elementwise consumer) computed at the s0 or s1 loop.
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
)

SPATIAL_LEVELS, REDUCTION_LEVELS = 4, 2
INNER_ORDERS = ("r1_s2_s3", "s2_r1_s3")


def _tile_name(stage: StageInfo, axis: int) -> str:
    return f"tile_{stage.iter_kinds[axis].lower()}{axis}"


def _epilogue_possible(stage: StageInfo, ctx: TemplateContext) -> bool:
    consumers = [ctx.stages[c] for c in stage.consumers if c in ctx.stages]
    return len(consumers) == 1 and "R" not in consumers[0].iter_kinds


class ComplexReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.COMPLEX_REDUCTION
    phase: ClassVar[int] = 1

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        knobs: list[Knob] = []
        for axis, kind in enumerate(stage.iter_kinds):
            levels = SPATIAL_LEVELS if kind == "S" else REDUCTION_LEVELS
            extent = stage.extents[axis]
            knobs.append(TileKnob(_tile_name(stage, axis), extent, levels, tile_candidates(extent)))
        knobs += [
            ChoiceKnob("inner_order", INNER_ORDERS),
            ChoiceKnob("unroll", UNROLL_STEPS),
            ChoiceKnob("write_level", (0, 1)),
            ChoiceKnob("write_cache", (True, False)),
        ]
        if _epilogue_possible(stage, ctx):
            knobs.append(ChoiceKnob("fuse_epilogue", (True, False)))
        return knobs

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
        vec_regs = max(1, inner[vec_axis][2] // lanes) if vec_axis is not None else 1
        reg_axis = _register_axis(stage, vec_axis)
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
                grow = _smallest_factor(rest)
                if grow is None:
                    break
                tile = math.prod(math.prod(v) for v in inner.values()) * grow
                outer = _outer_product(inner, extents) // grow
                if tile > tile_budget or outer < min_outer:
                    break
                inner[axis][0] *= grow

        values: dict[str, KnobValue] = {}
        for axis in spatial:
            knob = TileKnob(
                _tile_name(stage, axis), extents[axis], 4, tile_candidates(extents[axis])
            )
            values[knob.name] = knob.make(inner[axis])
        # Reduction: keep kernel windows whole and a short contiguous chunk of the rest inside.
        r_budget = 64
        for axis in reversed(stage.reduction_axes):
            knob = TileKnob(
                _tile_name(stage, axis), extents[axis], 2, tile_candidates(extents[axis])
            )
            r1 = _largest_divisor_at_most(extents[axis], r_budget)
            r_budget = max(1, r_budget // r1)
            values[knob.name] = knob.make([r1])
        values.update(inner_order="r1_s2_s3", unroll=64, write_level=1, write_cache=True)
        if _epilogue_possible(stage, ctx):
            values["fuse_epilogue"] = True
        return values

    # ---- apply --------------------------------------------------------------------------
    def apply(self, sch, stage, values, ctx, state) -> None:
        block = sch.get_sblock(stage.name)
        writeback = None
        if _will_fuse_epilogue(sch, stage, values, ctx):
            epilogue = sch.get_consumers(block)[0]
        elif values["write_cache"]:
            # The block now accumulates into a cache buffer; the returned block copies the
            # finished tile out, so it goes where a fused epilogue would.
            epilogue = sch.cache_write(block, 0, "global")
            writeback = sch.get(epilogue).name_hint
        else:
            epilogue = None

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
        if loop_extent(sch, innermost) > 1 and values[_tile_name(stage, spatial[-1])][3] > 1:
            sch.vectorize(innermost)
        if values["unroll"]:
            sch.annotate(outer, "pragma_auto_unroll_max_step", values["unroll"])
            sch.annotate(outer, "pragma_unroll_explicit", 1)

        attach = outer if values["write_level"] == 0 else tile_loop
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, attach, preserve_unit_loops=True)
            _vectorize_inner(sch, epilogue, ctx.hw.vector_lanes_f32)
            state.placed.add(sch.get(epilogue).name_hint)
        if r0:
            sch.decompose_reduction(block, r0[0])
        state.attach_points[stage.name] = [outer, tile_loop]
        state.placed.add(stage.name)
        if writeback is not None:
            state.placed.add(writeback)


def _will_fuse_epilogue(
    sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], ctx: TemplateContext
) -> bool:
    """Fuse the one injective consumer left after inlining (bias, ReLU) into the tile."""
    if not values.get("fuse_epilogue"):
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
    loops = sch.get_loops(block)
    inner = loops[-1]
    extent = loop_extent(sch, inner)
    if extent <= 1:
        return
    if extent > lanes * 4 and extent % lanes == 0:
        inner = sch.split(inner, factors=[None, lanes])[1]
    sch.vectorize(inner)


def _vector_axis(stage: StageInfo) -> int | None:
    """The innermost spatial axis with extent > 1: contiguous in the output."""
    for axis in reversed(stage.spatial_axes):
        if stage.extents[axis] > 1:
            return axis
    return None


def _register_axis(stage: StageInfo, vec_axis: int | None) -> int | None:
    """A spatial axis to unroll into several accumulators: prefer one along which the operand
    read with the vector axis is reused (each vector load then feeds several FMAs)."""
    candidates = [a for a in stage.spatial_axes if a != vec_axis and stage.extents[a] > 1]
    if not candidates:
        return None
    for read in stage.reads:
        used = {v for index in read.index_vars for v in index}
        if vec_axis in used:
            reused = [a for a in candidates if a not in used]
            if reused:
                return max(reused, key=lambda a: stage.extents[a])
    return candidates[-1]


def _pick_vector(extent: int, lanes: int) -> int:
    options = [d for d in divisors(extent) if d <= 2 * lanes]
    for want in (lanes, lanes // 2):
        full = [d for d in options if d % want == 0]
        if full:
            return max(full)
    return max(options)


def _largest_divisor_at_most(extent: int, limit: int) -> int:
    return max(d for d in divisors(extent) if d <= max(1, limit))


def _smallest_factor(n: int) -> int | None:
    for d in divisors(n):
        if d > 1:
            return d
    return None


def _outer_product(inner: dict[int, list[int]], extents: tuple[int, ...]) -> int:
    return math.prod(extents[a] // math.prod(v) for a, v in inner.items())
