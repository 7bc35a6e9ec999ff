"""Scheduler side of measuring: a ``Measurer`` whose measurements happen on the device farm.

``DispatchMeasurer.measure`` writes one trial row per candidate (or finds the job's row for
that config from an earlier, interrupted run), sends the ids to the device's queue *by task
name* (the scheduler never imports worker code), and waits on the database until every
trial is done; a batch is split between the device's online workers, each building its
share in parallel. The database is the source of truth, the broker only a doorbell: trials
that went back to the queue (their worker was reaped) or sat there too long are sent
again, which is safe because workers claim trials conditionally.

Broker loss is recovered from the database too. A trial still ``queued`` (no worker claimed
it) ``unclaimed_resend_s`` after it was sent, while its device's queue is empty, lost its
message (a broker restarted without its data): it is sent again. A non-empty queue may
still hold the message (workers busy), so that wait is the long ``redispatch_s``; a claimed
trial is its worker's, reaped only when the worker stops heartbeating (a trial whose worker
died is sent alone from then on: ``isolate``; the reaper quarantines one that killed
``max_trial_attempts`` workers). A publish that fails
(the broker down past Celery's publish retries) leaves the trials queued and is tried again
after ``SEND_BACKOFF_S``: an outage delays a job, it never fails it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Trial, Worker, database_time, db_now, utcnow
from autosched.db.session import session_scope
from autosched.db.upsert import insert_for
from autosched.logs import log_context
from autosched.service.device_gate import DeviceGate, Rank
from autosched.service.device_tasks import MEASURE_TASK, REMEASURE_TASK, device_queue, isolate
from autosched.service.job_state import StopReason
from autosched.service.sql_database import TRIAL_IDENTITY, trial_result
from autosched.space import Config
from autosched.tune.measure import Measurer
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus, config_digest
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, TrialState, WorkerState
from autosched.wire import Workload

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "trial cancelled before a worker measured it"
#: The result of a trial the measurer stopped waiting for (its caller checks ``should_stop``
#: and discards the batch; the trial stays in the database and a resumed run finishes it).
STOPPED_MESSAGE = "not measured: the job is stopping"
#: What a publish raises when the broker cannot take it (after Celery's publish retries;
#: kombu re-raises the transport's connection errors as its own).
BROKER_ERRORS = (BrokerOperationalError, ChannelError)
#: After a failed publish, the next try waits this long (the publish itself retried ~50 s).
SEND_BACKOFF_S = 5.0


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class DispatchMeasurer(Measurer):
    """Measures on the workers of one device key, as trials of one job."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        celery_app: Any,
        job_id: int,
        device_key: str,
        target_key: str,
        *,
        workloads: Iterable[Workload] = (),
        redispatch_s: float = 600.0,
        unclaimed_resend_s: float = 60.0,
        poll_s: float = 0.25,
        gate: DeviceGate | None = None,
        rank: Rank | None = None,
        should_stop: Callable[[], StopReason | None] = lambda: None,
        queue_depth: Callable[[str], int | None] | None = None,
    ) -> None:
        self.factory = factory
        self.app = celery_app
        self.job_id = job_id
        self.device_key = device_key
        self.target_key = target_key
        self.redispatch_s = redispatch_s
        self.unclaimed_resend_s = min(unclaimed_resend_s, redispatch_s)
        # A worker claims what it takes within milliseconds: sent longer ago than this and
        # unclaimed while the queue is empty, a trial's message is gone.
        self._settle_s = min(2.0, self.unclaimed_resend_s / 2)
        self.poll_s = poll_s
        self.gate = gate or DeviceGate(limit=1)
        self.rank: Rank = rank or (0, 0.0, job_id)
        self.should_stop = should_stop
        self._keys = {_canonical(w.to_json()): w.key for w in workloads}
        self._sent: set[int] = set()  # trials this instance sent (a resumed job resends)
        if queue_depth is None:
            from autosched.service.celery_app import queue_depth as broker_depth

            queue_depth = lambda name: broker_depth(celery_app, name)  # noqa: E731
        self.queue_depth = queue_depth
        self._send_after = 0.0  # monotonic time before which a failed publish is not retried
        self._next_probe = 0.0  # monotonic time of the next queue-depth probe

    # ---- trial rows -------------------------------------------------------------------
    def _workload_key(self, doc: dict[str, Any]) -> str:
        text = _canonical(doc)
        if text not in self._keys:
            self._keys[text] = Workload.from_json(doc).key
        return self._keys[text]

    def ensure_trials(self, inputs: Sequence[MeasureInput]) -> list[int]:
        """The job's trial ids for ``inputs``, in order; rows are created for new configs and
        reused for configs this job already has (so a resumed job measures nothing twice)."""
        wanted = []
        for inp in inputs:
            config = Config.from_json(inp.config)
            wanted.append((self._workload_key(inp.workload), config_digest(config), config))
        now = utcnow()
        with session_scope(self.factory) as session:
            rows = [
                {
                    "job_id": self.job_id,
                    "workload_key": key,
                    "target_key": self.target_key,
                    "device_key": self.device_key,
                    "config_digest": digest,
                    "config": config.to_json(),
                    "state": TrialState.QUEUED,
                    "dispatch_count": 0,
                    "created_at": now,
                }
                for key, digest, config in wanted
            ]
            session.execute(
                insert_for(session, Trial)
                .values(rows)
                .on_conflict_do_nothing(index_elements=TRIAL_IDENTITY)
            )
            ids = {
                (key, digest): trial_id
                for trial_id, key, digest in session.execute(
                    select(Trial.id, Trial.workload_key, Trial.config_digest).where(
                        Trial.job_id == self.job_id,
                        Trial.config_digest.in_(sorted({d for _, d, _ in wanted})),
                    )
                )
            }
        return [ids[(key, digest)] for key, digest, _ in wanted]

    # ---- sending and waiting ----------------------------------------------------------
    def _stopping(self) -> bool:
        """Whether the job should stop waiting (cancelled, the scheduler stopping, the lease
        lost): a checked condition; the caller sees it through ``should_stop`` too."""
        return self.should_stop() is not None

    def _send(self, trial_ids: list[int]) -> bool:
        """One task per online worker of the device (each builds its share in parallel);
        False if the broker refused a publish (those trials are sent again later)."""
        with session_scope(self.factory) as session:
            workers = session.scalar(
                select(func.count()).where(
                    Worker.device_key == self.device_key,
                    Worker.state == WorkerState.ONLINE,
                    Worker.quarantine_reason.is_(None),  # it stopped consuming
                )
            )
        chunks = max(1, min(len(trial_ids), workers or 1))
        for i in range(chunks):
            chunk = trial_ids[i::chunks]
            # Counted before the publish (a worker may claim at once), taken back if it fails.
            with session_scope(self.factory) as session:
                counted = session.scalars(
                    update(Trial)
                    .where(Trial.id.in_(chunk), Trial.state == TrialState.QUEUED)
                    .values(dispatched_at=db_now(), dispatch_count=Trial.dispatch_count + 1)
                    .returning(Trial.id)
                    .execution_options(synchronize_session=False)
                ).all()
            try:
                self.app.send_task(MEASURE_TASK, args=[chunk], queue=device_queue(self.device_key))
            except BROKER_ERRORS as err:
                self._uncount(counted)
                self._send_failed([t for j in range(i, chunks) for t in trial_ids[j::chunks]], err)
                return False
            self._sent.update(chunk)
        log.info(
            "job %d: dispatched trials %s to %s (%d tasks)",
            self.job_id,
            trial_ids,
            device_queue(self.device_key),
            chunks,
        )
        return True

    def _uncount(self, trial_ids: Sequence[int]) -> None:
        if not trial_ids:
            return
        with session_scope(self.factory) as session:
            session.execute(
                update(Trial)
                .where(Trial.id.in_(list(trial_ids)))
                .values(dispatch_count=Trial.dispatch_count - 1)
                .execution_options(synchronize_session=False)
            )

    def _send_failed(self, trial_ids: Iterable[int], err: BaseException) -> None:
        self._sent.difference_update(trial_ids)
        self._send_after = time.monotonic() + SEND_BACKOFF_S
        log.warning(
            "job %d: broker refused a publish to %s (%s: %s); sending again in %.0f s",
            self.job_id,
            device_queue(self.device_key),
            type(err).__name__,
            err,
            SEND_BACKOFF_S,
        )

    def _queue_empty(self) -> bool:
        """Whether the device's queue holds no message now (False if the broker cannot
        tell); probed at most every few seconds."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + min(5.0, self.unclaimed_resend_s / 4)
        return self.queue_depth(device_queue(self.device_key)) == 0

    def wait(self, trial_ids: list[int]) -> dict[int, Trial]:
        """Send what needs sending and poll until every trial is done or cancelled, or the
        job is stopping (then those finished so far)."""
        finished = (TrialState.DONE, TrialState.CANCELLED)
        while True:
            if self._stopping():
                with session_scope(self.factory) as session:
                    query = select(Trial).where(Trial.id.in_(trial_ids), Trial.state.in_(finished))
                    return {t.id: t for t in session.scalars(query)}
            with session_scope(self.factory) as session:
                # Overdue by the database's clock, which wrote dispatched_at.
                overdue = Trial.dispatched_at < db_now(-self.redispatch_s)
                unclaimed = Trial.dispatched_at < db_now(-self.unclaimed_resend_s)
                settled = Trial.dispatched_at < db_now(-self._settle_s)
                rows = session.execute(
                    select(Trial, overdue, unclaimed, settled).where(Trial.id.in_(trial_ids))
                ).all()
            trials = {row[0].id: row[0] for row in rows}
            if all(t.state in finished for t in trials.values()):
                return trials
            queued = [row for row in rows if row[0].state == TrialState.QUEUED]
            resend = [
                t.id
                for t, stale, _, _ in queued
                if t.id not in self._sent or t.dispatched_at is None or stale
            ]
            resend += self._lost([row for row in queued if row[0].id not in resend])
            if resend and time.monotonic() >= self._send_after:
                suspects = {t.id for t, *_ in queued if t.workers_lost}
                for group in isolate(sorted(resend), suspects):
                    if not self._send(group):
                        break
            time.sleep(self.poll_s)

    def _lost(self, queued: Sequence[Any]) -> list[int]:
        """Of ``queued`` (rows: trial, overdue, unclaimed, settled), the trials whose message
        is gone: one of them sat unclaimed for ``unclaimed_resend_s`` and the device's queue
        is empty. Then no message of ours waits there, so every trial sent more than a
        moment ago (a worker claims what it takes at once) lost its message too."""
        if not any(quiet for _, _, quiet, _ in queued) or not self._queue_empty():
            return []
        lost = [t.id for t, _, _, settled in queued if settled]
        log.warning(
            "job %d: trials %s still unclaimed (some for over %.0f s) and %s is empty: "
            "their message was lost (broker restarted?); sending again",
            self.job_id,
            lost,
            self.unclaimed_resend_s,
            device_queue(self.device_key),
        )
        return lost

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        if not inputs:
            return []
        if self._stopping():
            return [_stopped() for _ in inputs]
        trial_ids = self.ensure_trials(inputs)
        with session_scope(self.factory) as session:
            pending = session.scalar(
                select(Trial.id).where(
                    Trial.id.in_(trial_ids),
                    Trial.state.in_(IN_FLIGHT_TRIAL_STATES),
                )
            )
        with log_context(trial_ids=trial_ids):
            if pending is None:  # all recorded before (a resumed job): nothing to send
                trials = self.wait(trial_ids)
            else:
                with self.gate.slot(self.device_key, self.rank, self._stopping) as granted:
                    trials = self.wait(trial_ids) if granted else {}
            results = [_result(trials[i]) if i in trials else _stopped() for i in trial_ids]
            if pending is not None:
                log.info("job %d: batch measured: %s", self.job_id, status_counts(results))
        return results

    def remeasure(self, trial_ids: list[int], rounds: int = 2) -> bool:
        """Have a worker time these finished trials again (each keeps its lowest latency)
        and wait for it; False if no worker did within the re-dispatch time (the recorded
        timings then stand).

        A re-measurement has no claim to watch, so one not done ``unclaimed_resend_s``
        after it was sent while the queue is empty is sent again (its message may be lost
        with the broker), waiting twice as long before each further resend. The task
        carries the time of the first send and a worker writes only trials not re-measured
        since, so a duplicate records nothing twice."""
        if not trial_ids:
            return True
        if self._stopping():
            return False
        with (
            log_context(trial_ids=trial_ids),
            self.gate.slot(self.device_key, self.rank, self._stopping) as granted,
        ):
            if not granted:
                return False
            with session_scope(self.factory) as session:
                sent = database_time(session)  # the workers stamp remeasured_at with db_now()
            deadline = time.monotonic() + self.redispatch_s
            resend_s = self.unclaimed_resend_s
            last_sent: float | None = None
            while time.monotonic() < deadline:
                now = time.monotonic()
                if last_sent is None and now >= self._send_after:
                    if self._send_remeasure(trial_ids, rounds, sent):
                        last_sent = now
                elif last_sent is not None and now - last_sent >= resend_s and self._queue_empty():
                    log.warning(
                        "job %d: re-measurement of %s not done %.0f s after sending and %s "
                        "is empty; sending again",
                        self.job_id,
                        trial_ids,
                        now - last_sent,
                        device_queue(self.device_key),
                    )
                    if self._send_remeasure(trial_ids, rounds, sent):
                        last_sent, resend_s = now, 2 * resend_s
                if self._stopping():
                    return False
                with session_scope(self.factory) as session:
                    waiting = session.scalar(
                        select(func.count()).where(
                            Trial.id.in_(trial_ids),
                            Trial.state == TrialState.DONE,
                            Trial.status == TrialStatus.OK,
                            or_(Trial.remeasured_at.is_(None), Trial.remeasured_at < sent),
                        )
                    )
                if not waiting:
                    log.info("job %d: re-measured trials %s", self.job_id, trial_ids)
                    return True
                time.sleep(self.poll_s)
        log.warning("job %d: no worker re-measured %s in time", self.job_id, trial_ids)
        return False

    def _send_remeasure(self, trial_ids: list[int], rounds: int, since: datetime) -> bool:
        try:
            self.app.send_task(
                REMEASURE_TASK,
                args=[trial_ids, rounds, since.isoformat()],
                queue=device_queue(self.device_key),
            )
        except BROKER_ERRORS as err:
            self._send_failed((), err)
            return False
        return True


def status_counts(results: Iterable[MeasureResult]) -> str:
    """``ok=6 build_error=2``: a batch's statuses, for its log line."""
    counts = Counter(str(r.status) for r in results)
    return " ".join(f"{status}={n}" for status, n in sorted(counts.items())) or "empty"


def _stopped() -> MeasureResult:
    return MeasureResult(TrialStatus.RUN_ERROR, math.inf, STOPPED_MESSAGE)


def _result(trial: Trial) -> MeasureResult:
    if trial.state == TrialState.CANCELLED:
        return MeasureResult(TrialStatus.RUN_ERROR, math.inf, CANCELLED_MESSAGE)
    return trial_result(trial)
