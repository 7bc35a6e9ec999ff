"""The Celery application of the service: workers consume from it, the scheduler sends by name.

Both the scheduler (``services``) and the workers (``workers``) build their app here, so
neither imports the other; task names and queue names are in ``autosched.service.device_tasks``.
Messages carry only trial ids as JSON; results go to the database, never to a result
backend. A trial is acknowledged after it ran (``acks_late``), so a worker killed mid-batch
leaves its message to be redelivered; redelivery is harmless because workers claim trials
with a conditional update (``autosched.service.measure_trials``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import tenacity
from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Connection, Exchange, Queue
from sqlalchemy.exc import IntegrityError, OperationalError

from autosched.service.embedded_broker import TRANSPORT as EMBEDDED_TRANSPORT
from autosched.service.embedded_broker import transport_url
from autosched.settings import Settings, get_settings

log = logging.getLogger(__name__)


#: How a worker's consumer retries a broker that went away (seconds: first wait, growth per
#: try, longest wait). Celery's consumer takes kombu's defaults, 2 s growing by 2 s to 30 s:
#: after a minute's outage a worker came back up to 16 s after Redis did (30 s after longer
#: ones) while its queue filled and the scheduler re-sent "lost" trials meanwhile. A failed
#: connect to a broker that is down costs next to nothing, so a worker tries every 2 s.
RECONNECT_BACKOFF = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


class PromptReconnectConsumer(Consumer):
    """Celery's consumer, reconnecting to a lost broker on ``RECONNECT_BACKOFF``.

    Celery has no setting for the consumer's reconnect intervals (``ensure_connected``
    passes none to kombu's ``ensure_connection``, and transport options do not reach it), so
    the intervals are bound onto the connection it is about to retry."""

    def ensure_connected(self, conn: Connection) -> Connection:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_BACKOFF)
        return super().ensure_connected(conn)


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded:
        # kombu's SQLAlchemy transport hands these to create_engine: wait on SQLite's lock
        # rather than fail while the scheduler and a worker both touch the broker file.
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    # visibility_timeout: Redis hands a delivered but unacknowledged message (acks_late: the
    # batch a worker is measuring) to another worker after this long. Correctness never
    # depends on it: the database recovers every loss on its own clock (a silent worker is
    # reaped after heartbeat_timeout_s and its claimed trials re-sent at once; a message lost
    # unclaimed is re-sent after trial_unclaimed_resend_s), and a duplicate claims nothing.
    # So it only has to be longer than any batch, or a slow but live worker's batch would be
    # delivered twice and a second worker would spend its time finding it claimed: an hour,
    # or twice the redispatch time if that is longer.
    return {"visibility_timeout": max(2 * settings.trial_redispatch_s, 3600.0)}


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``' broker (Redis, or the embedded SQLite broker)."""
    settings = settings or get_settings()
    if settings.embedded:
        # Our subclass of kombu's SQLite transport (deletes what it delivers, raises on a
        # failed publish); kombu reads the transport from a ``sqla+`` prefix first, so the
        # URL goes without it.
        broker, transport = transport_url(settings.broker_url), EMBEDDED_TRANSPORT
    else:
        broker, transport = settings.broker_url, None
    app = Celery("autosched", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport=transport,
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
        # A worker outlives any broker outage, retrying every few seconds (the default gives
        # up after 100 tries, minutes at this pace): whether a worker is alive is the
        # database heartbeat's to say, and its trials are re-sent elsewhere meanwhile.
        broker_connection_max_retries=None,
        worker_consumer=f"{__name__}:{PromptReconnectConsumer.__name__}",
        broker_transport_options=_transport_options(settings),
        # A broker blip while the scheduler sends a batch: keep trying ~50 s. Past that the
        # dispatcher logs the error and sends again later (the trials stay queued in the
        # database), so an outage delays a job and never fails it. The embedded transport
        # raises on a failed publish too (a held SQLite lock), so this applies to it.
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


def queue_depth(app: Celery, name: str) -> int | None:
    """Messages waiting in queue ``name`` (delivered ones not counted); None when the broker
    cannot be asked (down, or not answering at once).

    The scheduler asks before it re-sends trials nobody claimed: an empty queue means their
    message is gone (a broker restarted without its data) or a worker holds it this instant.
    """
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            return int(conn.default_channel.queue_declare(queue=name).message_count)
    except Exception as err:  # a probe: any failure means "cannot tell"
        log.debug("broker queue %s: depth unknown (%s: %s)", name, type(err).__name__, err)
        return None
