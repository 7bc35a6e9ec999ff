"""Read-only listings the dashboard shows and scripts may want too: a job's trials (with
their errors) and the cached best schedules. Error texts and worker ids only with a token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from autosched.schemas import BestSchedule, ErrorBody, TrialPage
from autosched.service import dashboard
from services.api.deps import Reader, SessionDep, redact_for
from services.api.params import RowIdPath, TargetKeyQuery, WorkloadKeyQuery

router = APIRouter(tags=["views"])


@router.get(
    "/v1/jobs/{job_id}/trials",
    response_model=TrialPage,
    tags=["jobs"],
    responses={404: {"model": ErrorBody}},
)
def job_trials(
    job_id: RowIdPath,
    session: SessionDep,
    reader: Reader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> TrialPage:
    """Done trials numbered as on the job's curve, then those in flight; ``limit``: the
    newest only."""
    return dashboard.job_trials(session, job_id, limit, redact=redact_for(reader))


@router.get("/v1/schedules", response_model=list[BestSchedule], tags=["schedules"])
def list_schedules(
    session: SessionDep,
    reader: Reader,
    workload_key: WorkloadKeyQuery = None,
    target: TargetKeyQuery = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[BestSchedule]:
    """Cached best schedules (tuned only) with provenance; fetch one with
    ``GET /v1/schedules/{workload_key}?target=...``."""
    return dashboard.list_best_schedules(
        session, workload_key, target, limit, redact=redact_for(reader)
    )
