"""Read-only listings the dashboard shows and scripts may want too: a job's trials (with
their errors) and the cached best schedules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from autosched.service import dashboard
from autosched.service.dashboard import BestSchedule, TrialPage
from autosched.service.schemas import ErrorBody
from services.api.deps import ReadAccess, SessionDep

router = APIRouter(tags=["views"], dependencies=[ReadAccess])


@router.get(
    "/v1/jobs/{job_id}/trials",
    response_model=TrialPage,
    tags=["jobs"],
    responses={404: {"model": ErrorBody}},
)
def job_trials(
    job_id: int,
    session: SessionDep,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> TrialPage:
    """Done trials numbered as on the job's curve, then those in flight; ``limit``: the
    newest only."""
    return dashboard.job_trials(session, job_id, limit)


@router.get("/v1/schedules", response_model=list[BestSchedule], tags=["schedules"])
def list_schedules(
    session: SessionDep,
    workload_key: str | None = None,
    target: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[BestSchedule]:
    """Cached best schedules (tuned only) with provenance; fetch one with
    ``GET /v1/schedules/{workload_key}?target=...``."""
    return dashboard.list_best_schedules(session, workload_key, target, limit)
