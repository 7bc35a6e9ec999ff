"""Build a workload's template, fill it statically, and apply configs to a PrimFunc."""

from __future__ import annotations

import json
from typing import Any

from tvm import s_tir, tirx

from autosched.analysis import MetaTemplateKind, StageInfo, analyze
from autosched.errors import ScheduleError
from autosched.fast_math import rewrite_blocks
from autosched.hardware import HardwareParams, detect_hardware
from autosched.space import Config, StageSpace, Template
from autosched.templates import (
    ApplyState,
    TemplateContext,
    location_tunable,
    meta_templates,
    simple_reduction,
)
from autosched.templates.base import MetaTemplate, fast_math_blocks
from autosched.templates.row_fusion import LOCATION, ROOT, apply_row_fusion, wants_row

#: How each meta-template schedules a stage inside its anchor's row loop (``row_fusion``).
_ROW_INNER = {
    MetaTemplateKind.SIMPLE_REDUCTION: simple_reduction.row_inner,
    MetaTemplateKind.LOCATION_TUNABLE: location_tunable.row_inner,
}


def _key(func: tirx.PrimFunc) -> str:
    from autosched.wire import workload_key

    return workload_key(func)


def _context(
    func: tirx.PrimFunc, hw: HardwareParams | None, stages: list[StageInfo] | None
) -> TemplateContext:
    """Detect the hardware and analyze ``func`` unless the caller already did."""
    stages = stages if stages is not None else analyze(func)
    return TemplateContext({s.name: s for s in stages}, hw or detect_hardware())


def build_template(
    func: tirx.PrimFunc, hw: HardwareParams | None = None, stages: list[StageInfo] | None = None
) -> Template:
    """The search space of ``func``: per stage, its meta-template and knobs."""
    ctx = _context(func, hw, stages)
    templates = meta_templates(ctx.hw.kind)
    return Template(
        _key(func),
        tuple(
            StageSpace(
                s.name,
                str(s.meta_template),
                s.reason,
                tuple(templates[s.meta_template].knobs(s, ctx)),
                tuple(templates[s.meta_template].limits(s, ctx)),
            )
            for s in ctx.stages.values()
        ),
    )


def static_config(
    func: tirx.PrimFunc, hw: HardwareParams | None = None, stages: list[StageInfo] | None = None
) -> Config:
    """Heuristic knob values from hardware parameters alone (no measurement)."""
    ctx = _context(func, hw, stages)
    templates = meta_templates(ctx.hw.kind)
    return Config(
        {s.name: templates[s.meta_template].static_values(s, ctx) for s in ctx.stages.values()}
    )


def apply_config(
    func: tirx.PrimFunc,
    config: Config,
    hw: HardwareParams | None = None,
    template: Template | None = None,
    stages: list[StageInfo] | None = None,
) -> s_tir.Schedule:
    """Apply ``config`` to a fresh schedule of ``func``; deterministic in (func, config).

    Stages whose ``math`` knob is ``fast`` get their transcendentals rewritten first
    (``fast_math``), so that inlining carries the fast form into the consumer; the blocks
    keep their names and accesses, so the analysis of ``func`` still holds. Then inlining
    (it changes which blocks are producers and consumers), then the meta-templates in phase
    order: tiled reductions, simple reductions, root injective stages, the
    location-tunable producers that compute at their consumer's loops, and last the stages
    whose location is ``row``, merged into their anchor's row loop consumers first
    (``row_fusion``; the anchor must be placed before them).
    """
    if template is not None:
        template.validate(config)
    ctx = _context(func, hw, stages)
    stages = list(ctx.stages.values())
    templates = meta_templates(ctx.hw.kind)
    sch = s_tir.Schedule(
        rewrite_blocks(func, fast_math_blocks(config)), debug_mask=_debug_mask(ctx)
    )
    state = ApplyState()
    try:
        for stage in stages:
            templates[stage.meta_template].inline(sch, stage, config.values[stage.name], state)
        ordered = sorted(stages, key=lambda s: templates[s.meta_template].phase)
        deferred = []
        for stage in ordered:
            if stage.name in state.placed:
                continue
            if ctx.hw.kind != "cuda" and wants_row(config.values[stage.name]):
                deferred.append(stage)
                continue
            templates[stage.meta_template].apply(sch, stage, config.values[stage.name], ctx, state)
        if deferred:
            _apply_rows(sch, deferred, config, ctx, state, templates)
    except KeyError as err:
        raise ScheduleError(f"config has no values for {err}") from err
    except Exception as err:  # TVM's own ScheduleError and friends
        raise ScheduleError(f"applying the config failed: {err}") from err
    return sch


def _apply_rows(
    sch: s_tir.Schedule,
    deferred: list[StageInfo],
    config: Config,
    ctx: TemplateContext,
    state: ApplyState,
    templates: dict[Any, MetaTemplate],
) -> None:
    def fallback(stage: StageInfo) -> None:
        values = dict(config.values[stage.name], **{LOCATION: ROOT})
        templates[stage.meta_template].apply(sch, stage, values, ctx, state)

    apply_row_fusion(
        sch, deferred, config.values, ctx, state, lambda s: _ROW_INNER[s.meta_template], fallback
    )


def _debug_mask(ctx: TemplateContext) -> str:
    """TVM re-verifies the whole schedule state after every primitive under "all": 15x the
    cost of applying LeNet's config (0.59 s against 0.04 s), paid by every candidate. The CPU
    templates decide nothing from those checks (their fallbacks are explicit rules), and every
    candidate's output is compared with the unscheduled reference before it can count; the
    CUDA templates still choose fallbacks from errors only the checks raise (a guarded
    thread tile's write-back), so they keep them."""
    return "all" if ctx.hw.kind == "cuda" else "none"


def static_schedule(func: tirx.PrimFunc, hw: HardwareParams | None = None) -> s_tir.Schedule:
    ctx = _context(func, hw, None)
    stages = list(ctx.stages.values())
    return apply_config(func, static_config(func, ctx.hw, stages), ctx.hw, stages=stages)


def trace_json(sch: s_tir.Schedule) -> dict[str, Any]:
    """The schedule's TVM trace as plain JSON (IntImm/FloatImm turned into numbers)."""
    return json.loads(json.dumps(sch.trace.as_json(), default=_plain))


def _plain(obj: Any) -> Any:
    if hasattr(obj, "value"):
        return obj.value
    if isinstance(obj, list | tuple) or hasattr(obj, "__iter__"):
        return list(obj)
    return str(obj)
