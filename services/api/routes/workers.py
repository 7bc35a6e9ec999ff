"""``/v1/workers``: the device farm. Workers register and heartbeat; anyone may list them."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from autosched.db.models import Trial, TrialState, Worker
from autosched.service import farm
from autosched.service.schemas import ErrorBody, WorkerRegister, WorkerView
from autosched.tune.measure import TrialStatus
from services.api.deps import ReadAccess, SessionDep, SettingsDep, WorkerAccess

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.post("/register", response_model=WorkerView, dependencies=[WorkerAccess])
def register(reg: WorkerRegister, session: SessionDep) -> WorkerView:
    """Create or refresh a worker; it is online from now on."""
    return _view(session, farm.register_worker(session, reg))


@router.post(
    "/{worker_id}/heartbeat",
    response_model=WorkerView,
    dependencies=[WorkerAccess],
    responses={404: {"model": ErrorBody, "description": "not registered: register again"}},
)
def heartbeat(worker_id: str, session: SessionDep) -> WorkerView:
    return _view(session, farm.heartbeat(session, worker_id))


@router.get("", response_model=list[WorkerView], dependencies=[ReadAccess])
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerView]:
    """Silent workers are reaped first, so the list never shows a dead worker online."""
    farm.reap_silent_workers(session, settings.heartbeat_timeout_s)
    return farm.list_workers(session)


def _view(session: Session, worker: Worker) -> WorkerView:
    """One worker's view with queries filtered to it: heartbeats are frequent, and
    ``farm.list_workers`` aggregates over every worker's trials."""
    depth = session.scalar(
        select(func.count()).where(
            Trial.device_key == worker.device_key,
            Trial.state.in_([TrialState.QUEUED, TrialState.RUNNING]),
        )
    )
    done, errors = session.execute(
        select(
            func.count(),
            func.sum(case((Trial.status != TrialStatus.OK, 1), else_=0)),
        ).where(Trial.worker_id == worker.id, Trial.state == TrialState.DONE)
    ).one()
    return WorkerView(
        id=worker.id,
        device_key=worker.device_key,
        target_key=worker.target_key,
        hardware=worker.hardware,
        hostname=worker.hostname,
        state=worker.state,
        registered_at=worker.registered_at,
        last_heartbeat=worker.last_heartbeat,
        queue_depth=depth or 0,
        trials_done=done or 0,
        errors=errors or 0,
    )
