"""A job's state changes while a scheduler holds it: its lease, start, finish and release.

Each change is one conditional update (``held_by``: this scheduler's job, not yet
finished), so two schedulers that both think they hold a job cannot both move it: the one
whose lease was taken over finds nothing to update and lets the job go.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, db_now, utcnow
from autosched.db.session import session_scope
from autosched.errors import JobCancelled, JobInterrupted
from autosched.hardware import HardwareParams
from autosched.logs import log_context
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import ACTIVE_JOB_STATES, JobState, TrialState

log = logging.getLogger(__name__)


def held_by(job_id: int, scheduler_id: str) -> tuple[Any, ...]:
    """The condition of every change a holding scheduler makes: its job, not yet finished."""
    return (
        Job.id == job_id,
        Job.scheduler_id == scheduler_id,
        Job.state.in_(ACTIVE_JOB_STATES),
    )


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
            renewed = session.execute(
                update(Job)
                .where(*held_by(self.job_id, self.scheduler_id))
                .values(lease_expires_at=db_now(self.ttl_s))  # the database's clock
                .execution_options(synchronize_session=False)
            ).rowcount
        return renewed == 1

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
    """The changes scheduler ``scheduler_id`` may make to job ``job_id`` while it holds it."""

    def __init__(self, factory: sessionmaker[Session], job_id: int, scheduler_id: str) -> None:
        self.factory = factory
        self.job_id = job_id
        self.scheduler_id = scheduler_id

    def cancel_requested(self, session: Session) -> bool:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def finish(self, state: JobState, error: str | None = None) -> bool:
        with session_scope(self.factory) as session:
            finished = session.execute(
                update(Job)
                .where(*held_by(self.job_id, self.scheduler_id))
                .values(
                    state=state,
                    error=error,
                    finished_at=utcnow(),
                    lease_expires_at=None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if finished:  # what is still queued will never be needed
                session.execute(
                    update(Trial)
                    .where(Trial.job_id == self.job_id, Trial.state == TrialState.QUEUED)
                    .values(state=TrialState.CANCELLED)
                    .execution_options(synchronize_session=False)
                )
        if finished:
            self._log_outcome(state, error)
        return bool(finished)

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
        with session_scope(self.factory) as session:
            session.execute(
                update(Job)
                .where(*held_by(self.job_id, self.scheduler_id))
                .values(scheduler_id=None, lease_expires_at=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        log.info("job %d released for resumption", self.job_id)

    def start(self, hw: HardwareParams) -> Job:
        """Mark the job running on ``hw``'s target; raises ``JobCancelled`` or
        ``JobInterrupted`` when it is no longer this scheduler's to run."""
        with session_scope(self.factory) as session:
            started = session.execute(
                update(Job)
                .where(*held_by(self.job_id, self.scheduler_id), Job.cancel_requested.is_(False))
                .values(
                    state=JobState.RUNNING,
                    target_key=hw.target_key,
                    started_at=func.coalesce(Job.started_at, utcnow()),
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if not started:
                if self.cancel_requested(session):
                    raise JobCancelled(f"job {self.job_id} was cancelled")
                raise JobInterrupted(f"job {self.job_id} is no longer this scheduler's")
            job = session.get(Job, self.job_id)
            assert job is not None
            return job
