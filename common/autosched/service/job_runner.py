"""One job's run, by the scheduler in a thread of its own: hold its lease, wait for a worker
of its device, run its measuring phases (``job_phases``), then end the job or release it.

Everything a job has done lives in its trial rows, so the run is resumable: a scheduler
that picks up a job whose previous scheduler died first waits for the trials that were in
flight, then lets the search strategy start from the recorded trials (``SQLDatabase``),
which it never proposes again.
"""

from __future__ import annotations

import logging
import threading
from enum import Enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job
from autosched.db.session import session_scope
from autosched.errors import JobCancelled, JobInterrupted
from autosched.hardware import HardwareParams
from autosched.logs import log_context
from autosched.service.device_gate import DeviceGate
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.farm import device_hardware, online_workers
from autosched.service.job_phases import JobPhases, stop_if_asked
from autosched.service.job_state import JobHold, JobLease, StopReason, is_transient
from autosched.settings import Settings, get_settings
from autosched.vocabulary import TERMINAL_JOB_STATES, JobState

log = logging.getLogger(__name__)


class JobRunner:
    """State of one run of one job (see ``run_job``)."""

    def __init__(
        self,
        job_id: int,
        factory: sessionmaker[Session],
        celery_app: Any,
        scheduler_id: str,
        stop_event: threading.Event,
        settings: Settings,
        gate: DeviceGate,
        poll_s: float,
    ) -> None:
        self.job_id = job_id
        self.factory = factory
        self.app = celery_app
        self.scheduler_id = scheduler_id
        self.stop_event = stop_event
        self.settings = settings
        self.gate = gate
        self.poll_s = poll_s
        self.hold = JobHold(factory, job_id, scheduler_id, retry_s=settings.heartbeat_timeout_s)
        self.lease = JobLease(
            factory,
            job_id,
            scheduler_id,
            ttl_s=settings.heartbeat_timeout_s,
            interval_s=settings.heartbeat_interval_s,
        )

    def should_stop(self) -> StopReason | None:
        """The condition the tuning loop and the measurer check between steps."""
        if self.stop_event.is_set() or self.lease.lost:
            return StopReason.INTERRUPTED
        if self.hold.cancel_requested():
            return StopReason.CANCELLED
        return None

    def _wait_for_device(self) -> HardwareParams | None:
        """The device key's pinned hardware (validated at its first registration), once a
        worker of it is online; None if the job ended."""
        while True:
            with session_scope(self.factory) as session:
                job = session.get(Job, self.job_id)
                if job is None or job.state in TERMINAL_JOB_STATES:
                    return None
                if job.cancel_requested:
                    raise JobCancelled(f"job {self.job_id} was cancelled")
                pinned = device_hardware(session, job.device_key)
                if pinned is not None and online_workers(session, job.device_key):
                    return pinned
            stop_if_asked(self.job_id, self.should_stop)
            self.stop_event.wait(self.poll_s)

    def run(self) -> JobState | None:
        """Run the job to its end; the state it ended in (None: left for another run)."""
        self.lease.start()
        try:
            return self._end(self._outcome())
        finally:
            self.lease.stop()

    def _outcome(self) -> Outcome:
        """Run the phases; how the job should end (or be left)."""
        try:
            hw = self._wait_for_device()
            if hw is None:
                return Leave.ENDED
            self._phases(hw)
            return (JobState.SUCCEEDED, None)
        except JobCancelled:
            return (JobState.CANCELLED, None)
        except JobInterrupted:
            return Leave.LOST if self.lease.lost else Leave.RELEASE
        except Exception as err:
            if is_transient(err):  # not the job's fault: another run resumes it
                log.warning(
                    "job %d: %s: %s; releasing it to be resumed",
                    self.job_id,
                    type(err).__name__,
                    err,
                )
                return Leave.RELEASE
            log.exception("job %d failed", self.job_id)
            return (JobState.FAILED, f"{type(err).__name__}: {err}")

    def _end(self, outcome: Outcome) -> JobState | None:
        """Record ``outcome`` (retried through transient errors); None unless the job ended
        here. If the database stays away, the lease lapses and a scheduler resumes it."""
        try:
            if outcome is Leave.RELEASE:
                self.hold.release()
            elif not isinstance(outcome, Leave):
                state, error = outcome
                return state if self.hold.finish(state, error) else None
        except Exception as err:
            if not is_transient(err):
                raise
            log.warning(
                "job %d: could not record its %s (%s); its lease will lapse",
                self.job_id,
                outcome,
                err,
            )
        return None

    def _phases(self, hw: HardwareParams) -> None:
        job = self.hold.start(hw)
        target = job.target_key or ""
        phases = JobPhases(self.factory, self.job_id, self.settings.batch_size, self.should_stop)
        workloads = phases.workloads(hw)
        with session_scope(self.factory) as session:
            created = session.scalar(select(Job.created_at).where(Job.id == self.job_id))
        measurer = DispatchMeasurer(
            self.factory,
            self.app,
            self.job_id,
            job.device_key,
            target,
            workloads=[w.workload for w in workloads],
            redispatch_s=self.settings.trial_redispatch_s,
            unclaimed_resend_s=self.settings.trial_unclaimed_resend_s,
            gate=self.gate,
            rank=(-job.priority, created.timestamp() if created else 0.0, job.id),
            should_stop=self.should_stop,
        )
        log.info(
            "job %d running on %s (%s): %s, %d workloads, %d trials each",
            self.job_id,
            job.device_key,
            target,
            job.strategy,
            len(workloads),
            job.trials_per_workload,
        )
        phases.measure_static(workloads, measurer, hw, target)
        if job.strategy != "static":
            phases.tune(job, workloads, measurer, hw)


class Leave(Enum):
    """A run that does not end its job: ``ENDED`` elsewhere (cancelled while queued),
    ``LOST`` its lease to another scheduler, or to ``RELEASE`` for the next one."""

    ENDED = "ended"
    LOST = "lost"
    RELEASE = "release"


Outcome = Leave | tuple[JobState, str | None]


def run_job(
    job_id: int,
    factory: sessionmaker[Session],
    celery_app: Any,
    scheduler_id: str,
    stop_event: threading.Event | None = None,
    *,
    settings: Settings | None = None,
    gate: DeviceGate | None = None,
    poll_s: float = 1.0,
) -> JobState | None:
    """Run job ``job_id`` (already claimed by ``scheduler_id``) until it succeeds, fails or
    is cancelled; returns that state, or None when the job was left to be resumed (the
    scheduler is stopping, or its lease went to another scheduler)."""
    settings = settings or get_settings()
    runner = JobRunner(
        job_id,
        factory,
        celery_app,
        scheduler_id,
        stop_event or threading.Event(),
        settings,
        gate or DeviceGate(settings.batches_in_flight_per_device),
        poll_s,
    )
    with log_context(job_id=job_id):  # every line of this job's thread names the job
        return runner.run()
