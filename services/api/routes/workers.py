"""``/v1/workers``: the device farm. Workers register and heartbeat; anyone may list them."""

from __future__ import annotations

from fastapi import APIRouter

from autosched.service import farm
from autosched.service.schemas import ErrorBody, WorkerRegister, WorkerView
from services.api.deps import ReadAccess, SessionDep, SettingsDep, WorkerAccess

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.post("/register", response_model=WorkerView, dependencies=[WorkerAccess])
def register(reg: WorkerRegister, session: SessionDep) -> WorkerView:
    """Create or refresh a worker; it is online from now on."""
    return farm.worker_view(session, farm.register_worker(session, reg))


@router.post(
    "/{worker_id}/heartbeat",
    response_model=WorkerView,
    dependencies=[WorkerAccess],
    responses={404: {"model": ErrorBody, "description": "not registered: register again"}},
)
def heartbeat(worker_id: str, session: SessionDep) -> WorkerView:
    return farm.worker_view(session, farm.heartbeat(session, worker_id))


@router.get("", response_model=list[WorkerView], dependencies=[ReadAccess])
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerView]:
    """Silent workers are reaped first, so the list never shows a dead worker online."""
    farm.reap_silent_workers(session, settings.heartbeat_timeout_s)
    return farm.list_workers(session)
