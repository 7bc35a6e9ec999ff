"""Location-tunable compute: a producer whose compute-at location is the knob (padding,
reshape, activations feeding a reduction): inline, at root, or computed at the consumer's
parallel loop, its cache-tile loop or (a tiled reduction's) outermost reduction loop, a
placed producer's innermost loop vectorized. Where the analysis finds a row anchor
(``row_fusion``: softmax's exp, layer norm's mean) the location ``row`` computes it once per
row, in the anchor's row loop, into a row-sized buffer."""

from __future__ import annotations

from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import (
    ApplyState,
    MetaTemplate,
    TemplateContext,
    block_exists,
    loop_extent,
    math_knobs,
    math_static,
)
from autosched.templates.direct_compute import (
    apply_root,
    root_knobs,
    root_static,
    streamed_bytes,
    try_inline,
)
from autosched.templates.row_fusion import ROW, lane_efficient_width, row_anchor

INLINE, ROOT, CONSUMER_OUTER, CONSUMER_TILE = "inline", "root", "consumer_outer", "consumer_tile"
CONSUMER_REDUCTION = "consumer_reduction"
AT_CONSUMER = (CONSUMER_OUTER, CONSUMER_TILE, CONSUMER_REDUCTION)
COMPLEX = MetaTemplateKind.COMPLEX_REDUCTION
#: Widest loop a placed producer vectorizes whole (wider ones are split by ``vector``).
MAX_PLACED_VECTOR = 64
#: Widest vector the static fill gives a row-fused stage's inner loop (the knob's own bound).
ROW_VECTOR_LIMIT = 64


class LocationTunable(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.LOCATION_TUNABLE
    phase: ClassVar[int] = 4  # after its consumer has loops to be computed at

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        locations: tuple[str, ...] = (INLINE, ROOT)
        if len(stage.consumers) == 1:
            locations += (CONSUMER_OUTER, CONSUMER_TILE)
            consumer = ctx.stages.get(stage.consumers[0])
            if consumer is not None and consumer.meta_template == COMPLEX:
                locations += (CONSUMER_REDUCTION,)
        if row_anchor(stage, ctx.stages):
            locations += (ROW,)
        return [
            ChoiceKnob("location", locations),
            *root_knobs(stage, ctx.stages),
            *math_knobs(stage),
        ]

    @staticmethod
    def inline_is_costly(stage: StageInfo) -> bool:
        """A branch (padding) or div/mod indexing (reshape) inside a reduction's inner loop
        is far dearer than one extra pass over memory; so is recomputing for several
        consumers. (The static fill's rule, on CPUs and GPUs alike.)"""
        return stage.has_conditional or stage.has_index_arith or len(stage.consumers) > 1

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        lanes = ctx.hw.vector_lanes_f32
        location = ROOT if self.inline_is_costly(stage) else INLINE
        values = {
            **root_static(stage, lanes, ctx.stages, streamed_bytes(ctx.hw)),
            **math_static(stage),
        }
        if location == ROOT and row_anchor(stage, ctx.stages):
            # Once per row, in cache, instead of a separate pass over memory; the row is a
            # short loop, so fill whole vectors (several registers' worth where that divides).
            location = ROW
            values["vector"] = lane_efficient_width(stage.extents[-1], lanes, ROW_VECTOR_LIMIT)
        return {"location": location, **values}

    def inline(
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        if values["location"] == INLINE and block_exists(sch, stage.name):
            try_inline(sch, stage.name, state)

    def apply(self, sch, stage, values, ctx, state) -> None:
        location = values["location"]
        if location in AT_CONSUMER and stage.name not in state.placed:
            loop = _attach_loop(state, stage.consumers[0], location)
            if loop is not None and _compute_at_is_legal(sch, stage.name, loop):
                block = sch.get_sblock(stage.name)
                sch.compute_at(block, loop, preserve_unit_loops=True)
                _vectorize_placed(sch, block, values["vector"])
                state.placed.add(stage.name)
            # else: not a legal location for this consumer's loops; it stays at root.
        apply_root(sch, stage, values, state, ctx.stages)


def _attach_loop(state: ApplyState, consumer: str, location: str) -> Any:
    """The consumer's loop for ``location``, or None when the consumer's schedule has none
    (a reduction scheduled without tiling has no r0 loop)."""
    if location == CONSUMER_REDUCTION:
        return state.reduction_points.get(consumer)
    points = state.attach_points.get(consumer)
    if not points:
        return None
    return points[0] if location == CONSUMER_OUTER else points[-1]


def _vectorize_placed(sch: s_tir.Schedule, block: Any, vector: int) -> None:
    """The innermost loop of a placed producer (a padded slice of rows) vectorized: whole
    when it is at most the widest vector, else in ``vector``-wide pieces where they divide
    it. MetaSchedule's fastest convs vectorize their padding this way."""
    if vector <= 1:
        return
    inner = sch.get_loops(block)[-1]
    extent = loop_extent(sch, inner)
    if extent <= 1:
        return
    if extent > MAX_PLACED_VECTOR:
        if extent % vector:
            return
        inner = sch.split(inner, factors=[None, vector])[1]
    sch.vectorize(inner)


def row_inner(
    sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], lanes: int
) -> tuple[list[Any], list[tuple[Any, int]]]:
    """Inside a row loop (``row_fusion``; rows fused into the outermost loop): the innermost
    loop vectorized, when the stage has one besides the rows."""
    loops = sch.get_loops(sch.get_sblock(stage.name))
    vector = values["vector"]
    if len(loops) > 1 and vector > 1 and stage.extents[-1] % vector == 0:
        _, inner = sch.split(loops[-1], factors=[None, vector])
        sch.vectorize(inner)
    return [], []


def _compute_at_is_legal(sch: s_tir.Schedule, name: str, loop: object) -> bool:
    """Try on a copy: a refused compute_at can leave the schedule half-changed."""
    trial = sch.copy()
    try:
        trial.compute_at(trial.get_sblock(name), loop, preserve_unit_loops=True)
    except Exception:
        return False
    return True
