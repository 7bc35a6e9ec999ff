"""Schedules clients fetch: the best verified config of a workload on a target, or, until
one exists, the static schedule for that target's hardware (marked ``source="static"``).

Every TVM object (the PrimFunc, the static schedule's trace) is built in the template
sandbox (``workload_sandbox``), never in the API process. A lookup by declaration stores
nothing: storing a workload is ``POST /v1/workloads``, which needs a submit token.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from autosched.db.models import BestConfig, TemplateRow, Worker
from autosched.errors import InvalidRequestError, NotFoundError
from autosched.hardware import HardwareParams
from autosched.schemas import TARGET_KEY_MAX, ScheduleLookup, ScheduleView
from autosched.service import workload_sandbox
from autosched.service.farm import freshest_online
from autosched.service.workload_sandbox import BuiltTemplate
from autosched.service.workloads import (
    check_document,
    find_template,
    get_workload_row,
    template_row,
)
from autosched.vocabulary import TARGET_KEY_PATTERN

V = TypeVar("V", bound=BaseModel)
#: The columns of a cached best schedule (``best_configs``), by attribute name.
BEST_COLUMNS = frozenset(inspect(BestConfig).column_attrs.keys())


def best_config_view(model: type[V], best: BestConfig, **fields: Any) -> V:
    """A view of a cached best schedule: each field of ``model`` named as a column of its
    ``best_configs`` row takes that column's value, unless ``fields`` gives it."""
    columns = {name: getattr(best, name) for name in model.model_fields if name in BEST_COLUMNS}
    return model(**{**columns, **fields})


def get_schedule(
    session: Session, workload_key: str, target_key: str | None, host_hw: HardwareParams
) -> ScheduleView:
    """``target_key`` None means the API host's own target. The template of a target seen
    for the first time is built (in the sandbox) and stored for the stored workload."""
    target = resolve_target(target_key, host_hw)
    row = get_workload_row(session, workload_key)
    template = find_template(session, row.key, target)
    best = session.get(BestConfig, (row.key, target))
    built: BuiltTemplate | None = None
    version = ""
    if template is None:
        # Built lazily, for the hardware of whoever compiles for that target; the static
        # trace comes from the same sandbox call when it is what will be answered.
        hw = _hardware_for(session, target, host_hw)
        facts = workload_sandbox.describe(row.wire, [hw], trace=best is None)
        built, version = facts.targets[0], facts.tvm_version
        template = template_row(session, row.key, hw, lambda _hw: facts.targets[0])

    if best is not None:
        return _tuned(_as_built(template), best)
    if built is None or built.static_trace is None:
        trace, version = workload_sandbox.static_trace(
            row.wire, template.hardware, template.template, template.static_config
        )
        built = BuiltTemplate(
            target, template.hardware, template.template, template.static_config, trace
        )
    return _static(row.key, built, version)


def best_version(session: Session, workload_key: str, target_key: str) -> datetime | None:
    """When the best config of ``workload_key`` on ``target_key`` was last replaced (None:
    nothing tuned yet), read by primary key: what a cached answer is checked against.
    Publishing a best config always sets ``updated_at`` (``offer_best``, the ORM's onupdate),
    and ``ScheduleView.updated_at`` is that value, so a cached view is current while the
    two agree."""
    return session.scalars(
        select(BestConfig.updated_at).where(
            BestConfig.workload_key == workload_key, BestConfig.target_key == target_key
        )
    ).first()


def lookup_schedule(session: Session, req: ScheduleLookup, host_hw: HardwareParams) -> ScheduleView:
    """Fetch by compute declaration: the key and the schedule are computed (in the sandbox)
    and nothing is stored, so anonymous readers cannot fill the database."""
    check_document(req.workload)
    target = resolve_target(req.target, host_hw)
    hw = _hardware_for(session, target, host_hw)
    facts = workload_sandbox.describe(req.workload, [hw], trace=True)
    built = facts.targets[0]
    # A stored template wins: a tuned config was made in it, for its hardware.
    stored = find_template(session, facts.key, target)
    template = _as_built(stored) if stored is not None else built
    best = session.get(BestConfig, (facts.key, target))
    if best is not None:
        return _tuned(template, best)
    if template.hardware != built.hardware or template.static_config != built.static_config:
        trace, _ = workload_sandbox.static_trace(
            req.workload, template.hardware, template.template, template.static_config
        )
        template = BuiltTemplate(
            target, template.hardware, template.template, template.static_config, trace
        )
    else:
        template = built
    return _static(facts.key, template, facts.tvm_version)


def check_target_key(target: str) -> str:
    """A target key from a request body, bounded before it reaches a query."""
    if len(target) > TARGET_KEY_MAX or not re.fullmatch(TARGET_KEY_PATTERN, target):
        raise InvalidRequestError(
            f"target {target[:TARGET_KEY_MAX]!r} is not a target key "
            "(llvm/<mcpu>/<cores>c/<vector bits>b or cuda/<arch>/<SMs>sm/<shared KiB>k)"
        )
    return target


def resolve_target(target_key: str | None, host_hw: HardwareParams) -> str:
    """A requested target key, checked; None means the API host's own target."""
    return check_target_key(target_key) if target_key is not None else host_hw.target_key


def _as_built(row: TemplateRow) -> BuiltTemplate:
    return BuiltTemplate(row.target_key, row.hardware, row.template, row.static_config)


def _tuned(template: BuiltTemplate, best: BestConfig) -> ScheduleView:
    return best_config_view(
        ScheduleView, best, source="tuned", template=template.template, hardware=template.hardware
    )


def _static(key: str, built: BuiltTemplate, tvm_version: str) -> ScheduleView:
    assert built.static_trace is not None
    return ScheduleView(
        workload_key=key,
        target_key=built.target_key,
        source="static",
        config=built.static_config,
        template=built.template,
        hardware=built.hardware,
        trace=built.static_trace,
        latency=None,
        gflops=None,
        worker_id=None,
        device_key=None,
        tvm_version=tvm_version,
        updated_at=None,
    )


def _hardware_for(session: Session, target: str, host_hw: HardwareParams) -> HardwareParams:
    """Hardware of a target: an online worker's, else the host's, else that of a template
    stored for it (its worker may be offline now)."""
    doc = freshest_online(session, Worker.hardware, target)
    if doc is not None:
        return HardwareParams.from_json(doc)
    if host_hw.target_key == target:
        return host_hw
    doc = session.scalars(
        select(TemplateRow.hardware)
        .where(TemplateRow.target_key == target)
        .order_by(TemplateRow.id.desc())
        .limit(1)
    ).first()
    if doc is not None:
        return HardwareParams.from_json(doc)
    raise NotFoundError(f"unknown target {target!r}: no template, online worker or host for it")
