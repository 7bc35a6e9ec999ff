"""A job's measuring phases on its device, once the runner holds the job and knows the
hardware: each workload's template, the static baseline, the search and the final
re-measurement of the fastest few configs.

The budget counts this job's own done trials per workload; each workload's static config is
measured first (it counts too, unless an earlier job already measured it: a known config is
never measured again). Several workloads share the device round-robin, one batch each per
round, because the budget is per workload (``trials_per_workload``): the gradient task
scheduler would move trials between workloads and break that contract.

Every phase checks the runner's ``should_stop`` between steps and leaves by raising
``JobCancelled`` or ``JobInterrupted`` (``stop_if_asked``), which the runner turns into the
job's end or its release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, JobWorkload, TemplateRow, Trial, WorkloadRow
from autosched.db.session import session_scope
from autosched.errors import JobCancelled, JobInterrupted
from autosched.hardware import HardwareParams
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.job_state import StopReason
from autosched.service.measure_trials import measure_inputs
from autosched.service.remeasure import RecordedRemeasurer
from autosched.service.sql_database import SQLDatabase, is_final, trial_result
from autosched.service.workloads import in_process, load_stored, template_row
from autosched.space import Config
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus, config_digest
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, TrialState
from autosched.wire import Workload

if TYPE_CHECKING:
    from autosched.tune.tune import TuningTask

log = logging.getLogger(__name__)

# Before a job ends, its fastest few trials per workload (and the static config) are timed
# again; tune() does the same in-process.
REMEASURE_TOP = 4


def stop_if_asked(job_id: int, should_stop: Callable[[], StopReason | None]) -> None:
    """Leave the phases here when ``should_stop`` says so (the runner's own control flow:
    it turns these into the job's end or its release)."""
    reason = should_stop()
    if reason is StopReason.CANCELLED:
        raise JobCancelled(f"job {job_id} was cancelled")
    if reason is StopReason.INTERRUPTED:
        raise JobInterrupted(f"job {job_id}: scheduler stopping or lease lost")


@dataclass
class PreparedWorkload:
    """One workload of the job with its stored row and its template on the job's target."""

    row: JobWorkload
    workload: Workload
    template: TemplateRow


class JobPhases:
    """The phases of one run of one job (see ``JobRunner``)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        batch_size: int,
        should_stop: Callable[[], StopReason | None],
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.batch_size = batch_size
        self.should_stop = should_stop

    def _stop_if_asked(self) -> None:
        stop_if_asked(self.job_id, self.should_stop)

    def workloads(self, hw: HardwareParams) -> list[PreparedWorkload]:
        """The job's workloads in order, each with its template for ``hw``."""
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
            out.append(PreparedWorkload(row, workload, self._template(workload, hw)))
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

    def measure_static(
        self,
        workloads: list[PreparedWorkload],
        measurer: DispatchMeasurer,
        hw: HardwareParams,
        target: str,
    ) -> None:
        """The static config of each workload first: the "speedup over static" baseline."""
        todo: list[tuple[PreparedWorkload, MeasureInput]] = []
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

    def tune(
        self,
        job: Job,
        workloads: list[PreparedWorkload],
        measurer: DispatchMeasurer,
        hw: HardwareParams,
    ) -> None:
        """The search: finish what an earlier run left in flight, then one batch per workload
        per round until every budget is spent or space exhausted, then the re-measurement."""
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
                    progressed |= task.step(min(self.batch_size, left)) > 0
            self._stop_if_asked()  # a stopped step measured nothing: not the end of the search
            self._remeasure_best(tasks, workloads, measurer)
        finally:
            for task in tasks:
                task.close()

    def _remeasure_best(
        self, tasks: list[TuningTask], workloads: list[PreparedWorkload], measurer: DispatchMeasurer
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
