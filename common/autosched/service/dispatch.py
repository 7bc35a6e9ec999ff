"""Scheduler side of measuring: a ``Measurer`` whose measurements happen on the device farm.

``DispatchMeasurer.measure`` writes one trial row per candidate (or finds the job's row for
that config from an earlier, interrupted run), sends the ids to the device's queue *by task
name* (the scheduler never imports worker code), and waits on the database until every
trial is done; a batch is split between the device's online workers, each building its
share in parallel. The database is the source of truth, the broker only a doorbell: trials
that went back to the queue (their worker was reaped) or sat there too long are sent
again, which is safe because workers claim trials conditionally.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, Worker, utcnow
from autosched.db.session import session_scope
from autosched.db.upsert import insert_for
from autosched.errors import JobCancelled, JobInterrupted
from autosched.logs import log_context
from autosched.service.sql_database import TRIAL_IDENTITY, trial_result
from autosched.space import Config
from autosched.tune.measure import Measurer
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus, config_digest
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, TrialState, WorkerState
from autosched.wire import Workload

log = logging.getLogger(__name__)

MEASURE_TASK = "autosched.measure_trials"  # registered by workers/tasks.py
REMEASURE_TASK = "autosched.remeasure_trials"
CANCELLED_MESSAGE = "trial cancelled before a worker measured it"

#: (-priority, created_at timestamp, job id): smaller goes first.
Rank = tuple[int, float, int]


def device_queue(device_key: str) -> str:
    """The queue of one device key: a worker consumes only its own."""
    return f"device.{device_key}"


class DeviceGate:
    """At most ``limit`` measure batches in flight per device key, across this scheduler's
    jobs; a free slot goes to the waiting job of highest priority, then the oldest.

    A job holds its slot only while its batch is on the device, not while its search
    proposes the next batch, so jobs sharing a device interleave.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._waiting: dict[str, list[tuple[Rank, int]]] = defaultdict(list)
        self._tickets = itertools.count()

    def _grantable(self, key: str, entry: tuple[Rank, int]) -> bool:
        return self._in_flight[key] < self.limit and self._waiting[key][0] == entry

    @contextmanager
    def slot(
        self, device_key: str, rank: Rank, check: Callable[[], None] = lambda: None
    ) -> Iterator[None]:
        """Hold one of ``device_key``'s slots; ``check`` runs while waiting (it raises to
        give up, e.g. on cancel)."""
        entry = (rank, next(self._tickets))
        with self._cond:
            heapq.heappush(self._waiting[device_key], entry)
        try:
            while True:
                with self._cond:
                    if self._grantable(device_key, entry):
                        heapq.heappop(self._waiting[device_key])
                        self._in_flight[device_key] += 1
                        self._cond.notify_all()
                        break
                    self._cond.wait(timeout=0.5)
                check()  # outside the lock: it may query the database
        except BaseException:
            with self._cond:
                self._waiting[device_key].remove(entry)
                heapq.heapify(self._waiting[device_key])
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._in_flight[device_key] -= 1
                self._cond.notify_all()


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
        poll_s: float = 0.25,
        gate: DeviceGate | None = None,
        rank: Rank | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.factory = factory
        self.app = celery_app
        self.job_id = job_id
        self.device_key = device_key
        self.target_key = target_key
        self.redispatch_s = redispatch_s
        self.poll_s = poll_s
        self.gate = gate or DeviceGate(limit=1)
        self.rank: Rank = rank or (0, 0.0, job_id)
        self.interrupted = interrupted
        self._keys = {_canonical(w.to_json()): w.key for w in workloads}
        self._sent: set[int] = set()  # trials this instance sent (a resumed job resends)

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
    def _check(self, session: Session | None = None) -> None:
        """Raise when the job should stop waiting: cancelled, or the scheduler stopping."""
        if self.interrupted():
            raise JobInterrupted(f"job {self.job_id}: scheduler stopping or lease lost")
        if session is None:
            with session_scope(self.factory) as own:
                cancel = own.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        else:
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if cancel:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def _send(self, trial_ids: list[int]) -> None:
        """One task per online worker of the device (each builds its share in parallel)."""
        with session_scope(self.factory) as session:
            session.execute(
                update(Trial)
                .where(Trial.id.in_(trial_ids), Trial.state == TrialState.QUEUED)
                .values(dispatched_at=utcnow(), dispatch_count=Trial.dispatch_count + 1)
                .execution_options(synchronize_session=False)
            )
            workers = session.scalar(
                select(func.count()).where(
                    Worker.device_key == self.device_key, Worker.state == WorkerState.ONLINE
                )
            )
        chunks = max(1, min(len(trial_ids), workers or 1))
        for i in range(chunks):
            chunk = trial_ids[i::chunks]
            self.app.send_task(MEASURE_TASK, args=[chunk], queue=device_queue(self.device_key))
        self._sent.update(trial_ids)
        log.info(
            "job %d: dispatched trials %s to %s (%d tasks)",
            self.job_id,
            trial_ids,
            device_queue(self.device_key),
            chunks,
        )

    def wait(self, trial_ids: list[int]) -> dict[int, Trial]:
        """Send what needs sending and poll until every trial is done or cancelled."""
        while True:
            with session_scope(self.factory) as session:
                self._check(session)
                trials = {
                    t.id: t for t in session.scalars(select(Trial).where(Trial.id.in_(trial_ids)))
                }
            stale = utcnow() - timedelta(seconds=self.redispatch_s)
            resend = [
                t.id
                for t in trials.values()
                if t.state == TrialState.QUEUED
                and (t.id not in self._sent or t.dispatched_at is None or t.dispatched_at < stale)
            ]
            if resend:
                self._send(sorted(resend))
            if all(t.state in (TrialState.DONE, TrialState.CANCELLED) for t in trials.values()):
                return trials
            time.sleep(self.poll_s)

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        if not inputs:
            return []
        self._check()
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
                with self.gate.slot(self.device_key, self.rank, self._check):
                    trials = self.wait(trial_ids)
            results = [_result(trials[i]) for i in trial_ids]
            if pending is not None:
                log.info("job %d: batch measured: %s", self.job_id, status_counts(results))
        return results

    def remeasure(self, trial_ids: list[int], rounds: int = 2) -> bool:
        """Have a worker time these finished trials again (each keeps its lowest latency)
        and wait for it; False if no worker did within the re-dispatch time (the recorded
        timings then stand)."""
        if not trial_ids:
            return True
        self._check()
        with (
            log_context(trial_ids=trial_ids),
            self.gate.slot(self.device_key, self.rank, self._check),
        ):
            sent = utcnow()
            self.app.send_task(
                REMEASURE_TASK, args=[trial_ids, rounds], queue=device_queue(self.device_key)
            )
            deadline = time.monotonic() + self.redispatch_s
            while time.monotonic() < deadline:
                with session_scope(self.factory) as session:
                    self._check(session)
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


def status_counts(results: Iterable[MeasureResult]) -> str:
    """``ok=6 build_error=2``: a batch's statuses, for its log line."""
    counts = Counter(str(r.status) for r in results)
    return " ".join(f"{status}={n}" for status, n in sorted(counts.items())) or "empty"


def _result(trial: Trial) -> MeasureResult:
    if trial.state == TrialState.CANCELLED:
        return MeasureResult(TrialStatus.RUN_ERROR, math.inf, CANCELLED_MESSAGE)
    return trial_result(trial)
