"""Worker side of a measure batch: claim trials, measure them, record each result once.

Every write is conditional, which is what makes a redelivered or duplicated task harmless:
a trial is claimed only while ``queued`` (done, cancelled or claimed trials are skipped) and
its result is stored only while it is still ``running`` by this worker (a worker that was
reaped offline meanwhile has lost it to the queue). A failure that is the environment's
fault (``MeasureResult.final`` is false: a timeout under load, a full disk, a reference
that could not be computed) is not a result: the trial goes back to the queue with the
reason, up to ``max_trial_attempts``, and counts toward this worker's streak of
failures that blame the machine, which quarantines it at ``worker_quarantine_after``.
Verified results are then offered as their workload's best config (``best_configs``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, Worker, WorkloadRow, db_now
from autosched.db.session import session_scope
from autosched.logs import log_context
from autosched.service.best_configs import offer_fastest
from autosched.service.dispatch import status_counts
from autosched.service.job_state import retrying
from autosched.service.sql_database import result_values
from autosched.settings import Settings, get_settings
from autosched.tune.measure import Measurer
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus
from autosched.vocabulary import TrialState

T = TypeVar("T")
log = logging.getLogger(__name__)


def claim_trials(session: Session, trial_ids: Sequence[int], worker_id: str) -> list[int]:
    """Mark the still-queued trials of ``trial_ids`` as running by ``worker_id``.

    Trials of a job whose cancellation was requested are left alone. On PostgreSQL a
    concurrent claim of the same row waits for the first and then finds it no longer queued.
    """
    if not trial_ids:
        return []
    cancelled_jobs = select(Job.id).where(Job.cancel_requested.is_(True))
    claimed = session.scalars(
        update(Trial)
        .where(
            Trial.id.in_(list(trial_ids)),
            Trial.state == TrialState.QUEUED,
            Trial.job_id.not_in(cancelled_jobs),
        )
        .values(state=TrialState.RUNNING, worker_id=worker_id)
        .returning(Trial.id)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(claimed)


def _claimed_by(trial_id: int, worker_id: str) -> ColumnElement[bool]:
    """The trial is still running on ``worker_id``: not reaped and sent elsewhere meanwhile.
    Every write of a worker's outcome is conditional on it."""
    return and_(
        Trial.id == trial_id, Trial.state == TrialState.RUNNING, Trial.worker_id == worker_id
    )


def record_result(session: Session, trial_id: int, worker_id: str, result: MeasureResult) -> bool:
    """Store ``result`` if the trial is still running by ``worker_id``; whether it was."""
    stored = session.execute(
        update(Trial)
        .where(_claimed_by(trial_id, worker_id))
        .values(**result_values(result))
        .execution_options(synchronize_session=False)
    )
    return stored.rowcount == 1


@dataclass(frozen=True)
class FailurePolicy:
    """How environment failures are handled (``Settings.max_trial_attempts``,
    ``worker_quarantine_after``); ``on_quarantine`` lets the worker process stop consuming
    its queue once it is quarantined."""

    max_attempts: int = 3
    quarantine_after: int = 5
    on_quarantine: Callable[[], None] | None = None
    write_retry_s: float = 120.0

    @classmethod
    def from_settings(
        cls, settings: Settings, on_quarantine: Callable[[], None] | None = None
    ) -> FailurePolicy:
        return cls(
            settings.max_trial_attempts,
            settings.worker_quarantine_after,
            on_quarantine,
            settings.worker_write_retry_s,
        )


def measure_trials(
    factory: sessionmaker[Session],
    trial_ids: Sequence[int],
    worker_id: str,
    measurer: Measurer,
    policy: FailurePolicy | None = None,
) -> int:
    """Claim, measure and record ``trial_ids`` on this worker; returns how many results were
    stored (0 for a batch that was already measured). A result that is the environment's
    fault is not stored but handed back to the queue, up to ``policy.max_attempts``. Lines
    logged meanwhile carry the batch's ``trial_ids`` and, for a batch of one job (what the
    scheduler sends), its ``job_id``."""
    policy = policy or FailurePolicy.from_settings(get_settings())
    with batch_log_context(factory, trial_ids):
        return _measure_trials(factory, trial_ids, worker_id, measurer, policy)


@contextmanager
def batch_log_context(factory: sessionmaker[Session], trial_ids: Sequence[int]) -> Iterator[None]:
    """Tag the lines logged while a worker handles a batch with its ``trial_ids`` and, for a
    batch of one job (what the scheduler sends), its ``job_id``."""
    with log_context(trial_ids=trial_ids):
        with session_scope(factory) as session:
            jobs = session.scalars(
                select(Trial.job_id).where(Trial.id.in_(list(trial_ids))).distinct()
            ).all()
        with log_context(job_id=jobs[0] if len(jobs) == 1 else None):
            yield


def measure_inputs(
    session: Session, trials: Sequence[Trial], hardware: dict[str, Any]
) -> list[MeasureInput]:
    """The measure inputs of stored trials (their workloads' wire documents read once)."""
    keys = {t.workload_key for t in trials}
    wires = dict(
        session.execute(
            select(WorkloadRow.key, WorkloadRow.wire).where(WorkloadRow.key.in_(keys))
        ).all()
    )
    return [MeasureInput(wires[t.workload_key], t.config, hardware) for t in trials]


def worker_hardware(session: Session, worker_id: str) -> tuple[dict[str, Any], str] | None:
    """The registered worker's hardware document and device key (None: not registered)."""
    worker = session.get(Worker, worker_id)
    return None if worker is None else (dict(worker.hardware), worker.device_key)


def _measure_trials(
    factory: sessionmaker[Session],
    trial_ids: Sequence[int],
    worker_id: str,
    measurer: Measurer,
    policy: FailurePolicy,
) -> int:
    with session_scope(factory) as session:
        registered = worker_hardware(session, worker_id)
        if registered is None:
            # Nothing claimed: the trials stay queued for a registered worker.
            log.error("worker %s is not registered; skipping trials %s", worker_id, trial_ids)
            return 0
        quarantine = session.scalar(select(Worker.quarantine_reason).where(Worker.id == worker_id))
        if quarantine is not None:
            refuse_batch(session, trial_ids)
        else:
            hardware, device_key = registered
            claimed = claim_trials(session, trial_ids, worker_id)
    if quarantine is not None:
        log.warning(
            "worker %s is quarantined (%s); trials %s refused", worker_id, quarantine, trial_ids
        )
        if policy.on_quarantine is not None:
            policy.on_quarantine()
        return 0
    if not claimed:
        log.info("trials %s already claimed or finished; nothing to measure", list(trial_ids))
        return 0

    try:
        stored, quarantine = _measure_claimed(
            factory, claimed, worker_id, measurer, hardware, device_key, policy
        )
    except BaseException:
        # Unexpected (the database went away, the worker is shutting down): hand what is
        # still ours back to the queue rather than leave it claimed by a live worker. Tried
        # once: if the database is still down, the reaper (a worker that exits) or
        # ``trial_redispatch_s`` (one that lives) hands the trials back.
        with session_scope(factory) as session:
            release_claims(session, claimed, worker_id)
        raise
    if quarantine is not None and policy.on_quarantine is not None:
        policy.on_quarantine()
    return stored


def refuse_batch(session: Session, trial_ids: Sequence[int]) -> None:
    """A quarantined worker's answer to a batch: its still-queued trials are marked unsent,
    so the scheduler sends them again at once (to the workers still consuming)."""
    session.execute(
        update(Trial)
        .where(Trial.id.in_(list(trial_ids)), Trial.state == TrialState.QUEUED)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )


def release_claims(session: Session, trial_ids: Sequence[int], worker_id: str) -> int:
    """Put ``worker_id``'s unfinished claims among ``trial_ids`` back in the queue."""
    released = session.execute(
        update(Trial)
        .where(
            Trial.id.in_(list(trial_ids)),
            Trial.state == TrialState.RUNNING,
            Trial.worker_id == worker_id,
        )
        .values(state=TrialState.QUEUED, worker_id=None, dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    return released.rowcount or 0


def hand_back(
    session: Session, trial_id: int, worker_id: str, result: MeasureResult, max_attempts: int
) -> bool:
    """Put a trial whose measurement failed for environment reasons back in the queue,
    counting the attempt and keeping the reason, while it has attempts left and is still
    this worker's; whether it went back."""
    back = session.execute(
        update(Trial)
        .where(_claimed_by(trial_id, worker_id), Trial.attempts + 1 < max_attempts)
        .values(
            state=TrialState.QUEUED,
            worker_id=None,
            dispatched_at=None,
            attempts=Trial.attempts + 1,
            last_error=_reason(result, worker_id),
        )
        .execution_options(synchronize_session=False)
    )
    return back.rowcount == 1


def _reason(result: MeasureResult, worker_id: str) -> str:
    return f"{result.status} on worker {worker_id}: {result.error or 'no message'}"


def settle(
    session: Session, trial_id: int, worker_id: str, result: MeasureResult, max_attempts: int
) -> TrialOutcome:
    """Record ``result`` (final: a success or the kernel's fault), or hand the trial back
    for another attempt (the environment's fault), or — its attempts spent — record the
    environment failure with how many attempts it had."""
    if result.final:
        return (
            TrialOutcome.RECORDED
            if record_result(session, trial_id, worker_id, result)
            else (TrialOutcome.LOST)
        )
    if hand_back(session, trial_id, worker_id, result, max_attempts):
        return TrialOutcome.HANDED_BACK
    spent = replace(
        result, error=f"failed {max_attempts} times for environment reasons; last: {result.error}"
    )
    stored = session.execute(
        update(Trial)
        .where(_claimed_by(trial_id, worker_id))
        .values(
            **result_values(spent),
            attempts=Trial.attempts + 1,
            last_error=_reason(result, worker_id),
        )
        .execution_options(synchronize_session=False)
    )
    return TrialOutcome.RECORDED if stored.rowcount == 1 else TrialOutcome.LOST


class TrialOutcome(StrEnum):
    RECORDED = "recorded"  # done: its result stored
    HANDED_BACK = "handed_back"  # back in the queue for another attempt
    LOST = "lost"  # no longer this worker's (reaped meanwhile): nothing stored


def update_streak(
    session: Session, worker_id: str, results: Sequence[MeasureResult], quarantine_after: int
) -> str | None:
    """Count this batch's trailing failures that blame the machine (a full disk, no memory,
    a broken measurer) into the worker's streak (any other outcome resets it) and quarantine
    the worker at ``quarantine_after``; the reason when it is (newly or already)
    quarantined."""
    trailing = 0
    for result in reversed(results):
        if not result.blames_worker:
            break
        trailing += 1
    worker = session.get(Worker, worker_id, with_for_update=True)
    if worker is None:
        return None
    worker.env_failure_streak = (
        worker.env_failure_streak + trailing if trailing == len(results) else trailing
    )
    if worker.quarantine_reason is None and worker.env_failure_streak >= quarantine_after:
        worker.quarantine_reason = (
            f"{worker.env_failure_streak} trials in a row failed for environment reasons; "
            f"last: {results[-1].status}: {results[-1].error}"
        )
        worker.quarantined_at = db_now()
        log.error("worker %s quarantined: %s", worker_id, worker.quarantine_reason)
    return worker.quarantine_reason


def _measure_claimed(
    factory: sessionmaker[Session],
    claimed: list[int],
    worker_id: str,
    measurer: Measurer,
    hardware: dict,
    device_key: str,
    policy: FailurePolicy,
) -> tuple[int, str | None]:
    with session_scope(factory) as session:
        trials = list(session.scalars(select(Trial).where(Trial.id.in_(claimed))))
        trials.sort(key=lambda t: claimed.index(t.id))
        inputs = measure_inputs(session, trials, hardware)
    start = time.monotonic()
    try:
        results = measurer.measure(inputs)
        if len(results) != len(inputs):
            raise RuntimeError(f"{len(results)} results for {len(inputs)} inputs")
    except Exception as err:  # a measurer reports failures as results: this worker broke
        log.exception("measurer failed on trials %s", claimed)
        message = f"measurement failed on worker {worker_id}: {type(err).__name__}: {err}"
        results = [MeasureResult(TrialStatus.ENV_ERROR, math.inf, message) for _ in trials]

    def record() -> tuple[list[tuple[Trial, MeasureResult]], int, str | None]:
        stored: list[tuple[Trial, MeasureResult]] = []
        handed_back = 0
        with session_scope(factory) as session:
            for trial, result in zip(trials, results, strict=True):
                outcome = settle(session, trial.id, worker_id, result, policy.max_attempts)
                if outcome == TrialOutcome.RECORDED:
                    stored.append((trial, result))
                handed_back += outcome == TrialOutcome.HANDED_BACK
            quarantine = update_streak(session, worker_id, results, policy.quarantine_after)
        return stored, handed_back, quarantine

    # The results cost a whole batch of builds and runs: a database restart while they are
    # stored must not throw them away (the trials would stay claimed by this live worker
    # until ``trial_redispatch_s``). One transaction of conditional updates, so a retry
    # after a rollback stores each result once.
    stored, handed_back, quarantine = _through_outages(policy, record)
    log.info(
        "measured %d trials in %.1f s: %s; recorded %d of %d claimed, %d handed back",
        len(results),
        time.monotonic() - start,
        status_counts(results),
        len(stored),
        len(claimed),
        handed_back,
    )

    verified = [
        (trial, result.latency)
        for trial, result in stored
        if result.status == TrialStatus.OK and math.isfinite(result.latency)
    ]
    _through_outages(
        policy, lambda: offer_fastest(factory, verified, hardware, worker_id, device_key)
    )
    return len(stored), quarantine


def _through_outages(policy: FailurePolicy, write: Callable[[], T]) -> T:
    """``write()``, tried again on transient database errors for ``policy.write_retry_s``."""
    for attempt in retrying(policy.write_retry_s):
        with attempt:
            return write()
    raise AssertionError("unreachable: retrying reraises the last error")
