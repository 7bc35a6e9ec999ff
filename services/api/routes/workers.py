"""``/v1/workers``: the device farm. Workers register and heartbeat; anyone may list them
(host names and worker ids only with a token)."""

from __future__ import annotations

from fastapi import APIRouter

from autosched.schemas import ErrorBody, WorkerRegister, WorkerView
from autosched.service import farm
from services.api.deps import Reader, SessionDep, SettingsDep, WorkerCaller, redact_for
from services.api.params import WorkerIdPath

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.post(
    "/register",
    response_model=WorkerView,
    responses={
        403: {"model": ErrorBody, "description": "device key not granted, or another's id"},
        409: {"model": ErrorBody, "description": "hardware differs from the device's pin"},
        422: {"description": "invalid hardware, or a target that disagrees with it"},
    },
)
def register(reg: WorkerRegister, session: SessionDep, caller: WorkerCaller) -> WorkerView:
    """Create or refresh a worker; it is online from now on."""
    worker = farm.register_worker(session, reg, caller=caller)
    return farm.worker_view(session, worker, redact=False)


@router.post(
    "/{worker_id}/heartbeat",
    response_model=WorkerView,
    responses={
        403: {"model": ErrorBody, "description": "another token's worker"},
        404: {"model": ErrorBody, "description": "not registered: register again"},
    },
)
def heartbeat(worker_id: WorkerIdPath, session: SessionDep, caller: WorkerCaller) -> WorkerView:
    worker = farm.heartbeat(session, worker_id, caller=caller)
    return farm.worker_view(session, worker, redact=False)


@router.get("", response_model=list[WorkerView])
def list_workers(session: SessionDep, settings: SettingsDep, reader: Reader) -> list[WorkerView]:
    """Silent workers are reaped first, so the list never shows a dead worker online."""
    farm.reap_silent_workers(session, settings.heartbeat_timeout_s, settings.max_trial_attempts)
    return farm.list_workers(session, redact=redact_for(reader))
