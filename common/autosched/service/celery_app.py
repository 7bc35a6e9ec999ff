"""The Celery application of the service: workers consume from it, the scheduler sends by name.

Both the scheduler (``services``) and the workers (``workers``) build their app here, so
neither imports the other; task names and queue names are in ``autosched.service.dispatch``.
Messages carry only trial ids as JSON; results go to the database, never to a result
backend. A trial is acknowledged after it ran (``acks_late``), so a worker killed mid-batch
leaves its message to be redelivered; redelivery is harmless because workers claim trials
with a conditional update (``autosched.service.measure_trials``).
"""

from __future__ import annotations

from typing import Any

import tenacity
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy.exc import IntegrityError, OperationalError

from autosched.settings import Settings, get_settings


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded:
        # kombu's SQLAlchemy transport hands these to create_engine: wait on SQLite's lock
        # rather than fail while the scheduler and a worker both touch the broker file.
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    # Redis redelivers an unacked message after this long (a worker killed mid-batch);
    # longer than any batch, so a slow but live worker is not doubled up.
    return {"visibility_timeout": max(2 * settings.trial_redispatch_s, 3600.0)}


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``' broker (Redis, or the embedded SQLite broker)."""
    settings = settings or get_settings()
    app = Celery("autosched", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No task time limits or max-tasks-per-child: the workers' solo pool enforces neither.
        # A batch is bounded by its sandboxes instead (build and run timeouts, rlimits).
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        # A broker blip while the scheduler sends a batch: keep trying a while before the
        # error reaches the job.
        task_publish_retry_policy={
            "max_retries": 20,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3.0,
        },
        # Farm liveness lives in the database (heartbeats); remote control needs fanout,
        # which the SQLAlchemy transport does not have.
        worker_enable_remote_control=not settings.embedded,
        worker_hijack_root_logger=False,
    )
    return app


def declare_queue(app: Celery, name: str) -> None:
    """Create queue ``name`` on the broker (a direct exchange of the same name, as Celery
    routes ``queue=name``).

    A worker calls this before it registers, so the scheduler, which sends nothing to a
    device key before one of its workers is online, only ever finds the queue. kombu's
    SQLite transport creates a queue with a select-then-insert guarded only within one
    process, so two workers of one device key starting together can still race: the loser
    gets an IntegrityError (Celery's consumer would stop on it) and here tries again, on a
    fresh connection, and finds the queue. On a new broker file the same holds one step
    earlier: both create kombu's tables (``create_all`` checks, then creates) and the loser
    gets "table already exists", an OperationalError, as it does for a lock held too long.
    """
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((IntegrityError, OperationalError)),
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_random(0.05, 0.3),
        reraise=True,
    ):
        with attempt, app.connection_for_write() as conn:
            queue(conn.default_channel).declare()
