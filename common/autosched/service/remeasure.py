"""A job's final re-measurement: time its best few finished trials again.

The choice of what to re-measure and the folding of the timings are the tuning engine's
(``TuningTask.remeasure_best``, the same path as ``tune()``). The service supplies the
measurer: ``RecordedRemeasurer`` (scheduler side) turns the task's repeated inputs into one
``autosched.remeasure_trials`` request for the recorded trials, and the worker side
(``remeasure_trials``) records the new timings on those trials, which the task's database
(``SQLDatabase``) then reads.

One timing per config lets a burst of machine noise pick the winner: a strong config timed
during a slow second loses to a weaker one. Noise only ever slows a kernel down, so a trial
keeps the lowest of its timings, and the best config is offered again with it.

The scheduler re-sends a re-measurement whose message may have been lost with the broker,
so the same one can arrive twice. Each carries ``since``, the time the scheduler first
asked: a trial re-measured since then is skipped, and the write is conditional on it, so
of two copies run at once only the first records its timings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, true, update
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Trial, db_now
from autosched.db.session import session_scope
from autosched.service.best_configs import offer_fastest
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.measure_trials import batch_log_context, measure_inputs, worker_hardware
from autosched.service.sql_database import trial_result
from autosched.space import Config
from autosched.tune.measure import Measurer
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus, config_digest
from autosched.vocabulary import TrialState

log = logging.getLogger(__name__)


# ---- scheduler side -------------------------------------------------------------------
class RecordedRemeasurer(Measurer):
    """The measurer a job hands to ``TuningTask.remeasure_best``: its inputs are configs
    already recorded (each repeated once per round); they are timed again on a worker of the
    job's device as one request, recorded on their trials, and answered with each trial's
    result after it (its lowest timing). Where no worker re-measured in time, or the job is
    stopping, the recorded results stand."""

    def __init__(self, dispatch: DispatchMeasurer) -> None:
        self.dispatch = dispatch

    def _key(self, inp: MeasureInput) -> tuple[str, str]:
        # the dispatcher knows the job's workloads: no rebuild of a PrimFunc per input
        workload_key = self.dispatch._workload_key(inp.workload)
        return workload_key, config_digest(Config.from_json(inp.config))

    def _trial_ids(self, inputs: Sequence[MeasureInput]) -> dict[tuple[str, str], int]:
        """(workload key, config digest) -> the first verified trial of it on the target,
        from any job (the record ``SQLDatabase`` shows for that config)."""
        keys = {self._key(i) for i in inputs}
        ids: dict[tuple[str, str], int] = {}
        with session_scope(self.dispatch.factory) as session:
            for key, digest in sorted(keys):
                trial_id = session.scalar(
                    select(Trial.id)
                    .where(
                        Trial.workload_key == key,
                        Trial.target_key == self.dispatch.target_key,
                        Trial.config_digest == digest,
                        Trial.state == TrialState.DONE,
                        Trial.status == TrialStatus.OK,
                        Trial.latency.is_not(None),
                    )
                    .order_by(Trial.id)
                    .limit(1)
                )
                if trial_id is not None:
                    ids[(key, digest)] = trial_id
        return ids

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        keys = [self._key(i) for i in inputs]
        ids = self._trial_ids(inputs)
        unique = sorted(set(ids.values()))
        rounds = max(1, len(inputs) // max(1, len(set(keys))))
        if unique:
            self.dispatch.remeasure(unique, rounds)
        with session_scope(self.dispatch.factory) as session:
            rows = {t.id: t for t in session.scalars(select(Trial).where(Trial.id.in_(unique)))}
        unknown = MeasureResult(TrialStatus.RUN_ERROR, math.inf, "no verified trial recorded")
        return [trial_result(rows[ids[k]]) if k in ids else unknown for k in keys]


def remeasure_trials(
    factory: sessionmaker[Session],
    trial_ids: Sequence[int],
    worker_id: str,
    measurer: Measurer,
    rounds: int = 2,
    since: datetime | str | None = None,
) -> int:
    """Time the verified trials among ``trial_ids`` ``rounds`` more times (interleaved);
    returns how many got a lower latency. With ``since`` (a datetime or its ISO text),
    trials re-measured at or after it are left alone (a duplicate request)."""
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    with batch_log_context(factory, trial_ids):
        return _remeasure(factory, trial_ids, worker_id, measurer, rounds, since)


def _not_remeasured_since(since: datetime | None) -> Any:
    if since is None:
        return true()
    return or_(Trial.remeasured_at.is_(None), Trial.remeasured_at < since)


def _remeasure(
    factory: sessionmaker[Session],
    trial_ids: Sequence[int],
    worker_id: str,
    measurer: Measurer,
    rounds: int,
    since: datetime | None,
) -> int:
    with session_scope(factory) as session:
        registered = worker_hardware(session, worker_id)
        if registered is None:
            log.error("worker %s is not registered; not re-measuring %s", worker_id, trial_ids)
            return 0
        hardware, device_key = registered
        trials = list(
            session.scalars(
                select(Trial)
                .where(
                    Trial.id.in_(list(trial_ids)),
                    Trial.state == TrialState.DONE,
                    Trial.status == TrialStatus.OK,
                    Trial.latency.is_not(None),
                    _not_remeasured_since(since),
                )
                .order_by(Trial.id)
            )
        )
        inputs = measure_inputs(session, trials, hardware)
    if not trials:
        return 0
    results = measurer.measure(inputs * rounds)  # every config once per round

    lowest: dict[int, float] = {}
    timings: dict[int, list[float]] = {}
    for i, result in enumerate(results):
        trial = trials[i % len(trials)]
        if result.status == TrialStatus.OK and math.isfinite(result.latency):
            lowest[trial.id] = min(lowest.get(trial.id, math.inf), result.latency)
            timings.setdefault(trial.id, []).extend(result.latencies)
    improved: list[tuple[Trial, float]] = []
    written = 0
    with session_scope(factory) as session:
        for trial in trials:
            assert trial.latency is not None  # selected above
            latency = min(trial.latency, lowest.get(trial.id, math.inf))
            stored = session.execute(
                update(Trial)
                .where(Trial.id == trial.id, _not_remeasured_since(since))
                .values(
                    latency=latency,
                    latencies=list(trial.latencies or []) + timings.get(trial.id, []),
                    remeasured_at=db_now(),  # compared with the scheduler's database_time
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if stored != 1:  # a copy of this request finished first: its timings stand
                continue
            written += 1
            if latency < trial.latency:
                improved.append((trial, latency))
    log.info(
        "re-measured %d trials (%d rounds): %d got faster; recorded %d",
        len(trials),
        rounds,
        len(improved),
        written,
    )
    offer_fastest(factory, improved, hardware, worker_id, device_key)
    return len(improved)
