"""The device farm: workers register, heartbeat, and go offline when they fall silent.

A worker that misses heartbeats is marked offline and the trials it had claimed go back to
the queue (state ``queued``, worker cleared) for the scheduler to send again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from autosched.db.models import Trial, TrialState, Worker, WorkerState, utcnow
from autosched.errors import NotFoundError
from autosched.service.schemas import WorkerRegister, WorkerView
from autosched.tune.measure import TrialStatus


def register_worker(session: Session, reg: WorkerRegister) -> Worker:
    """Create or refresh a worker (a restarted worker re-registers under a new id)."""
    worker = session.get(Worker, reg.worker_id)
    now = utcnow()
    if worker is None:
        worker = Worker(id=reg.worker_id, registered_at=now)
        session.add(worker)
    worker.device_key = reg.device_key
    worker.target_key = reg.target_key
    worker.target = reg.target
    worker.hardware = reg.hardware
    worker.hostname = reg.hostname
    worker.state = WorkerState.ONLINE
    worker.last_heartbeat = now
    session.flush()
    return worker


def heartbeat(session: Session, worker_id: str) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFoundError(f"worker {worker_id!r} is not registered")
    worker.last_heartbeat = utcnow()
    worker.state = WorkerState.ONLINE
    session.flush()
    return worker


def mark_offline(session: Session, worker_id: str) -> int:
    """A worker going away on purpose (clean shutdown): same effect as missed heartbeats."""
    worker = session.get(Worker, worker_id)
    if worker is None:
        return 0
    worker.state = WorkerState.OFFLINE
    return _requeue_claimed(session, [worker_id])


def reap_silent_workers(session: Session, timeout_s: float, now: datetime | None = None) -> int:
    """Mark workers silent for ``timeout_s`` offline; re-queue their claimed trials.

    Returns how many trials went back to the queue.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    silent = session.scalars(
        select(Worker.id).where(Worker.state == WorkerState.ONLINE, Worker.last_heartbeat < cutoff)
    ).all()
    if not silent:
        return 0
    session.execute(update(Worker).where(Worker.id.in_(silent)).values(state=WorkerState.OFFLINE))
    return _requeue_claimed(session, list(silent))


def _requeue_claimed(session: Session, worker_ids: list[str]) -> int:
    result = session.execute(
        update(Trial)
        .where(Trial.worker_id.in_(worker_ids), Trial.state == TrialState.RUNNING)
        .values(state=TrialState.QUEUED, worker_id=None, dispatched_at=None)
    )
    session.flush()
    return result.rowcount or 0


def online_workers(session: Session, device_key: str | None = None) -> list[Worker]:
    query = select(Worker).where(Worker.state == WorkerState.ONLINE)
    if device_key is not None:
        query = query.where(Worker.device_key == device_key)
    return list(session.scalars(query.order_by(Worker.registered_at)))


def list_workers(session: Session) -> list[WorkerView]:
    """Every worker with its device queue depth and its own trial counts."""
    depths = _queue_depths(session)
    counts = _trial_counts(session)
    workers = session.scalars(select(Worker).order_by(Worker.device_key, Worker.id))
    return [_view(w, depths.get(w.device_key, 0), *counts.get(w.id, (0, 0))) for w in workers]


def worker_view(session: Session, worker: Worker) -> WorkerView:
    """One worker's view, with the queries filtered to it (heartbeats are frequent)."""
    depth = _queue_depths(session, worker.device_key).get(worker.device_key, 0)
    return _view(worker, depth, *_trial_counts(session, worker.id).get(worker.id, (0, 0)))


def _queue_depths(session: Session, device_key: str | None = None) -> dict[str, int]:
    """Trials queued or running, per device key."""
    query = select(Trial.device_key, func.count()).where(
        Trial.state.in_([TrialState.QUEUED, TrialState.RUNNING])
    )
    if device_key is not None:
        query = query.where(Trial.device_key == device_key)
    return dict(session.execute(query.group_by(Trial.device_key)).all())


def _trial_counts(session: Session, worker_id: str | None = None) -> dict[str, tuple[int, int]]:
    """Finished trials and failed ones among them, per worker."""
    query = select(
        Trial.worker_id,
        func.count(),
        func.sum(case((Trial.status != TrialStatus.OK, 1), else_=0)),
    ).where(Trial.state == TrialState.DONE)
    if worker_id is not None:
        query = query.where(Trial.worker_id == worker_id)
    rows = session.execute(query.group_by(Trial.worker_id)).all()
    return {w: (done, errors or 0) for w, done, errors in rows}


def _view(w: Worker, queue_depth: int, trials_done: int, errors: int) -> WorkerView:
    return WorkerView(
        id=w.id,
        device_key=w.device_key,
        target_key=w.target_key,
        hardware=w.hardware,
        hostname=w.hostname,
        state=w.state,
        registered_at=w.registered_at,
        last_heartbeat=w.last_heartbeat,
        queue_depth=queue_depth,
        trials_done=trials_done,
        errors=errors,
    )
