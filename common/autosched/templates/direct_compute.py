"""Direct compute (injective / elementwise): inline into consumers, else parallel + vectorize."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import (
    ApplyState,
    MetaTemplate,
    TemplateContext,
    best_vector,
    block_exists,
    math_knobs,
    math_static,
    parallel_vectorize_root,
    vector_choices,
)

# Below this many elements a parallel region costs more than it saves.
MIN_PARALLEL_ELEMENTS = 4096


def root_knobs(stage: StageInfo) -> list[Knob]:
    return [
        ChoiceKnob("vector", vector_choices(stage.extents[-1], 64)),
        ChoiceKnob("parallel", (True, False)),
    ]


def root_static(stage: StageInfo, lanes: int) -> dict[str, KnobValue]:
    total = math.prod(stage.extents)
    return {
        "vector": best_vector(stage.extents[-1], lanes),
        "parallel": total >= MIN_PARALLEL_ELEMENTS,
    }


def apply_root(sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState):
    if stage.name in state.placed or not block_exists(sch, stage.name):
        return
    # A guarded vector loop would put a predicate on every lane: fall back to scalar.
    vector = values["vector"] if stage.extents[-1] % values["vector"] == 0 else 1
    state.attach_points[stage.name] = parallel_vectorize_root(
        sch, stage.name, vector, values["parallel"]
    )
    state.placed.add(stage.name)


class DirectCompute(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.DIRECT_COMPUTE
    phase: ClassVar[int] = 3

    @staticmethod
    def can_inline(stage: StageInfo) -> bool:
        return not stage.is_output and bool(stage.consumers)

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        inline = [ChoiceKnob("inline", (True, False))] if self.can_inline(stage) else []
        return inline + root_knobs(stage) + math_knobs(stage)

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        values = root_static(stage, ctx.hw.vector_lanes_f32) | math_static(stage)
        if self.can_inline(stage):
            values["inline"] = True
        return values

    def inline(
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        if values.get("inline") and block_exists(sch, stage.name):
            try_inline(sch, stage.name, state)

    def apply(self, sch, stage, values, ctx, state) -> None:
        apply_root(sch, stage, values, state)


def try_inline(sch: s_tir.Schedule, name: str, state: ApplyState) -> bool:
    """compute_inline when TVM allows it; a refused inline leaves the block at root."""
    try:
        sch.compute_inline(sch.get_sblock(name))
    except Exception:  # e.g. the producer is read with a different layout by a reduction init
        return False
    state.placed.add(name)
    return True
