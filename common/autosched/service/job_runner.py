"""One job's search loop, run by the scheduler in a thread of its own.

Everything a job has done lives in its trial rows, so the loop is resumable: a scheduler
that picks up a job whose previous scheduler died first waits for the trials that were in
flight, then lets the search strategy start from the recorded trials (``SQLDatabase``),
which it never proposes again. The budget counts this job's own done trials per workload;
each workload's static config is measured first (it counts too, unless an earlier job
already measured it: a known config is never measured again).

Several workloads share the device round-robin, one batch each per round, because the
budget is per workload (``trials_per_workload``): the gradient task scheduler would move
trials between workloads and break that contract.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import Enum
from math import isfinite
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, JobWorkload, TemplateRow, Trial, WorkloadRow
from autosched.db.session import session_scope
from autosched.errors import JobCancelled, JobInterrupted
from autosched.hardware import HardwareParams
from autosched.logs import log_context
from autosched.service.dispatch import DeviceGate, DispatchMeasurer
from autosched.service.farm import device_hardware, online_workers
from autosched.service.job_state import JobHold, JobLease, StopReason, is_transient
from autosched.service.measure_trials import measure_inputs
from autosched.service.remeasure import RecordedRemeasurer
from autosched.service.sql_database import SQLDatabase, is_final, trial_result
from autosched.service.workloads import in_process, load_stored, template_row
from autosched.settings import Settings, get_settings
from autosched.space import Config
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus, config_digest
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, TERMINAL_JOB_STATES, JobState, TrialState
from autosched.wire import Workload

if TYPE_CHECKING:
    from autosched.tune.tune import TuningTask

log = logging.getLogger(__name__)

# Before a job ends, its fastest few trials per workload (and the static config) are timed
# again; tune() does the same in-process.
REMEASURE_TOP = 4


@dataclass
class _Workload:
    row: JobWorkload
    workload: Workload
    template: TemplateRow


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

    def _stop_if_asked(self) -> None:
        """Leave the phases here when ``should_stop`` says so (the runner's own control
        flow: ``_outcome`` turns these into the job's end or its release)."""
        reason = self.should_stop()
        if reason is StopReason.CANCELLED:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if reason is StopReason.INTERRUPTED:
            raise JobInterrupted(f"job {self.job_id}: scheduler stopping or lease lost")

    # ---- phases ---------------------------------------------------------------------------
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
            self._stop_if_asked()
            self.stop_event.wait(self.poll_s)

    def _workloads(self, hw: HardwareParams) -> list[_Workload]:
        out = []
        with session_scope(self.factory) as session:
            rows = list(
                session.scalars(
                    select(JobWorkload)
                    .where(JobWorkload.job_id == self.job_id)
                    .order_by(JobWorkload.position, JobWorkload.id)
                )
            )
            stored = {r.workload_key: session.get(WorkloadRow, r.workload_key) for r in rows}
        for row in rows:
            workload = load_stored(stored[row.workload_key])
            out.append(_Workload(row, workload, self._template(workload, hw)))
        return out

    def _template(self, workload: Workload, hw: HardwareParams) -> TemplateRow:
        # In-process, unlike the API's sandboxed builds: the workload was validated and
        # built when it was stored, the scheduler already holds its PrimFunc, and a job
        # thread serves no requests that a slow build could hold up.
        build = in_process(workload)
        try:
            with session_scope(self.factory) as session:
                return template_row(session, workload.key, hw, build)
        except IntegrityError:  # another job stored it at the same moment
            with session_scope(self.factory) as session:
                return template_row(session, workload.key, hw, build)

    def _own_done(self, workload_key: str) -> int:
        with session_scope(self.factory) as session:
            return session.scalar(
                select(func.count()).where(
                    Trial.job_id == self.job_id,
                    Trial.workload_key == workload_key,
                    Trial.state == TrialState.DONE,
                )
            )

    def _known(self, workload_key: str, target: str, config: Config) -> MeasureResult | None:
        """A recorded result of ``config`` from any job (configs are measured once), unless
        another job's failure was the environment's."""
        with session_scope(self.factory) as session:
            row = _recorded_trial(session, workload_key, target, config)
            # Another job's environment failure (a timeout under load, a full disk) says
            # nothing of the config: measure it again.
            if row is None or not (row.job_id == self.job_id or is_final(row)):
                return None
            return trial_result(row)

    def _measure_static(
        self,
        workloads: list[_Workload],
        measurer: DispatchMeasurer,
        hw: HardwareParams,
        target: str,
    ) -> None:
        """The static config of each workload first: the "speedup over static" baseline."""
        todo: list[tuple[_Workload, MeasureInput]] = []
        latencies: dict[int, float | None] = {}
        for w in workloads:
            if w.row.static_latency is not None:
                continue
            config = Config.from_json(w.template.static_config)
            known = self._known(w.workload.key, target, config)
            if known is not None:
                latencies[w.row.id] = _ok_latency(known)
            else:
                doc = MeasureInput(w.workload.to_json(), config.to_json(), hw.to_json())
                todo.append((w, doc))
        if todo:
            results = measurer.measure([inp for _, inp in todo])
            self._stop_if_asked()  # results of a stopped wait are no measurements
            for (w, _), result in zip(todo, results, strict=True):
                latencies[w.row.id] = _ok_latency(result)
        with session_scope(self.factory) as session:
            for row_id, latency in latencies.items():
                if latency is not None:
                    session.execute(
                        update(JobWorkload)
                        .where(JobWorkload.id == row_id)
                        .values(static_latency=latency)
                        .execution_options(synchronize_session=False)
                    )

    def _finish_in_flight(self, measurer: DispatchMeasurer, hw: HardwareParams) -> None:
        """Trials an interrupted run left queued or running: wait for them (resend if
        needed) so the search sees them as records and the budget stays exact."""
        with session_scope(self.factory) as session:
            pending = list(
                session.scalars(
                    select(Trial)
                    .where(
                        Trial.job_id == self.job_id,
                        Trial.state.in_(IN_FLIGHT_TRIAL_STATES),
                    )
                    .order_by(Trial.id)
                )
            )
            inputs = measure_inputs(session, pending, hw.to_json())
        if pending:
            log.info("job %d: resuming, %d trials still in flight", self.job_id, len(pending))
            measurer.measure(inputs)
            self._stop_if_asked()

    def _tune(
        self, job: Job, workloads: list[_Workload], measurer: DispatchMeasurer, hw: HardwareParams
    ) -> None:
        from autosched.tune.tune import TuningTask  # the engine's imports, on first use

        self._finish_in_flight(measurer, hw)
        budget = job.trials_per_workload
        tasks = [
            TuningTask(
                w.workload,
                hw=hw,
                strategy=job.strategy,  # type: ignore[arg-type]
                database=SQLDatabase(self.factory, self.job_id),
                measurer=measurer,
                seed=job.seed,
                should_stop=self.should_stop,
            )
            for w in workloads
        ]
        try:
            progressed = True
            while progressed:  # round-robin: one batch per workload per round
                progressed = False
                for task in tasks:
                    left = budget - self._own_done(task.workload.key)
                    if left <= 0 or task.exhausted:
                        continue
                    self._stop_if_asked()
                    progressed |= task.step(min(self.settings.batch_size, left)) > 0
            self._stop_if_asked()  # a stopped step measured nothing: not the end of the search
            self._remeasure_best(tasks, workloads, measurer)
        finally:
            for task in tasks:
                task.close()

    def _remeasure_best(
        self, tasks: list[TuningTask], workloads: list[_Workload], measurer: DispatchMeasurer
    ) -> None:
        """Time each workload's fastest few trials and its static config again before the
        job ends, by the tuning task's own path (``remeasure_best``, as ``tune()``): a single
        timing caught in a slow spell would otherwise decide which config is published. The
        workers record the timings on the trials; the baseline may have got faster too."""
        remeasurer = RecordedRemeasurer(measurer)
        for task in tasks:
            task.remeasure_best(REMEASURE_TOP, measurer=remeasurer)
            self._stop_if_asked()
        with session_scope(self.factory) as session:
            for w in workloads:
                static_config = Config.from_json(w.template.static_config)
                row = _recorded_trial(
                    session, w.workload.key, measurer.target_key, static_config, verified=True
                )
                if row is not None:
                    session.execute(
                        update(JobWorkload)
                        .where(JobWorkload.id == w.row.id)
                        .values(static_latency=row.latency)
                        .execution_options(synchronize_session=False)
                    )

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
        workloads = self._workloads(hw)
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
        self._measure_static(workloads, measurer, hw, target)
        if job.strategy != "static":
            self._tune(job, workloads, measurer, hw)


class Leave(Enum):
    """A run that does not end its job: ``ENDED`` elsewhere (cancelled while queued),
    ``LOST`` its lease to another scheduler, or to ``RELEASE`` for the next one."""

    ENDED = "ended"
    LOST = "lost"
    RELEASE = "release"


Outcome = Leave | tuple[JobState, str | None]


def _recorded_trial(
    session: Session, workload_key: str, target: str, config: Config, *, verified: bool = False
) -> Trial | None:
    """The first finished (with ``verified``: ok) trial of ``config`` on ``target``, from
    any job."""
    query = select(Trial).where(
        Trial.workload_key == workload_key,
        Trial.target_key == target,
        Trial.config_digest == config_digest(config),
        Trial.state == TrialState.DONE,
    )
    if verified:
        query = query.where(Trial.status == TrialStatus.OK, Trial.latency.is_not(None))
    return session.scalars(query.order_by(Trial.id).limit(1)).first()


def _ok_latency(result: MeasureResult) -> float | None:
    return result.latency if result.status == TrialStatus.OK and isfinite(result.latency) else None


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
