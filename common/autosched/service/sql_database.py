"""``SQLDatabase``: the tuning engine's ``Database`` on the service's ``trials`` table.

The records are shared by every job (the service implements the engine's interface; the
engine never imports the service's database).

A trial row is written by the scheduler before dispatch and filled once by the worker that
measured it, so ``commit`` has nothing left to do for those. ``records`` returns the done
trials of a workload on a target across all jobs: a new job on a workload tuned before
warm-starts its cost model on them and never measures a known config again — unless its
earlier failure was the environment's (``MeasureResult.final``), which only the job that
recorded it keeps.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, utcnow
from autosched.db.session import session_scope
from autosched.db.upsert import insert_for
from autosched.space import Config
from autosched.tune.database import Database
from autosched.tune.trial import MeasureResult, TrialRecord, TrialStatus
from autosched.vocabulary import TrialState

#: A trial's identity within its job (the unique constraint on ``trials``).
TRIAL_IDENTITY = ["job_id", "workload_key", "config_digest"]


def trial_result(trial: Trial) -> MeasureResult:
    """The MeasureResult a done trial row holds (latency NULL is infinity)."""
    return MeasureResult(
        TrialStatus(trial.status or TrialStatus.RUN_ERROR),
        math.inf if trial.latency is None else float(trial.latency),
        trial.error,
        float(trial.build_secs or 0.0),
        float(trial.run_secs or 0.0),
        tuple(trial.latencies or ()),
    )


def is_final(row: Trial) -> bool:
    """Whether a done trial's result stands for its config everywhere: a success or the
    kernel's fault. An environment failure (timeouts, full disk, a poison trial) holds
    only for the job that recorded it."""
    return trial_result(row).final


def result_values(result: MeasureResult) -> dict[str, Any]:
    """Column values recording ``result`` on a trial row."""
    return {
        "state": TrialState.DONE,
        "status": str(result.status),
        "latency": result.latency if math.isfinite(result.latency) else None,
        "latencies": [float(x) for x in result.latencies],
        "error": result.error,
        "build_secs": result.build_secs,
        "run_secs": result.run_secs,
        "finished_at": utcnow(),
    }


def _record(row: Trial) -> TrialRecord:
    return TrialRecord(
        row.workload_key, row.target_key, Config.from_json(row.config), trial_result(row)
    )


class SQLDatabase(Database):
    """``Database`` over the trials table; ``job_id`` is the job that commits new records."""

    def __init__(self, factory: sessionmaker[Session], job_id: int | None = None) -> None:
        self.factory = factory
        self.job_id = job_id

    def _done(self, workload_key: str, target: str):
        return select(Trial).where(
            Trial.workload_key == workload_key,
            Trial.target_key == target,
            Trial.state == TrialState.DONE,
        )

    def records(self, workload_key: str, target: str) -> list[TrialRecord]:
        """Done trials of every job, oldest first, one per config digest."""
        with session_scope(self.factory) as session:
            rows = session.scalars(self._done(workload_key, target).order_by(Trial.id)).all()
        seen: set[str] = set()
        out = []
        for row in rows:
            if row.config_digest in seen or not self._counts(row):
                continue
            seen.add(row.config_digest)
            out.append(_record(row))
        return out

    def _counts(self, row: Trial) -> bool:
        """Whether a done trial is a record here: a success or the kernel's fault from any
        job, an environment failure (spent retries, a poison trial) only from this job, so
        a later job may propose that config again."""
        return row.job_id == self.job_id or is_final(row)

    def best(self, workload_key: str, target: str) -> TrialRecord | None:
        """The fastest verified trial, in one query (the task scheduler asks often)."""
        with session_scope(self.factory) as session:
            row = session.scalars(
                self._done(workload_key, target)
                .where(Trial.status == TrialStatus.OK, Trial.latency.is_not(None))
                .order_by(Trial.latency, Trial.id)
                .limit(1)
            ).first()
        return _record(row) if row is not None else None

    def commit(self, record: TrialRecord) -> None:
        """Nothing to do for a trial a worker recorded; a record measured elsewhere (e.g. a
        local measurer) is stored as a done trial of ``job_id``, once."""
        if self.job_id is None:
            return
        with session_scope(self.factory) as session:
            job = session.get(Job, self.job_id)
            if job is None:
                return
            values = {
                "job_id": self.job_id,
                "workload_key": record.workload_key,
                "target_key": record.target,
                "device_key": job.device_key,
                "config_digest": record.digest,
                "config": record.config.to_json(),
                "dispatch_count": 0,
                "created_at": utcnow(),
                **result_values(record.result),
            }
            stmt = insert_for(session, Trial).values(**values)
            session.execute(stmt.on_conflict_do_nothing(index_elements=TRIAL_IDENTITY))
