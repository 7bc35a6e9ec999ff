"""Workloads: validated once, stored once per key; templates built per target on demand."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autosched.db.models import TemplateRow, WorkloadRow
from autosched.errors import NotFoundError, WireFormatError
from autosched.hardware import HardwareParams
from autosched.service.schemas import StageView, WorkloadView
from autosched.settings import get_settings
from autosched.wire import Workload


def parse_workload(doc: dict[str, Any]) -> Workload:
    """Validate a wire document (WireFormatError on anything wrong; nothing is executed)."""
    limit = get_settings().max_json_bytes
    if len(json.dumps(doc, separators=(",", ":"))) > limit:
        raise WireFormatError(f"compute declaration is over max_json_bytes={limit}")
    return Workload.from_json(doc)


def _stage_views(workload: Workload) -> tuple[list[dict[str, Any]], float]:
    from autosched.analysis import analyze, flops

    stages = [
        StageView(
            name=s.name,
            meta_template=str(s.meta_template),
            reason=s.reason,
            iter_kinds=s.iter_kinds,
            extents=list(s.extents),
        ).model_dump()
        for s in analyze(workload.prim_func)
    ]
    return stages, float(flops(workload.prim_func))


def store_workload(session: Session, workload: Workload) -> tuple[WorkloadRow, bool]:
    """The stored row for ``workload`` (created if new); second value: whether it was new."""
    row = session.get(WorkloadRow, workload.key)
    if row is not None:
        return row, False
    stages, total_flops = _stage_views(workload)
    row = WorkloadRow(
        key=workload.key,
        name=workload.name,
        wire=workload.to_json(),
        flops=total_flops,
        analysis=stages,
    )
    session.add(row)
    session.flush()
    return row, True


def get_workload_row(session: Session, key: str) -> WorkloadRow:
    row = session.get(WorkloadRow, key)
    if row is None:
        raise NotFoundError(f"no workload with key {key!r}")
    return row


def load_stored(row: WorkloadRow) -> Workload:
    """Rebuild the Workload of a stored row (it was validated when stored)."""
    return Workload.from_json(row.wire)


def ensure_template(session: Session, workload: Workload, hw: HardwareParams) -> TemplateRow:
    """The template of ``workload`` for ``hw``'s target key, built and stored once."""
    from autosched.schedule import build_template, static_config
    from autosched.tune.tune import target_key

    target = target_key(hw)
    row = session.scalars(
        select(TemplateRow).where(
            TemplateRow.workload_key == workload.key, TemplateRow.target_key == target
        )
    ).one_or_none()
    if row is not None:
        return row
    row = TemplateRow(
        workload_key=workload.key,
        target_key=target,
        template=build_template(workload.prim_func, hw).to_json(),
        hardware=hw.to_json(),
        static_config=static_config(workload.prim_func, hw).to_json(),
    )
    session.add(row)
    session.flush()
    return row


def register_workload(session: Session, doc: dict[str, Any], hw: HardwareParams) -> WorkloadView:
    """``POST /v1/workloads``: validate, store once, and describe it for ``hw``'s target."""
    workload = parse_workload(doc)
    row, created = store_workload(session, workload)
    template = ensure_template(session, workload, hw)
    return WorkloadView(
        key=row.key,
        name=row.name,
        flops=row.flops,
        stages=[StageView.model_validate(s) for s in row.analysis],
        template=template.template,
        target_key=template.target_key,
        created=created,
    )
