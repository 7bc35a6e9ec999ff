"""Simple reduction (row sums, pooling, softmax/norm statistics): parallel spatial loops,
a vectorized spatial inner loop, or rfactor of the reduction into vector partial sums when
that vectorizes better; and, where the analysis finds a row anchor (``row_fusion``), the
choice of computing the statistics at the anchor's row loop (``location``: root or row).
In a row loop the anchor's loop decides parallelism, so ``parallel``, ``unroll`` and the
spatial ``vector`` only act at root; ``rfactor`` acts in both places."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue, divisors
from autosched.templates.base import (
    UNROLL_STEPS,
    ApplyState,
    MetaTemplate,
    TemplateContext,
    best_vector,
    loop_extent,
    math_knobs,
    math_static,
    vector_choices,
)
from autosched.templates.direct_compute import MIN_PARALLEL_ELEMENTS
from autosched.templates.row_fusion import (
    LOCATION,
    ROOT,
    ROW,
    lane_efficient_width,
    row_anchor,
)

#: The widest partial-sum vector rfactor offers (4 AVX-512 registers, 8 AVX2 ones).
MAX_RFACTOR = 64
#: Independent vector accumulators the static rfactor may use: a vector add has a latency of
#: ~4 cycles, so a single accumulator chain runs at a quarter of the adder's throughput.
STATIC_ACCUMULATORS = 4
#: ... but at least this many partial vectors per row, or the final sum dominates.
MIN_VECTORS_PER_ROW = 4
#: Fewer partial sums than this are no partial sums (2 already halves the add chain).
MIN_STATIC_RFACTOR = 2
#: Partial-sum widths offered whether or not they divide the row: 1 to 4 AVX-512 vectors,
#: 1 to 8 AVX2 ones (a fixed set, so that the knob's domain depends on the stage alone).
#: All even: ``_rfactor_tree`` splits a guarded width that is not several whole vectors in two.
GUARDED_WIDTHS = (8, 16, 24, 32, 48, 64)
#: The annotation that makes TVM's LoopPartition pass peel the guarded last step of a loop
#: (without it the guard becomes a masked load in every vector step: ~1.5x the time).
PARTITION_HINT = "pragma_loop_partition_hint"


def _rfactor_choices(stage: StageInfo) -> tuple[int, ...]:
    """Partial-sum widths: every divisor of the row up to MAX_RFACTOR, not only the powers of
    two, so that a row of 1000 gets 40 (2.5 AVX-512 vectors) and 999 gets 27 or 37; and the
    GUARDED_WIDTHS, whole vectors on AVX2 and AVX-512 whatever the row, so that a prime row
    (997) or one with only poor divisors (771 = 3 x 257) still gets full-vector partial sums.
    A width that does not divide is a guarded split whose last step ``_rfactor_tree`` peels
    off (loop partition), so only that step is scalar."""
    extent = stage.extents[stage.reduction_axes[-1]]
    widths = {f for f in divisors(extent, MAX_RFACTOR) if 1 < f < extent}
    widths.update(w for w in GUARDED_WIDTHS if w < extent)
    return (0, *sorted(widths))


def _static_rfactor(extent: int, lanes: int) -> int:
    """Partial sums in the most lane-efficient divisor width up to STATIC_ACCUMULATORS
    vectors, keeping MIN_VECTORS_PER_ROW partial vectors per row. When no divisor fills a
    vector (a prime row, 771 = 3 x 257), whole vectors with a peeled, scalar last step: as
    many accumulators as the row allows, for a tail of fewer than that many elements."""
    most = min(MAX_RFACTOR, lanes * STATIC_ACCUMULATORS)
    width = lane_efficient_width(extent, lanes, most, MIN_VECTORS_PER_ROW)
    if width < lanes:
        vectors = min(STATIC_ACCUMULATORS, extent // (lanes * MIN_VECTORS_PER_ROW))
        if vectors and lanes * vectors in GUARDED_WIDTHS:
            return lanes * vectors
    return width if MIN_STATIC_RFACTOR <= width < extent else 0


def _contiguous_in_read(stage: StageInfo, axis: int) -> bool:
    """Whether ``axis`` indexes the last (contiguous) dimension of every read that depends on
    it (a read that does not, such as a row statistic, is the same for every step)."""
    reads = [r for r in stage.reads if any(axis in index for index in r.index_vars)]
    return bool(reads) and all(axis in r.index_vars[-1] for r in reads)


class SimpleReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.SIMPLE_REDUCTION
    phase: ClassVar[int] = 2

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        last_spatial = stage.extents[stage.spatial_axes[-1]] if stage.spatial_axes else 1
        location = [ChoiceKnob(LOCATION, (ROOT, ROW))] if row_anchor(stage, ctx.stages) else []
        return [
            ChoiceKnob("vector", vector_choices(last_spatial, 64)),
            ChoiceKnob("rfactor", _rfactor_choices(stage)),
            ChoiceKnob("unroll", UNROLL_STEPS),
            ChoiceKnob("parallel", (True, False)),
            *location,
            *math_knobs(stage),
        ]

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        lanes = ctx.hw.vector_lanes_f32
        r_axis = stage.reduction_axes[-1]
        spatial_total = math.prod(stage.extents[a] for a in stage.spatial_axes)
        rfactor = 0
        # A long contiguous reduction vectorizes best through rfactor (partial vector sums).
        if _contiguous_in_read(stage, r_axis):
            rfactor = _static_rfactor(stage.extents[r_axis], lanes)
        vector = 1
        if not rfactor and stage.spatial_axes:
            last = stage.spatial_axes[-1]
            if _contiguous_in_read(stage, last):
                vector = best_vector(stage.extents[last], lanes)
        work = math.prod(stage.extents)
        location = {LOCATION: ROW} if row_anchor(stage, ctx.stages) else {}
        return {
            "vector": vector,
            "rfactor": rfactor,
            "unroll": 16 if math.prod(stage.extents[a] for a in stage.reduction_axes) <= 16 else 0,
            "parallel": work >= MIN_PARALLEL_ELEMENTS and spatial_total > 1,
            **location,
            **math_static(stage),
        }

    def apply(self, sch, stage, values, ctx, state) -> None:
        """At root (a stage whose location is ``row`` is placed by ``row_fusion`` instead,
        after its anchor; that calls this with ``location`` root when it cannot fuse)."""
        if values["rfactor"]:
            self._apply_rfactor(sch, stage, values, state, ctx.hw.vector_lanes_f32)
        else:
            self._apply_spatial(sch, stage, values, state)
        state.placed.add(stage.name)

    def _apply_spatial(
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        block = sch.get_sblock(stage.name)
        loops = sch.get_loops(block)
        spatial = [loops[a] for a in stage.spatial_axes]
        reduction = [loops[a] for a in stage.reduction_axes]
        vector = values["vector"]
        if spatial and stage.extents[stage.spatial_axes[-1]] % vector != 0:
            vector = 1
        inner = None
        if spatial and vector > 1:
            spatial[-1], inner = sch.split(spatial[-1], factors=[None, vector])
            sch.reorder(*spatial, *reduction, inner)
        outer = _parallel_outer(sch, spatial, values)
        if inner is not None:
            sch.vectorize(inner)
        _unroll(sch, outer, values)
        if outer is not None:
            state.attach_points[stage.name] = [outer, outer]
        if reduction and inner is not None:
            sch.decompose_reduction(block, reduction[0])

    def _apply_rfactor(
        self,
        sch: s_tir.Schedule,
        stage: StageInfo,
        values: dict[str, Any],
        state: ApplyState,
        lanes: int,
    ) -> None:
        made = _rfactor_tree(sch, stage, stage.reduction_axes[-1], values["rfactor"], lanes)
        # Each block rfactor made and the final one: parallel over their spatial loops (the
        # outermost of them, fused); the first made computes the partial sums of the row.
        n_spatial = len(stage.spatial_axes)
        outers = [
            _parallel_outer(sch, sch.get_loops(b)[:n_spatial], values)
            for b in [*made, sch.get_sblock(stage.name)]
        ]
        _unroll(sch, outers[0], values)
        if outers[0] is not None:
            state.attach_points[stage.name] = [outers[0], outers[0]]
        for block in made:
            sch.decompose_reduction(block, sch.get_loops(block)[min(n_spatial, 1)])


def row_inner(
    sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], lanes: int
) -> tuple[list[Any], list[tuple[Any, int]]]:
    """Inside a row loop (``row_fusion``; the rows are fused into the outermost loop): the
    reduction as rfactor partial vectors, or a plain scalar loop. Returns the blocks rfactor
    made (each with its own copy of the row loop, to be merged) and the reductions to
    decompose, as (block, loop depth), once the row loops are merged and parallel."""
    if not values["rfactor"]:
        return [], []
    axis = 1 + stage.reduction_axes[-1] - len(stage.spatial_axes)  # rows fused into loop 0
    width = values["rfactor"]
    made = _rfactor_tree(sch, stage, axis, width, lanes)
    if stage.extents[stage.reduction_axes[-1]] % width:
        # A guarded partial-sum block, once merged into the row loop, is no longer taken for
        # a reduction block by decompose_reduction (TVM 0.27 re-derives its binding as not
        # affine). Left whole, lowering resets the partial sums under ``k_0 == 0``: a scalar
        # test outside the vector lanes that the peeled loop hoists.
        return made, [(b, 1) for b in made[1:]]
    return made, [(b, 1) for b in made]


def _rfactor_tree(
    sch: s_tir.Schedule, stage: StageInfo, loop_index: int, width: int, lanes: int
) -> list[Any]:
    """rfactor the reduction loop at ``loop_index`` into ``width`` partial sums per row,
    vectorized; returns the blocks made, outermost nest first.

    When ``width`` is several vectors, the partial sums are added as a tree: the row's
    vectors of ``width`` sums, then vectors of ``lanes`` sums (vector adds), and only those
    ``lanes`` one by one in the final block. A single scalar chain over all of them costs
    more than the row itself (64 dependent adds of ~4 cycles against 12 vector steps for a
    row of 768). The partial-sum axes come last in their buffers, so that a row's vector is
    contiguous (first, its lanes would be a row apart and every store a scatter).

    A ``width`` that does not divide the row is a guarded split (TVM 0.27's rfactor of it
    leaves cached block flags that only the debug verification rejects, which CPU schedules
    run without); the loop over the row's steps is marked for partition, so the guard is
    tested once, in a peeled last step, not as a masked load in every step.
    """
    block = sch.get_sblock(stage.name)
    rank = len(sch.get(block).writes[0].region)
    loop = sch.get_loops(block)[loop_index]
    guarded = loop_extent(sch, loop) % width != 0
    if (width <= lanes or width % lanes) and not guarded:
        _, lane = sch.split(loop, factors=[None, width])
        partials = sch.rfactor(lane, factor_axis=rank)
        sch.vectorize(sch.get_loops(partials)[-1])
        made = [partials]
    else:
        # A guarded width is always a tree (even widths: two halves when it is not several
        # whole vectors): TVM 0.27 refuses ``parallel`` on a row loop holding a guarded
        # single-level partial sum whose producer stayed at root (taken for neither a
        # complete nor a reduction block), while the tree's guarded block passes.
        steps = width // lanes if width % lanes == 0 and width > lanes else 2
        _, _, lane = sch.split(loop, factors=[None, steps, width // steps])
        by_lane = sch.rfactor(lane, factor_axis=rank)  # sums[rows..., lane]
        by_width = sch.rfactor(sch.get_loops(by_lane)[-2], factor_axis=rank)  # [rows..., v, lane]
        sch.vectorize(sch.fuse(*sch.get_loops(by_width)[-2:]))
        sch.vectorize(sch.get_loops(by_lane)[-1])
        made = [by_width, by_lane]
    if guarded:
        # The row's steps over the partial sums: all but the last are whole and unguarded.
        sch.annotate(sch.get_loops(made[0])[loop_index], PARTITION_HINT, 1)
    return made


def _parallel_outer(sch: s_tir.Schedule, spatial: list[Any], values: dict[str, Any]) -> Any:
    if not spatial:
        return None
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if values["parallel"]:
        sch.parallel(outer)
    return outer


def _unroll(sch: s_tir.Schedule, loop: Any, values: dict[str, Any]) -> None:
    if loop is not None and values["unroll"]:
        sch.annotate(loop, "pragma_auto_unroll_max_step", values["unroll"])
        sch.annotate(loop, "pragma_unroll_explicit", 1)
