"""Direct compute (injective / elementwise): inline into consumers, else parallel + vectorize."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.hardware import HardwareParams
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import (
    ApplyState,
    MetaTemplate,
    TemplateContext,
    block_exists,
    math_knobs,
    math_static,
    parallel_vectorize_root,
    vector_choices,
)
from autosched.templates.blocked_injective import (
    Stages,
    apply_blocked,
    block_knobs,
    block_static,
)

# Below this many elements a parallel region costs more than it saves.
MIN_PARALLEL_ELEMENTS = 4096
# TVM's CPU runtime hands each thread one contiguous share of a parallel loop: with a few
# rows (a [2, 1_000_000] stage on 16 cores) most threads would idle, so fewer outer
# iterations than this also parallelize the vector loop's outer part.
MIN_PARALLEL_CHUNKS = 64


def root_knobs(stage: StageInfo, stages: Stages | None = None) -> list[Knob]:
    """vector / parallel for every root injective stage; block_read / block_write besides
    where the stage reads an input across its rows (``blocked_injective``), through the
    producers it may inline when ``stages`` is given (the same ``stages`` must reach
    ``root_static`` and ``apply_root``)."""
    return [
        ChoiceKnob("vector", vector_choices(stage.extents[-1], 64)),
        ChoiceKnob("parallel", (True, False)),
        *block_knobs(stage, stages),
    ]


def root_vector(extent: int, lanes: int) -> int:
    """The static vector width of a root injective stage: the widest multiple of the register
    width ``lanes`` that divides the innermost extent, up to two registers (two independent
    vectors per iteration hide the latency of a polynomial chain such as a fast ``exp``);
    else 1, and LLVM's own loop vectorizer vectorizes the loop with a remainder. A width
    that is not a whole register (10 lanes of a 1000-wide row) is split by LLVM into
    partial or scalar operations: measured 2-3x slower than either."""
    whole = [v for v in vector_choices(extent, 2 * lanes) if v % lanes == 0]
    return whole[-1] if whole else 1


def root_static(
    stage: StageInfo, lanes: int, stages: Stages | None = None, cache_bytes: int = 0
) -> dict[str, KnobValue]:
    """``cache_bytes``: what the cores cache together (``streamed_bytes``); a blocked stage
    larger than that streams from memory and gets larger blocks."""
    total = math.prod(stage.extents)
    vector = root_vector(stage.extents[-1], lanes)
    return {
        "vector": vector,
        "parallel": total >= MIN_PARALLEL_ELEMENTS,
        **block_static(stage, vector, stages, cache_bytes),
    }


def streamed_bytes(hw: HardwareParams) -> int:
    """Above this size a stage streams from DRAM: four times the cores' L2 together (the
    reported L3 of a VM is often the host's whole cache, shared with its neighbours)."""
    return 4 * hw.l2_bytes * hw.num_cores


def apply_root(
    sch: s_tir.Schedule,
    stage: StageInfo,
    values: dict[str, Any],
    state: ApplyState,
    stages: Stages | None = None,
) -> None:
    if stage.name in state.placed or not block_exists(sch, stage.name):
        return
    blocked = apply_blocked(sch, stage, values, stages)
    if blocked is not None:
        state.attach_points[stage.name] = blocked
        state.placed.add(stage.name)
        return
    # A guarded vector loop would put a predicate on every lane: fall back to scalar.
    vector = values["vector"] if stage.extents[-1] % values["vector"] == 0 else 1
    state.attach_points[stage.name] = parallel_vectorize_root(
        sch, stage.name, vector, values["parallel"], min_chunks=MIN_PARALLEL_CHUNKS
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
        return inline + root_knobs(stage, ctx.stages) + math_knobs(stage)

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        lanes, cache_bytes = ctx.hw.vector_lanes_f32, streamed_bytes(ctx.hw)
        values = root_static(stage, lanes, ctx.stages, cache_bytes) | math_static(stage)
        if self.can_inline(stage):
            values["inline"] = True
        return values

    def inline(
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        if values.get("inline") and block_exists(sch, stage.name):
            try_inline(sch, stage.name, state)

    def apply(self, sch, stage, values, ctx, state) -> None:
        apply_root(sch, stage, values, state, ctx.stages)


def try_inline(sch: s_tir.Schedule, name: str, state: ApplyState) -> bool:
    """compute_inline when TVM allows it; a refused inline leaves the block at root."""
    try:
        sch.compute_inline(sch.get_sblock(name))
    except Exception:  # e.g. the producer is read with a different layout by a reduction init
        return False
    state.placed.add(name)
    return True
