"""Jobs: submitted here, run by the scheduler, and summarised from their trial rows.

Views are computed from a handful of aggregate queries (grouped by job and workload), so
listing many jobs with many trials costs the same few round trips as showing one.

A job belongs to the token that submitted it: only that token (or an admin) cancels it, and
its active jobs, workloads and trials count against that token's quotas. Quotas are checked
before anything is stored, so a refused job leaves no trace.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from autosched.db.models import (
    ApiToken,
    Device,
    Job,
    JobWorkload,
    Trial,
    Worker,
    WorkloadRow,
)
from autosched.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from autosched.hardware import HardwareParams
from autosched.schemas import (
    CurvePoint,
    JobCreate,
    JobDetail,
    JobView,
    JobWorkloadView,
    summed_latency,
)
from autosched.service import job_state
from autosched.service.farm import freshest_online
from autosched.service.tokens import Caller
from autosched.service.workloads import register_workload
from autosched.settings import Settings
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import ACTIVE_JOB_STATES, TERMINAL_JOB_STATES, JobState, TrialState


@dataclass(frozen=True)
class Quotas:
    """Per-token limits (settings ``quota_*``); admins and trusted callers have none."""

    active_jobs: int
    workloads_per_job: int
    trials_per_job: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        return cls(
            settings.quota_active_jobs,
            settings.quota_workloads_per_job,
            settings.quota_trials_per_job,
        )


def _check_quotas(session: Session, req: JobCreate, caller: Caller, quotas: Quotas) -> None:
    if caller.is_admin:
        return
    # Duplicate keys collapse into one workload; documents are counted as sent (their keys
    # are only known once stored, and a quota check stores nothing).
    workloads = len(dict.fromkeys(req.workload_keys)) + len(req.workloads)
    if workloads > quotas.workloads_per_job:
        raise QuotaExceededError(
            f"a job may tune at most {quotas.workloads_per_job} workloads; this one has {workloads}"
        )
    trials = workloads * (1 if req.strategy == "static" else req.trials)
    if trials > quotas.trials_per_job:
        raise QuotaExceededError(
            f"a job may measure at most {quotas.trials_per_job} trials (all workloads); this "
            f"one asks for {trials}"
        )
    # Lock the token's row: two concurrent submissions of one token cannot both take the
    # last free slot (the second waits for the first's commit, then counts it).
    session.execute(select(ApiToken.id).where(ApiToken.id == caller.token_id).with_for_update())
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner_token_id == caller.token_id, Job.state.in_(ACTIVE_JOB_STATES))
    )
    if (active or 0) >= quotas.active_jobs:
        raise QuotaExceededError(
            f"this token has {active} jobs queued or running, its quota is "
            f"{quotas.active_jobs}: wait for one to finish or cancel one"
        )


def create_job(
    session: Session,
    req: JobCreate,
    host_hw: HardwareParams,
    *,
    caller: Caller,
    quotas: Quotas,
) -> JobView:
    """Queue a job owned by ``caller``. Quotas (429) and the device key (422) are checked
    first; wire documents are then validated and stored (WireFormatError → 422)."""
    _check_quotas(session, req, caller, quotas)
    if req.device_key is not None and session.get(Device, req.device_key) is None:
        raise InvalidRequestError(
            f"unknown device key {req.device_key!r}: no worker has ever registered it"
        )
    keys: list[str] = []
    for doc in req.workloads:
        keys.append(register_workload(session, doc, host_hw).key)
    for key in req.workload_keys:
        if session.get(WorkloadRow, key) is None:
            raise InvalidRequestError(f"no workload with key {key!r}; submit it first")
        keys.append(key)
    keys = list(dict.fromkeys(keys))  # one JobWorkload per workload, first position wins

    device_key, target_key = req.device_key, None
    if device_key is None:
        assert req.target is not None  # JobCreate guarantees one of the two
        device_key = _device_for_target(session, req.target)
        target_key = req.target

    job = Job(
        state=JobState.QUEUED,
        device_key=device_key,
        target_key=target_key,
        strategy=req.strategy,
        trials_per_workload=req.trials,
        priority=req.priority,
        seed=req.seed,
        owner_token_id=caller.token_id,
    )
    job.workloads = [JobWorkload(workload_key=k, position=i) for i, k in enumerate(keys)]
    session.add(job)
    session.flush()
    return _views(session, [job], redact=False)[0]


def _device_for_target(session: Session, target: str) -> str:
    """The device key of an online worker compiling for ``target`` (the freshest one)."""
    device_key = freshest_online(session, Worker.device_key, target)
    if device_key is None:
        raise InvalidRequestError(f"no online worker serves target {target!r}")
    return device_key


def list_jobs(
    session: Session, state: str | None = None, limit: int = 100, *, redact: bool = True
) -> list[JobView]:
    """Newest first. ``redact`` (the default, for anonymous readers) drops error texts."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    return _views(session, list(session.scalars(query)), redact=redact)


def get_job(session: Session, job_id: int, *, redact: bool = True) -> JobDetail:
    job = job_row(session, job_id)
    view = _views(session, [job], redact=redact)[0]
    return JobDetail(**view.model_dump(), curve=_curve(session, job_id))


def cancel_job(session: Session, job_id: int, *, caller: Caller) -> JobView:
    """A queued job is cancelled at once; a running one is flagged for its scheduler.

    Only its owner or an admin may (PermissionDeniedError otherwise). Both are moves of the
    job state machine (``job_state.cancel``), each a conditional update, so a scheduler
    claiming the job at the same moment either sees it cancelled or finds
    ``cancel_requested`` set. Queued trials are cancelled right away so workers skip them.
    The answer is the owner's view: unredacted.
    """
    job = job_row(session, job_id)
    if not caller.owns(job.owner_token_id):
        raise PermissionDeniedError(f"job {job_id} belongs to another token")
    if job.state in TERMINAL_JOB_STATES:
        raise ConflictError(f"job {job_id} is already {job.state}")
    if not job_state.cancel(session, job_id):  # it ended between our read and the update
        session.refresh(job)
        raise ConflictError(f"job {job_id} is already {job.state}")
    job_state.cancel_queued_trials(session, job_id)
    session.flush()
    session.refresh(job)
    return _views(session, [job], redact=False)[0]


def job_row(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    return job


@dataclass
class _WorkloadStats:
    key: str
    name: str
    flops: float
    static_latency: float | None
    done: int = 0
    best: float | None = None


def gflops_of(flops: float, latency: float | None) -> float | None:
    """GFLOP/s of a run of ``flops`` floating-point operations taking ``latency`` seconds."""
    return flops / latency / 1e9 if latency else None


def _views(session: Session, jobs: Sequence[Job], *, redact: bool) -> list[JobView]:
    """Views of ``jobs`` from three grouped queries, whatever the number of jobs or trials."""
    if not jobs:
        return []
    ids = [j.id for j in jobs]
    per_job: dict[int, list[_WorkloadStats]] = defaultdict(list)
    by_key: dict[tuple[int, str], _WorkloadStats] = {}
    rows = session.execute(
        select(
            JobWorkload.job_id,
            JobWorkload.workload_key,
            WorkloadRow.name,
            WorkloadRow.flops,
            JobWorkload.static_latency,
        )
        .join(WorkloadRow, WorkloadRow.key == JobWorkload.workload_key)
        .where(JobWorkload.job_id.in_(ids))
        .order_by(JobWorkload.job_id, JobWorkload.position, JobWorkload.id)
    )
    for job_id, key, name, flops, static_latency in rows:
        stats = _WorkloadStats(key, name, flops or 0.0, static_latency)
        per_job[job_id].append(stats)
        by_key[(job_id, key)] = stats

    ok_latency = case(
        (and_(Trial.status == TrialStatus.OK, Trial.latency.is_not(None)), Trial.latency)
    )
    done_trials = and_(Trial.job_id.in_(ids), Trial.state == TrialState.DONE)
    done_per_job: dict[int, int] = defaultdict(int)
    for job_id, key, done, best in session.execute(
        select(Trial.job_id, Trial.workload_key, func.count(), func.min(ok_latency))
        .where(done_trials)
        .group_by(Trial.job_id, Trial.workload_key)
    ):
        done_per_job[job_id] += done
        stats = by_key.get((job_id, key))
        if stats is not None:
            stats.done, stats.best = done, best

    errors: dict[int, dict[str, int]] = defaultdict(dict)
    for job_id, status, count in session.execute(
        select(Trial.job_id, Trial.status, func.count())
        .where(done_trials, Trial.status != TrialStatus.OK)
        .group_by(Trial.job_id, Trial.status)
    ):
        errors[job_id][status] = count

    return [
        _job_view(job, per_job[job.id], done_per_job[job.id], errors[job.id], redact)
        for job in jobs
    ]


def _job_view(
    job: Job, workloads: list[_WorkloadStats], done: int, errors: dict[str, int], redact: bool
) -> JobView:
    per_workload = 1 if job.strategy == "static" else job.trials_per_workload
    best_latency = summed_latency(w.best for w in workloads)
    return JobView(
        id=job.id,
        state=job.state,
        device_key=job.device_key,
        target_key=job.target_key,
        strategy=job.strategy,
        priority=job.priority,
        trials_total=per_workload * len(workloads),
        trials_done=done,
        best_latency=best_latency,
        best_gflops=gflops_of(sum(w.flops for w in workloads), best_latency),
        errors=errors,
        workloads=[
            JobWorkloadView(
                workload_key=w.key,
                name=w.name,
                trials_done=w.done,
                best_latency=w.best,
                best_gflops=gflops_of(w.flops, w.best),
                static_latency=w.static_latency,
            )
            for w in workloads
        ],
        # The text may quote a sandbox's stderr (paths, host details); the state says failed.
        error=None if redact else job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def workload_flops(session: Session, job_id: int) -> dict[str, float]:
    """FLOPs per workload key of a job (GFLOP/s = flops / latency / 1e9)."""
    return dict(
        session.execute(
            select(WorkloadRow.key, WorkloadRow.flops)
            .join(JobWorkload, JobWorkload.workload_key == WorkloadRow.key)
            .where(JobWorkload.job_id == job_id)
        ).all()
    )


def _curve(session: Session, job_id: int) -> list[CurvePoint]:
    """Done trials in the order they finished, with each workload's best so far."""
    flops = workload_flops(session, job_id)
    rows = session.execute(
        select(Trial.workload_key, Trial.status, Trial.latency)
        .where(Trial.job_id == job_id, Trial.state == TrialState.DONE)
        .order_by(Trial.finished_at.is_(None), Trial.finished_at, Trial.id)
    )
    best: dict[str, float] = {}
    curve = []
    for n, (key, status, latency) in enumerate(rows, start=1):
        ok = status == TrialStatus.OK and latency is not None
        gflops = gflops_of(flops.get(key, 0.0), latency) if ok else None
        if gflops is not None and gflops > best.get(key, -1.0):
            best[key] = gflops
        curve.append(
            CurvePoint(
                trial=n,
                workload_key=key,
                status=status or "",
                latency=latency,
                gflops=gflops,
                best_gflops=best.get(key),
            )
        )
    return curve
