"""``/v1/schedules``: what clients build with: the tuned config, or the static one."""

from __future__ import annotations

from fastapi import APIRouter, Response

from autosched.schemas import ErrorBody, ScheduleLookup, ScheduleView
from autosched.service import schedules
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep, StateDep
from services.api.params import IfNoneMatchHeader, TargetKeyQuery, WorkloadKeyPath

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
    responses={
        200: {"headers": {"ETag": {"description": "send it as If-None-Match to revalidate"}}},
        304: {"description": "If-None-Match names the current answer"},
        404: {"model": ErrorBody},
    },
)
def get_schedule(
    workload_key: WorkloadKeyPath,
    state: StateDep,
    hw: HostHardwareDep,
    target: TargetKeyQuery = None,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """``target`` is a target key (``llvm/<mcpu>/<cores>c/<bits>b``); default: the API host's.
    Answers carry an ETag; they are kept by the server until a new best config is published
    (``services.api.schedule_cache``)."""
    target_key = schedules.resolve_target(target, hw)
    answer = state.schedule_cache.fetch(state.sessions, workload_key, target_key, hw)
    if answer.matches(if_none_match):
        return Response(status_code=304, headers=answer.headers)
    return Response(answer.body, media_type="application/json", headers=answer.headers)
