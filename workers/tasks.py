"""The worker's tasks: thin, they hand trial ids to ``autosched.service`` (measure a batch;
re-measure a job's best few).

A ``shared_task``, so it registers on whichever app the worker process builds from its
settings. The process-wide context (database, worker id, the sandboxed measurer that lives
as long as the worker) is set by ``workers.main.run_worker`` before consuming starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from autosched.service import measure_trials as service
from autosched.service import remeasure
from autosched.service.device_tasks import MEASURE_TASK, REMEASURE_TASK
from autosched.tune.measure import Measurer


@dataclass(frozen=True)
class WorkerContext:
    factory: sessionmaker[Session]
    worker_id: str
    measurer: Measurer
    policy: service.FailurePolicy | None = None  # None: from the settings


_context: WorkerContext | None = None


def configure(context: WorkerContext | None) -> None:
    global _context
    _context = context


@shared_task(name=MEASURE_TASK, ignore_result=True)
def measure_trials(trial_ids: list[int]) -> int:
    """Measure and record ``trial_ids``; returns how many results were stored."""
    if _context is None:
        raise RuntimeError("worker context not configured: start workers with workers.main")
    return service.measure_trials(
        _context.factory, trial_ids, _context.worker_id, _context.measurer, _context.policy
    )


@shared_task(name=REMEASURE_TASK, ignore_result=True)
def remeasure_trials(trial_ids: list[int], rounds: int = 2, since: str | None = None) -> int:
    """Time finished trials again (those not re-measured since ``since``, the ISO time the
    scheduler first asked: a re-sent request records nothing twice); returns how many got
    faster."""
    if _context is None:
        raise RuntimeError("worker context not configured: start workers with workers.main")
    return remeasure.remeasure_trials(
        _context.factory, trial_ids, _context.worker_id, _context.measurer, rounds, since
    )
