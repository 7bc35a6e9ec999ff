"""Location-tunable compute: a producer whose compute-at location is the knob (padding,
reshape, activations feeding a reduction)."""

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
    math_knobs,
    math_static,
)
from autosched.templates.direct_compute import apply_root, root_knobs, root_static, try_inline

INLINE, ROOT, CONSUMER_OUTER, CONSUMER_TILE = "inline", "root", "consumer_outer", "consumer_tile"


class LocationTunable(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.LOCATION_TUNABLE
    phase: ClassVar[int] = 4  # after its consumer has loops to be computed at

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        locations: tuple[str, ...] = (INLINE, ROOT)
        if len(stage.consumers) == 1:
            locations += (CONSUMER_OUTER, CONSUMER_TILE)
        return [ChoiceKnob("location", locations), *root_knobs(stage), *math_knobs(stage)]

    @staticmethod
    def inline_is_costly(stage: StageInfo) -> bool:
        """A branch (padding) or div/mod indexing (reshape) inside a reduction's inner loop
        is far dearer than one extra pass over memory; so is recomputing for several
        consumers. (The static fill's rule, on CPUs and GPUs alike.)"""
        return stage.has_conditional or stage.has_index_arith or len(stage.consumers) > 1

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        return {
            "location": ROOT if self.inline_is_costly(stage) else INLINE,
            **root_static(stage, ctx.hw.vector_lanes_f32),
            **math_static(stage),
        }

    def inline(
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        if values["location"] == INLINE and block_exists(sch, stage.name):
            try_inline(sch, stage.name, state)

    def apply(self, sch, stage, values, ctx, state) -> None:
        location = values["location"]
        if location in (CONSUMER_OUTER, CONSUMER_TILE) and stage.name not in state.placed:
            points = state.attach_points.get(stage.consumers[0])
            if points:
                loop = points[0] if location == CONSUMER_OUTER else points[-1]
                if _compute_at_is_legal(sch, stage.name, loop):
                    sch.compute_at(sch.get_sblock(stage.name), loop, preserve_unit_loops=True)
                    state.placed.add(stage.name)
                # else: not a legal location for this consumer's loops; it stays at root.
        apply_root(sch, stage, values, state)


def _compute_at_is_legal(sch: s_tir.Schedule, name: str, loop: object) -> bool:
    """Try on a copy: a refused compute_at can leave the schedule half-changed."""
    trial = sch.copy()
    try:
        trial.compute_at(trial.get_sblock(name), loop, preserve_unit_loops=True)
    except Exception:
        return False
    return True
