"""Schedules clients fetch: the best verified config of a workload on a target, or, until
one exists, the static schedule for that target's hardware (marked ``source="static"``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from autosched.db.models import BestConfig, TemplateRow, Worker, WorkerState, WorkloadRow
from autosched.errors import NotFoundError
from autosched.hardware import HardwareParams
from autosched.service.schemas import ScheduleLookup, ScheduleView
from autosched.service.workloads import (
    ensure_template,
    get_workload_row,
    load_stored,
    parse_workload,
    store_workload,
)
from autosched.wire import Workload


def get_schedule(
    session: Session, workload_key: str, target_key: str | None, host_hw: HardwareParams
) -> ScheduleView:
    """``target_key`` None means the API host's own target."""
    row = get_workload_row(session, workload_key)
    return _schedule(session, row, None, target_key, host_hw)


def lookup_schedule(session: Session, req: ScheduleLookup, host_hw: HardwareParams) -> ScheduleView:
    """Fetch by compute declaration: the server computes the key and stores a new workload,
    so the lookup also registers it for tuning later."""
    workload = parse_workload(req.workload)
    row, _ = store_workload(session, workload)
    return _schedule(session, row, workload, req.target, host_hw)


def _schedule(
    session: Session,
    row: WorkloadRow,
    workload: Workload | None,
    target_key: str | None,
    host_hw: HardwareParams,
) -> ScheduleView:
    import tvm

    from autosched.tune.tune import target_key as key_of

    target = target_key or key_of(host_hw)
    template = session.scalars(
        select(TemplateRow).where(
            TemplateRow.workload_key == row.key, TemplateRow.target_key == target
        )
    ).one_or_none()
    if template is None:
        # Built lazily, for the hardware of whoever compiles for that target.
        hw = _hardware_for(session, target, host_hw)
        template = ensure_template(session, workload or load_stored(row), hw)

    best = session.get(BestConfig, (row.key, target))
    if best is not None:
        return ScheduleView(
            workload_key=row.key,
            target_key=target,
            source="tuned",
            config=best.config,
            template=template.template,
            hardware=template.hardware,
            trace=best.trace,
            latency=best.latency,
            gflops=best.gflops,
            worker_id=best.worker_id,
            device_key=best.device_key,
            tvm_version=best.tvm_version,
            updated_at=best.updated_at,
        )

    from autosched.schedule import apply_config, trace_json
    from autosched.space import Config, Template

    workload = workload or load_stored(row)
    hw = HardwareParams.from_json(template.hardware)
    config = Config.from_json(template.static_config)
    sch = apply_config(
        workload.prim_func, config, hw, template=Template.from_json(template.template)
    )
    return ScheduleView(
        workload_key=row.key,
        target_key=target,
        source="static",
        config=template.static_config,
        template=template.template,
        hardware=template.hardware,
        trace=trace_json(sch),
        latency=None,
        gflops=None,
        worker_id=None,
        device_key=None,
        tvm_version=tvm.__version__,
        updated_at=None,
    )


def _hardware_for(session: Session, target: str, host_hw: HardwareParams) -> HardwareParams:
    """Hardware of a target no template exists for: an online worker's, else the host's."""
    from autosched.tune.tune import target_key as key_of

    doc = session.scalars(
        select(Worker.hardware)
        .where(Worker.state == WorkerState.ONLINE, Worker.target_key == target)
        .order_by(Worker.last_heartbeat.desc())
        .limit(1)
    ).first()
    if doc is not None:
        return HardwareParams.from_json(doc)
    if key_of(host_hw) == target:
        return host_hw
    raise NotFoundError(f"unknown target {target!r}: no template, online worker or host for it")
