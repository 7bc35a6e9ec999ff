"""``/v1/jobs``: submit tuning jobs, follow their progress, cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from autosched.schemas import ErrorBody, JobCreate, JobDetail, JobView
from autosched.service import jobs
from autosched.vocabulary import JobState
from services.api.deps import HostHardwareDep, QuotasDep, Reader, SessionDep, Submitter, redact_for
from services.api.params import RowIdPath

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    response_model=JobView,
    status_code=status.HTTP_201_CREATED,
    responses={
        422: {"description": "unknown workload key or device key, no worker for the target"},
        429: {"model": ErrorBody, "description": "over the token's job, workload or trial quota"},
    },
)
def create_job(
    req: JobCreate, session: SessionDep, hw: HostHardwareDep, caller: Submitter, quotas: QuotasDep
) -> JobView:
    """The job belongs to the submitting token: only it (or an admin) may cancel it."""
    return jobs.create_job(session, req, hw, caller=caller, quotas=quotas)


@router.get("", response_model=list[JobView])
def list_jobs(
    session: SessionDep,
    reader: Reader,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobView]:
    """Newest first. Error texts only with a token."""
    return jobs.list_jobs(session, state=state, limit=limit, redact=redact_for(reader))


@router.get("/{job_id}", response_model=JobDetail, responses={404: {"model": ErrorBody}})
def get_job(job_id: RowIdPath, session: SessionDep, reader: Reader) -> JobDetail:
    """Its error text only with a token."""
    return jobs.get_job(session, job_id, redact=redact_for(reader))


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    responses={
        403: {"model": ErrorBody, "description": "another token's job"},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
def cancel_job(job_id: RowIdPath, session: SessionDep, caller: Submitter) -> JobView:
    """Queued: cancelled at once. Running: its scheduler stops it after the current batch."""
    return jobs.cancel_job(session, job_id, caller=caller)
