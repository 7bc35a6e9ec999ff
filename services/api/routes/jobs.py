"""``/v1/jobs``: submit tuning jobs, follow their progress, cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from autosched.db.models import JobState
from autosched.service import jobs
from autosched.service.schemas import ErrorBody, JobCreate, JobDetail, JobView
from services.api.deps import HostHardwareDep, ReadAccess, SessionDep, SubmitAccess

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    response_model=JobView,
    status_code=status.HTTP_201_CREATED,
    dependencies=[SubmitAccess],
    responses={422: {"description": "unknown workload key, no worker for the target, ..."}},
)
def create_job(req: JobCreate, session: SessionDep, hw: HostHardwareDep) -> JobView:
    return jobs.create_job(session, req, hw)


@router.get("", response_model=list[JobView], dependencies=[ReadAccess])
def list_jobs(
    session: SessionDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobView]:
    """Newest first."""
    return jobs.list_jobs(session, state=state, limit=limit)


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    dependencies=[ReadAccess],
    responses={404: {"model": ErrorBody}},
)
def get_job(job_id: int, session: SessionDep) -> JobDetail:
    return jobs.get_job(session, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    dependencies=[SubmitAccess],
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def cancel_job(job_id: int, session: SessionDep) -> JobView:
    """Queued: cancelled at once. Running: its scheduler stops it after the current batch."""
    return jobs.cancel_job(session, job_id)
