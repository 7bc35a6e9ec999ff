"""``/v1/schedules``: what clients build with: the tuned config, or the static one."""

from __future__ import annotations

from fastapi import APIRouter

from autosched.schemas import ErrorBody, ScheduleLookup, ScheduleView
from autosched.service import schedules
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep
from services.api.params import TargetKeyQuery, WorkloadKeyPath

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


@router.post(
    "/lookup",
    response_model=ScheduleView,
    dependencies=[ReadAccess],
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "template builders busy; retry"},
        422: {"description": "malformed, refused, crashing or too slow to analyse"},
    },
)
def lookup_schedule(req: ScheduleLookup, session: SessionDep, hw: HostHardwareDep) -> ScheduleView:
    """By compute declaration: the server computes the key and the schedule and stores
    nothing (``POST /v1/workloads`` stores a workload)."""
    return schedules.lookup_schedule(session, req, hw)


@router.get(
    "/{workload_key}",
    response_model=ScheduleView,
    dependencies=[ReadAccess],
    responses={404: {"model": ErrorBody}},
)
def get_schedule(
    workload_key: WorkloadKeyPath,
    session: SessionDep,
    hw: HostHardwareDep,
    target: TargetKeyQuery = None,
) -> ScheduleView:
    """``target`` is a target key (``llvm/<mcpu>/<cores>c/<bits>b``); default: the API host's."""
    return schedules.get_schedule(session, workload_key, target, hw)
