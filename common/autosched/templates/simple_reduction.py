"""Simple reduction (row sums, pooling, softmax/norm statistics): parallel spatial loops,
a vectorized spatial inner loop, or rfactor of the reduction when that vectorizes better."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import (
    UNROLL_STEPS,
    ApplyState,
    MetaTemplate,
    TemplateContext,
    best_vector,
    math_knobs,
    math_static,
    vector_choices,
)
from autosched.templates.direct_compute import MIN_PARALLEL_ELEMENTS


def _rfactor_choices(stage: StageInfo) -> tuple[int, ...]:
    extent = stage.extents[stage.reduction_axes[-1]]
    return (0, *(f for f in (4, 8, 16, 32, 64) if f < extent and extent % f == 0))


def _contiguous_in_read(stage: StageInfo, axis: int) -> bool:
    """Whether ``axis`` indexes the last (contiguous) dimension of every multi-axis read."""
    reads = [r for r in stage.reads if r.index_vars]
    return bool(reads) and all(axis in r.index_vars[-1] for r in reads)


class SimpleReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.SIMPLE_REDUCTION
    phase: ClassVar[int] = 2

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        last_spatial = stage.extents[stage.spatial_axes[-1]] if stage.spatial_axes else 1
        return [
            ChoiceKnob("vector", vector_choices(last_spatial, 64)),
            ChoiceKnob("rfactor", _rfactor_choices(stage)),
            ChoiceKnob("unroll", UNROLL_STEPS),
            ChoiceKnob("parallel", (True, False)),
            *math_knobs(stage),
        ]

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        lanes = ctx.hw.vector_lanes_f32
        r_axis = stage.reduction_axes[-1]
        spatial_total = math.prod(stage.extents[a] for a in stage.spatial_axes)
        rfactor = 0
        # A long contiguous reduction vectorizes best through rfactor (partial vector sums).
        if _contiguous_in_read(stage, r_axis):
            rfactor = max((f for f in _rfactor_choices(stage) if f <= lanes), default=0)
        vector = 1
        if not rfactor and stage.spatial_axes:
            last = stage.spatial_axes[-1]
            if _contiguous_in_read(stage, last):
                vector = best_vector(stage.extents[last], lanes)
        work = math.prod(stage.extents)
        return {
            "vector": vector,
            "rfactor": rfactor,
            "unroll": 16 if math.prod(stage.extents[a] for a in stage.reduction_axes) <= 16 else 0,
            "parallel": work >= MIN_PARALLEL_ELEMENTS and spatial_total > 1,
            **math_static(stage),
        }

    def apply(self, sch, stage, values, ctx, state) -> None:
        if values["rfactor"]:
            self._apply_rfactor(sch, stage, values, state)
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
        self, sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
    ) -> None:
        block = sch.get_sblock(stage.name)
        loops = sch.get_loops(block)
        r_last = loops[stage.reduction_axes[-1]]
        _, r_inner = sch.split(r_last, factors=[None, values["rfactor"]])
        rf_block = sch.rfactor(r_inner, factor_axis=0)
        # The rf block sums partial vectors: its loops are spatial..., reductions..., r_inner.
        rf_loops = sch.get_loops(rf_block)
        n_spatial = len(stage.spatial_axes)
        outer = _parallel_outer(sch, rf_loops[:n_spatial], values)
        sch.vectorize(rf_loops[-1])
        _unroll(sch, outer, values)
        # The final block reduces the partial vector: parallel over its spatial loops too.
        final_loops = sch.get_loops(sch.get_sblock(stage.name))
        _parallel_outer(sch, final_loops[:n_spatial], values)
        if outer is not None:
            state.attach_points[stage.name] = [outer, outer]
        sch.decompose_reduction(rf_block, rf_loops[n_spatial])


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
