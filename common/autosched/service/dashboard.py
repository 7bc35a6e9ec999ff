"""Read-only views for the dashboard and the JSON routes it adds (``/v1/jobs/{id}/trials``,
``GET /v1/schedules``): a job's trials with their errors, its workloads' stages and best
schedules, the farm's throughput, and the cached best schedules.

Nothing here writes; every function is a handful of queries whatever the number of rows.
Each takes ``redact`` (default True, the anonymous view): worker ids become pseudonyms, host
names and trial error texts (sandbox stderr, with paths) are left out; statuses stay.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from autosched.db.models import BestConfig, Job, JobWorkload, Trial, WorkloadRow, utcnow
from autosched.schemas import BestSchedule, StageView, TrialPage, TrialView, WorkerView
from autosched.service.farm import list_workers, public_worker_id, redact_worker
from autosched.service.jobs import gflops_of, job_row, workload_flops
from autosched.service.schedules import best_config_view
from autosched.trace_format import format_trace
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import TrialState

V = TypeVar("V", bound=BestSchedule)

# Trials/min counts trials finished in this window (long enough to smooth batches).
THROUGHPUT_WINDOW_S = 300.0


class BestScheduleDetail(BestSchedule):
    config: dict[str, Any]
    trace: list[str]  # the TVM trace as Python-like lines (trace_format.format_trace)


class JobWorkloadInfo(BaseModel):
    workload_key: str
    name: str
    flops: float
    stages: list[StageView]
    # Best on the job's target: from this job or an earlier one (``job_id`` says which).
    best: BestScheduleDetail | None


class FarmWorkerView(WorkerView):
    trials_per_min: float  # finished in the last THROUGHPUT_WINDOW_S
    error_rate: float | None  # failed / done, None before any trial


def _worker_id(worker_id: str | None, redact: bool) -> str | None:
    return public_worker_id(worker_id) if redact else worker_id


def job_trials(
    session: Session, job_id: int, limit: int | None = None, *, redact: bool = True
) -> TrialPage:
    """A job's trials, numbered as the curve numbers them (done trials in finishing order),
    followed by those in flight; with ``limit``, only the newest ``limit``."""
    job_row(session, job_id)
    flops = workload_flops(session, job_id)
    rows = session.execute(
        select(
            Trial.id,
            Trial.workload_key,
            Trial.state,
            Trial.status,
            Trial.latency,
            Trial.error,
            Trial.worker_id,
            Trial.build_secs,
            Trial.run_secs,
            Trial.dispatch_count,
            Trial.dispatched_at,
            Trial.finished_at,
        )
        .where(Trial.job_id == job_id)
        # The curve's order for done trials (jobs._curve); the others after them.
        .order_by(
            (Trial.state != TrialState.DONE),
            Trial.finished_at.is_(None),
            Trial.finished_at,
            Trial.id,
        )
    ).all()
    trials = []
    number = 0
    for row in rows:
        done = row.state == TrialState.DONE
        number += done
        ok = done and row.status == TrialStatus.OK and row.latency is not None
        trials.append(
            TrialView(
                id=row.id,
                number=number if done else None,
                workload_key=row.workload_key,
                state=row.state,
                status=row.status,
                latency=row.latency,
                gflops=gflops_of(flops.get(row.workload_key, 0.0), row.latency) if ok else None,
                error=None if redact else row.error,
                worker_id=_worker_id(row.worker_id, redact),
                build_secs=row.build_secs,
                run_secs=row.run_secs,
                dispatch_count=row.dispatch_count,
                dispatched_at=row.dispatched_at,
                finished_at=row.finished_at,
            )
        )
    total = len(trials)
    if limit is not None and total > limit:
        trials = trials[total - limit :]
    return TrialPage(total=total, trials=trials)


def _best_query() -> Select[tuple[BestConfig, str, int | None]]:
    return (
        select(BestConfig, WorkloadRow.name, Trial.job_id)
        .join(WorkloadRow, WorkloadRow.key == BestConfig.workload_key)
        .outerjoin(Trial, Trial.id == BestConfig.trial_id)
    )


def _best(
    model: type[V], row: tuple[BestConfig, str, int | None], redact: bool, **fields: Any
) -> V:
    """A view of one row of ``_best_query``: the workload's name and the measuring job added."""
    best, name, job_id = row
    worker_id = _worker_id(best.worker_id, redact)
    return best_config_view(
        model, best, workload_name=name, job_id=job_id, worker_id=worker_id, **fields
    )


def _best_detail(row: tuple[BestConfig, str, int | None], redact: bool) -> BestScheduleDetail:
    return _best(BestScheduleDetail, row, redact, trace=format_trace(row[0].trace))


def list_best_schedules(
    session: Session,
    workload_key: str | None = None,
    target_key: str | None = None,
    limit: int = 1000,
    *,
    redact: bool = True,
) -> list[BestSchedule]:
    """Cached best schedules by workload name, then target."""
    query = _best_query().order_by(WorkloadRow.name, BestConfig.workload_key, BestConfig.target_key)
    if workload_key is not None:
        query = query.where(BestConfig.workload_key == workload_key)
    if target_key is not None:
        query = query.where(BestConfig.target_key == target_key)
    return [_best(BestSchedule, row, redact) for row in session.execute(query.limit(limit))]


def best_schedule_details(
    session: Session, limit: int = 1000, *, redact: bool = True
) -> list[BestScheduleDetail]:
    """The schedules page: every cached best schedule with its config and readable trace."""
    query = _best_query().order_by(WorkloadRow.name, BestConfig.workload_key, BestConfig.target_key)
    return [_best_detail(row, redact) for row in session.execute(query.limit(limit))]


def job_workloads(session: Session, job_id: int, *, redact: bool = True) -> list[JobWorkloadInfo]:
    """The job's workloads in order: stages (meta-templates) and best schedule on its target."""
    job = job_row(session, job_id)
    rows = session.execute(
        select(WorkloadRow)
        .join(JobWorkload, JobWorkload.workload_key == WorkloadRow.key)
        .where(JobWorkload.job_id == job_id)
        .order_by(JobWorkload.position, JobWorkload.id)
    ).scalars()
    workloads = list(rows)
    best: dict[str, BestScheduleDetail] = {}
    if job.target_key is not None and workloads:
        query = _best_query().where(
            BestConfig.target_key == job.target_key,
            BestConfig.workload_key.in_([w.key for w in workloads]),
        )
        best = {row[0].workload_key: _best_detail(row, redact) for row in session.execute(query)}
    return [
        JobWorkloadInfo(
            workload_key=w.key,
            name=w.name,
            flops=w.flops or 0.0,
            stages=[StageView.model_validate(s) for s in w.analysis or []],
            best=best.get(w.key),
        )
        for w in workloads
    ]


def job_state_counts(session: Session) -> dict[str, int]:
    """How many jobs are in each state (the jobs page's filter tabs)."""
    return dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())


def _window(registered_at: datetime, now: datetime, window_s: float) -> float:
    return max(60.0, min(window_s, (now - registered_at).total_seconds()))


def farm_workers(
    session: Session,
    window_s: float = THROUGHPUT_WINDOW_S,
    now: datetime | None = None,
    *,
    redact: bool = True,
) -> list[FarmWorkerView]:
    """Every worker (by device key) with its throughput over the last ``window_s``."""
    now = now or utcnow()
    since = now - timedelta(seconds=window_s)
    recent = Counter(
        dict(
            session.execute(
                select(Trial.worker_id, func.count())
                .where(Trial.state == TrialState.DONE, Trial.finished_at >= since)
                .group_by(Trial.worker_id)
            ).all()
        )
    )
    return [
        FarmWorkerView(
            # Counted under the real id, shown under the pseudonym when redacted.
            **(redact_worker(w) if redact else w).model_dump(),
            # A worker younger than the window is rated over its lifetime (at least a minute).
            trials_per_min=recent[w.id] * 60.0 / _window(w.registered_at, now, window_s),
            error_rate=w.errors / w.trials_done if w.trials_done else None,
        )
        for w in list_workers(session, redact=False)
    ]
