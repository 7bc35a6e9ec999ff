"""The job state machine: a job's states, the transitions allowed between them, and each
transition as one conditional update, used by the scheduler (claim, the reclaim of a lapsed
lease, renew, start, finish, release) and the API (cancel).

    queued ──start──▶ running ──succeed / fail / cancelled──▶ succeeded | failed | cancelled
      │  └──fail / cancelled (by its holder, before it started)──▶ failed | cancelled
      └──cancel (the API)──▶ cancelled
    running: cancel only sets ``cancel_requested``; the job's holder ends it

Holding a job (claim, renew, release) leaves its state alone. Every transition is one
``UPDATE ... WHERE`` on the states it may start from (and, for a holder's changes, on
``scheduler_id``), so a stale holder (its lease taken over) or a late cancel finds nothing
to update and changes nothing. Leases are written and compared by the database's clock.

Transient errors (the database or the broker unreachable for a moment) never end a job:
``is_transient`` names them, the holder's changes are retried with backoff, and a runner
that still meets one releases its lease so that a scheduler resumes the job from its trials.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import tenacity
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, db_now, utcnow
from autosched.db.session import session_scope
from autosched.errors import JobCancelled, JobInterrupted
from autosched.hardware import HardwareParams
from autosched.logs import log_context
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import ACTIVE_JOB_STATES, JobState, TrialState

log = logging.getLogger(__name__)

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
ACTIVE = frozenset(ACTIVE_JOB_STATES)


# ---- transient errors -------------------------------------------------------------------
_TRANSIENT = (
    OperationalError,  # PostgreSQL restarting or failing over, SQLite "database is locked"
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
    BrokerOperationalError,
    ConnectionError,
    TimeoutError,
)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` says the database or the broker is unreachable for now (retry, or
    leave the job to be resumed), not that the job itself is bad."""
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, _TRANSIENT)


def retrying(stop_s: float) -> tenacity.Retrying:
    """Retry transient errors with jittered exponential backoff for up to ``stop_s``."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=5.0),
        stop=tenacity.stop_after_delay(stop_s),
        before_sleep=lambda state: log.warning(
            "transient error (%s); trying again", state.outcome and state.outcome.exception()
        ),
        reraise=True,
    )


class StopReason(StrEnum):
    """Why a running job's search should stop: a condition the tuning loop and the measurer
    check between steps (not an exception through the ``Measurer``)."""

    CANCELLED = "cancelled"  # its cancel was requested: its holder ends it
    INTERRUPTED = "interrupted"  # the scheduler is stopping or lost the lease: leave it


# ---- the transition table ---------------------------------------------------------------
class Move(StrEnum):
    CLAIM = "claim"  # take a free job, or one whose lease lapsed (its scheduler died)
    RENEW = "renew"
    RELEASE = "release"  # leave it to the next scheduler (it resumes from the trials)
    START = "start"  # also a resumed job's restart: running stays running
    SUCCEED = "succeed"
    FAIL = "fail"
    END_CANCELLED = "end_cancelled"  # the holder ends a job whose cancel was requested
    CANCEL = "cancel"  # the API: a queued job ends at once
    REQUEST_CANCEL = "request_cancel"  # the API: a running job is flagged for its holder


@dataclass(frozen=True)
class Transition:
    sources: frozenset[JobState]  # the states it may start from
    target: JobState | None  # None: the state stays (a change of holder or flag)
    held: bool  # only the job's holder (``scheduler_id``) may make it


TRANSITIONS: Mapping[Move, Transition] = {
    Move.CLAIM: Transition(ACTIVE, None, held=False),
    Move.RENEW: Transition(ACTIVE, None, held=True),
    Move.RELEASE: Transition(ACTIVE, None, held=True),
    Move.START: Transition(ACTIVE, RUNNING, held=True),
    Move.SUCCEED: Transition(frozenset({RUNNING}), JobState.SUCCEEDED, held=True),
    Move.FAIL: Transition(ACTIVE, JobState.FAILED, held=True),
    Move.END_CANCELLED: Transition(ACTIVE, JobState.CANCELLED, held=True),
    Move.CANCEL: Transition(frozenset({QUEUED}), JobState.CANCELLED, held=False),
    Move.REQUEST_CANCEL: Transition(frozenset({RUNNING}), None, held=False),
}

#: How a holder ends a job in each terminal state.
ENDINGS: Mapping[JobState, Move] = {
    JobState.SUCCEEDED: Move.SUCCEED,
    JobState.FAILED: Move.FAIL,
    JobState.CANCELLED: Move.END_CANCELLED,
}


def allowed(move: Move, state: JobState) -> bool:
    return state in TRANSITIONS[move].sources


def apply(
    session: Session,
    move: Move,
    job_id: int,
    holder: str | None = None,
    *,
    where: tuple[Any, ...] = (),
    touch: bool = True,
    **values: Any,
) -> bool:
    """Make ``move`` on job ``job_id`` as one conditional update; False (nothing changed)
    when the job is in no state the move starts from, or ``holder`` does not hold it."""
    t = TRANSITIONS[move]
    if t.held and holder is None:
        raise ValueError(f"{move} is a holder's move: name the holder")
    conditions = [Job.id == job_id, Job.state.in_(sorted(t.sources)), *where]
    if t.held:
        conditions.append(Job.scheduler_id == holder)
    if t.target is not None:
        values["state"] = t.target
    if touch:
        values["updated_at"] = utcnow()
    changed = session.execute(
        update(Job).where(*conditions).values(**values).execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def claimable() -> tuple[Any, ...]:
    """Runnable and held by nobody: free, or its lease lapsed (by the database's clock)."""
    free = or_(Job.scheduler_id.is_(None), Job.lease_expires_at.is_(None))
    return (Job.state.in_(sorted(ACTIVE)), or_(free, Job.lease_expires_at < db_now()))


def claim(session: Session, job_id: int, scheduler_id: str, lease_s: float) -> bool:
    return apply(
        session,
        Move.CLAIM,
        job_id,
        where=claimable()[1:],
        scheduler_id=scheduler_id,
        lease_expires_at=db_now(lease_s),
    )


def renew(session: Session, job_id: int, scheduler_id: str, lease_s: float) -> bool:
    return apply(
        session, Move.RENEW, job_id, scheduler_id, touch=False, lease_expires_at=db_now(lease_s)
    )


def release(session: Session, job_id: int, scheduler_id: str) -> bool:
    return apply(
        session, Move.RELEASE, job_id, scheduler_id, scheduler_id=None, lease_expires_at=None
    )


def start(session: Session, job_id: int, scheduler_id: str, target_key: str) -> bool:
    """Running on ``target_key``, unless a cancel was requested meanwhile."""
    return apply(
        session,
        Move.START,
        job_id,
        scheduler_id,
        where=(Job.cancel_requested.is_(False),),
        target_key=target_key,
        started_at=func.coalesce(Job.started_at, utcnow()),
    )


def finish(
    session: Session, job_id: int, scheduler_id: str, state: JobState, error: str | None = None
) -> bool:
    """End the job in ``state``; its still-queued trials will never be needed."""
    ended = apply(
        session,
        ENDINGS[state],
        job_id,
        scheduler_id,
        error=error,
        finished_at=utcnow(),
        lease_expires_at=None,
    )
    if ended:
        cancel_queued_trials(session, job_id)
    return ended


def cancel(session: Session, job_id: int) -> bool:
    """The API's cancel: a queued job ends at once, a running one is flagged for its holder
    (which ends it at its next check); False when it had already ended."""
    if apply(session, Move.CANCEL, job_id, finished_at=utcnow()):
        return True
    return apply(session, Move.REQUEST_CANCEL, job_id, cancel_requested=True)


def cancel_queued_trials(session: Session, job_id: int) -> None:
    session.execute(
        update(Trial)
        .where(Trial.job_id == job_id, Trial.state == TrialState.QUEUED)
        .values(state=TrialState.CANCELLED)
        .execution_options(synchronize_session=False)
    )


# ---- the holder's side ------------------------------------------------------------------
class JobLease(threading.Thread):
    """Renews the job's lease every ``interval_s``; ``lost`` once another scheduler (or a
    cancel of the queued job) took it away.

    The scheduler uses the farm's heartbeat settings: a lease lasts ``heartbeat_timeout_s``
    and is renewed every ``heartbeat_interval_s``, so a dead scheduler's jobs are resumed
    about as soon as a dead worker's trials are re-queued.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        scheduler_id: str,
        ttl_s: float,
        interval_s: float,
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.factory = factory
        self.job_id = job_id
        self.scheduler_id = scheduler_id
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.lost = False
        self._stop = threading.Event()

    def renew(self) -> bool:
        with session_scope(self.factory) as session:
            return renew(session, self.job_id, self.scheduler_id, self.ttl_s)

    def run(self) -> None:
        with log_context(job_id=self.job_id):
            while not self._stop.wait(self.interval_s):
                try:
                    if not self.renew():
                        self.lost = True
                        log.warning("job %d: lease lost", self.job_id)
                        return
                except Exception:  # a database blip: the lease outlives a few missed renewals
                    log.warning("job %d: lease renewal failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()


class JobHold:
    """The changes scheduler ``scheduler_id`` may make to job ``job_id`` while it holds it,
    each retried through transient errors for up to ``retry_s``."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        scheduler_id: str,
        retry_s: float = 30.0,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.scheduler_id = scheduler_id
        self.retry_s = retry_s

    def _retried(self, change: Any, *args: Any) -> Any:
        for attempt in retrying(self.retry_s):
            with attempt, session_scope(self.factory) as session:
                return change(session, self.job_id, self.scheduler_id, *args)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def finish(self, state: JobState, error: str | None = None) -> bool:
        finished = bool(self._retried(finish, state, error))
        if finished:
            self._log_outcome(state, error)
        return finished

    def _log_outcome(self, state: JobState, error: str | None) -> None:
        """One line per finished job: its state, trials measured, best latency found."""
        try:
            with session_scope(self.factory) as session:
                rows = session.execute(
                    select(
                        Trial.workload_key,
                        func.count(),
                        func.min(case((Trial.status == TrialStatus.OK, Trial.latency))),
                    )
                    .where(Trial.job_id == self.job_id, Trial.state == TrialState.DONE)
                    .group_by(Trial.workload_key)
                ).all()
        except Exception:  # the job is finished either way; the summary is a nicety
            log.warning("job %d: no summary of its trials", self.job_id, exc_info=True)
            rows = []
        best = {key: latency for key, _, latency in rows if latency is not None}
        measured = sum(count for _, count, _ in rows)
        shown = ", ".join(f"{key} {latency * 1e3:.4g} ms" for key, latency in best.items())
        log.info(
            "job %d %s: %d trials measured, best latency %s%s",
            self.job_id,
            state,
            measured,
            shown or "none",
            f"; {error}" if error else "",
            extra={"job_state": str(state), "trials_done": measured, "best_latency_s": best},
        )

    def release(self) -> None:
        """Leave the job to the next scheduler (it resumes from the trials)."""
        if self._retried(release):
            log.info("job %d released for resumption", self.job_id)

    def cancel_requested(self) -> bool:
        with session_scope(self.factory) as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def start(self, hw: HardwareParams) -> Job:
        """Mark the job running on ``hw``'s target; raises ``JobCancelled`` or
        ``JobInterrupted`` when it is no longer this scheduler's to run."""
        if not self._retried(start, hw.target_key):
            if self.cancel_requested():
                raise JobCancelled(f"job {self.job_id} was cancelled")
            raise JobInterrupted(f"job {self.job_id} is no longer this scheduler's")
        with session_scope(self.factory) as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            return job
