"""The device farm: workers register, heartbeat, and go offline when they fall silent.

A worker that misses heartbeats is marked offline and the trials it had claimed go back to
the queue (state ``queued``, worker cleared) for the scheduler to send again, each charged
with a lost worker: one that has killed ``max_trial_attempts`` workers is a poison trial,
recorded as failed and never sent again. A worker whose trials keep failing in ways that
blame its machine quarantines itself (``measure_trials``): it stays online, shown as
quarantined, and is not counted among the workers that take work.

Registration is a trust boundary. A worker token registers only the device keys it was
granted, and only worker ids that are new or its own; the reported hardware is validated and
the target key and TVM target are derived from it, never taken from the report. A device
key's hardware is pinned by its first registration (``devices``): other hardware under the
same key is refused unless an admin re-pins it, so one worker cannot change the target that
everyone's jobs on that key are built for.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, TypeVar

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from autosched.db.models import Device, Trial, Worker, db_now, utcnow
from autosched.db.upsert import insert_for
from autosched.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from autosched.hardware import HardwareParams, target_json
from autosched.host_description import HostDescription
from autosched.schemas import WorkerRegister, WorkerView
from autosched.service.tokens import Caller
from autosched.settings import get_settings
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, TrialState, WorkerState

log = logging.getLogger("autosched.farm")

#: Target fields a report may repeat; each must equal the derived target's.
_TARGET_FIELDS = ("kind", "mcpu", "num-cores", "arch")


def register_worker(session: Session, reg: WorkerRegister, *, caller: Caller) -> Worker:
    """Create or refresh a worker (a restarted worker re-registers under a new id).

    Raises PermissionDeniedError (a device key not granted, another token's worker id),
    InvalidRequestError (bad hardware, a target that disagrees with it) and ConflictError
    (hardware other than the device key's pinned hardware).
    """
    if not caller.may_serve(reg.device_key):
        raise PermissionDeniedError(f"this token may not serve device key {reg.device_key!r}")
    described = HostDescription.from_report(reg.hardware)
    hw = described.params
    derived_key = hw.target_key
    if reg.target_key is not None and reg.target_key != derived_key:
        raise InvalidRequestError(
            f"target_key {reg.target_key!r} does not match the reported hardware "
            f"({derived_key!r}); the server derives it"
        )
    target = target_json(hw)
    if reg.target is not None:
        _check_target(reg.target, target)

    worker = session.get(Worker, reg.worker_id)
    if worker is not None and not caller.owns(worker.token_id):
        raise PermissionDeniedError(f"worker {reg.worker_id!r} belongs to another token")
    _pin(session, reg.device_key, derived_key, hw, caller)

    if worker is None:
        worker = Worker(id=reg.worker_id, registered_at=db_now())
        session.add(worker)
    worker.device_key = reg.device_key
    worker.target_key = derived_key
    worker.target = target
    worker.hardware = described.to_json()
    worker.hostname = reg.hostname
    worker.token_id = caller.token_id
    worker.state = WorkerState.ONLINE
    worker.last_heartbeat = db_now()  # liveness: the database's clock, never the worker's
    # Registering again is the way out of quarantine (an operator restarted the worker).
    worker.env_failure_streak = 0
    worker.quarantined_at = None
    worker.quarantine_reason = None
    session.flush()
    session.refresh(worker, ["registered_at", "last_heartbeat"])
    return worker


def _check_target(reported: dict[str, Any], derived: dict[str, Any]) -> None:
    for name in _TARGET_FIELDS:
        if name in reported and reported[name] != derived.get(name):
            raise InvalidRequestError(
                f"target.{name} {reported[name]!r} does not match the reported hardware "
                f"({derived.get(name)!r}); the server derives the target"
            )


def _pin(
    session: Session, device_key: str, target_key: str, hw: HardwareParams, caller: Caller
) -> Device:
    """The device key's row: created (pinned) at its first registration; re-pinned only by
    an admin or a trusted caller."""
    device = session.get(Device, device_key)
    now = utcnow()
    if device is None:
        # Workers of a new key may start together: the first insert pins, the others find
        # its row (insert-or-ignore, then read) instead of failing on the primary key.
        session.execute(
            insert_for(session, Device)
            .values(
                key=device_key,
                target_key=target_key,
                hardware=hw.to_json(),
                pinned_by_token_id=caller.token_id,
                created_at=now,
                pinned_at=now,
            )
            .on_conflict_do_nothing(index_elements=["key"])
        )
        device = session.get(Device, device_key, populate_existing=True)
        assert device is not None
    if _pinned(device) != hw:
        if not caller.is_admin:
            raise ConflictError(
                f"device key {device_key!r} is pinned to {device.target_key} hardware; this "
                f"worker reports {target_key} hardware (only an admin token may re-pin it)"
            )
        log.warning("device key %s re-pinned: %s -> %s", device_key, device.target_key, target_key)
        device.target_key = target_key
        device.hardware = hw.to_json()
        device.pinned_by_token_id = caller.token_id
        device.pinned_at = now
    session.flush()
    return device


def _pinned(device: Device) -> HardwareParams | None:
    try:
        return HardwareParams.from_json(device.hardware)
    except InvalidRequestError:  # pinned before validation existed: any report differs
        return None


def device_hardware(session: Session, device_key: str) -> HardwareParams | None:
    """The pinned hardware of ``device_key`` (None: no worker ever registered it)."""
    device = session.get(Device, device_key)
    return None if device is None else HardwareParams.from_json(device.hardware)


def heartbeat(session: Session, worker_id: str, *, caller: Caller) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFoundError(f"worker {worker_id!r} is not registered")
    if not caller.owns(worker.token_id):
        raise PermissionDeniedError(f"worker {worker_id!r} belongs to another token")
    worker.last_heartbeat = db_now()  # the database's clock: a skewed worker is judged fairly
    worker.state = WorkerState.ONLINE
    session.flush()
    session.refresh(worker, ["last_heartbeat"])
    return worker


def mark_offline(session: Session, worker_id: str) -> int:
    """A worker going away on purpose (clean shutdown): same effect as missed heartbeats."""
    worker = session.get(Worker, worker_id)
    if worker is None:
        return 0
    worker.state = WorkerState.OFFLINE
    return _requeue_claimed(session, [worker_id])


def reap_silent_workers(session: Session, timeout_s: float, max_attempts: int | None = None) -> int:
    """Mark workers silent for ``timeout_s`` (by the database's clock, which wrote their
    heartbeats) offline; re-queue their claimed trials, each charged with a lost worker.

    A trial whose workers died ``max_attempts`` times (default: the settings') is a poison
    trial: recorded as failed ("poison: killed N workers") instead, never sent again.
    Returns how many trials went back to the queue.
    """
    cutoff = db_now(-timeout_s)
    silent = session.scalars(
        select(Worker.id).where(Worker.state == WorkerState.ONLINE, Worker.last_heartbeat < cutoff)
    ).all()
    if not silent:
        return 0
    session.execute(update(Worker).where(Worker.id.in_(silent)).values(state=WorkerState.OFFLINE))
    if max_attempts is None:
        max_attempts = get_settings().max_trial_attempts
    _quarantine_poison(session, list(silent), max_attempts)
    return _requeue_claimed(session, list(silent), lost=True)


def _quarantine_poison(session: Session, worker_ids: list[str], max_attempts: int) -> None:
    """Record the dead workers' claimed trials that have now killed ``max_attempts``
    workers as failed: the environment's fault, but one the trial brings with it."""
    held = (Trial.worker_id.in_(worker_ids), Trial.state == TrialState.RUNNING)
    poison = session.scalars(
        select(Trial.id).where(*held, Trial.workers_lost + 1 >= max_attempts)
    ).all()
    if not poison:
        return
    session.execute(
        update(Trial)
        .where(Trial.id.in_(poison), *held)
        .values(
            state=TrialState.DONE,
            status=TrialStatus.ENV_ERROR,
            latency=None,
            latencies=[],
            error=POISON_MESSAGE.format(n=max_attempts),
            workers_lost=Trial.workers_lost + 1,
            attempts=Trial.attempts + 1,
            last_error=LOST_MESSAGE,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    log.error("trials %s quarantined: %s", sorted(poison), POISON_MESSAGE.format(n=max_attempts))


#: The error of a trial that killed the workers measuring it, and of one worker's loss.
POISON_MESSAGE = "poison: killed {n} workers (each stopped heartbeating while measuring it)"
LOST_MESSAGE = "worker lost while measuring it (stopped heartbeating)"


def _requeue_claimed(session: Session, worker_ids: list[str], *, lost: bool = False) -> int:
    """Put the workers' claimed trials back in the queue; ``lost``: the workers died (not a
    clean shutdown), which counts against each trial they held."""
    charge = (
        {
            "workers_lost": Trial.workers_lost + 1,
            "attempts": Trial.attempts + 1,
            "last_error": LOST_MESSAGE,
        }
        if lost
        else {}
    )
    result = session.execute(
        update(Trial)
        .where(Trial.worker_id.in_(worker_ids), Trial.state == TrialState.RUNNING)
        .values(state=TrialState.QUEUED, worker_id=None, dispatched_at=None, **charge)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return result.rowcount or 0


def online_workers(session: Session, device_key: str | None = None) -> list[Worker]:
    """Workers that take work: online and not quarantined."""
    query = select(Worker).where(
        Worker.state == WorkerState.ONLINE, Worker.quarantine_reason.is_(None)
    )
    if device_key is not None:
        query = query.where(Worker.device_key == device_key)
    return list(session.scalars(query.order_by(Worker.registered_at)))


def public_worker_id(worker_id: str | None) -> str | None:
    """A stable pseudonym for anonymous views: worker ids embed host names."""
    if worker_id is None:
        return None
    return "w-" + hashlib.sha256(worker_id.encode()).hexdigest()[:16]


def redact_worker(view: WorkerView) -> WorkerView:
    """The anonymous form of a worker's view: pseudonymous id, no host name."""
    # A quarantine's reason quotes an error, which may name hosts and paths.
    return view.model_copy(
        update={"id": public_worker_id(view.id), "hostname": None, "quarantine_reason": None}
    )


def list_workers(session: Session, *, redact: bool = True) -> list[WorkerView]:
    """Every worker with its device queue depth and its own trial counts; ``redact`` (the
    default, for anonymous readers) hides host names."""
    depths = _queue_depths(session)
    counts = _trial_counts(session)
    workers = session.scalars(select(Worker).order_by(Worker.device_key, Worker.id))
    views = [_view(w, depths.get(w.device_key, 0), *counts.get(w.id, (0, 0))) for w in workers]
    return [redact_worker(v) for v in views] if redact else views


def worker_view(session: Session, worker: Worker, *, redact: bool = True) -> WorkerView:
    """One worker's view, with the queries filtered to it (heartbeats are frequent)."""
    depth = _queue_depths(session, worker.device_key).get(worker.device_key, 0)
    view = _view(worker, depth, *_trial_counts(session, worker.id).get(worker.id, (0, 0)))
    return redact_worker(view) if redact else view


def _queue_depths(session: Session, device_key: str | None = None) -> dict[str, int]:
    """Trials queued or running, per device key."""
    query = select(Trial.device_key, func.count()).where(Trial.state.in_(IN_FLIGHT_TRIAL_STATES))
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
        quarantined=w.quarantine_reason is not None,
        quarantined_at=w.quarantined_at,
        quarantine_reason=w.quarantine_reason,
    )


T = TypeVar("T")


def freshest_online(session: Session, column: InstrumentedAttribute[T], target: str) -> T | None:
    """``column`` of the online worker compiling for ``target`` that heartbeated last."""
    return session.scalars(
        select(column)
        .where(
            Worker.state == WorkerState.ONLINE,
            Worker.quarantine_reason.is_(None),
            Worker.target_key == target,
        )
        .order_by(Worker.last_heartbeat.desc())
        .limit(1)
    ).first()
