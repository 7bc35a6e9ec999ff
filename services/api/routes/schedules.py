"""``/v1/schedules``: what clients build with: the tuned config, or the static one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from autosched.schemas import (
    TARGET_KEY_MAX,
    WORKLOAD_KEY_MAX,
    WORKLOAD_KEY_PATTERN,
    ErrorBody,
    ScheduleLookup,
    ScheduleView,
)
from autosched.service import schedules
from autosched.vocabulary import TARGET_KEY_PATTERN
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep

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
    workload_key: Annotated[str, Path(max_length=WORKLOAD_KEY_MAX, pattern=WORKLOAD_KEY_PATTERN)],
    session: SessionDep,
    hw: HostHardwareDep,
    target: Annotated[
        str | None, Query(max_length=TARGET_KEY_MAX, pattern=TARGET_KEY_PATTERN)
    ] = None,
) -> ScheduleView:
    """``target`` is a target key (``llvm/<mcpu>/<cores>c/<bits>b``); default: the API host's."""
    return schedules.get_schedule(session, workload_key, target, hw)
