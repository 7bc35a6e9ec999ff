"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, made to keep nothing.

kombu's own transport (``kombu.transport.sqlalchemy``) marks a delivered message invisible
and never deletes it, so ``broker.db`` grows by every message ever sent; older releases
also swallowed an ``OperationalError`` on a publish's commit (a lock held past the timeout),
reporting success for a message that was never stored. This transport differs in three
places and is otherwise kombu's:

- **a delivered message is deleted** in the transaction that takes it. kombu never shows an
  invisible row again (the transport has no visibility timeout), so deleting it changes
  nothing about delivery; what a consumer held unacknowledged is put back as a new row by
  the virtual transport's ``QoS`` (``_restore`` → ``_put``) when its channel closes or
  it rejects with requeue, exactly as before;
- **a publish that fails raises**: the commit's ``OperationalError`` (or the queue lookup's)
  reaches Celery, whose publish retry policy (``task_publish_retry_policy``) tries again on
  a fresh connection, and past it the scheduler sees the error; SQLite rolls the failed
  transaction back, so a retry stores the message once;
- the first channel of a process on a broker file **deletes rows left invisible** by
  kombu's transport (a file from an older release).

``make_celery`` selects it only for the embedded broker (``broker_transport``); Redis is
untouched.
"""

from __future__ import annotations

import logging
import threading
from json import dumps, loads
from queue import Empty
from typing import Any

from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

log = logging.getLogger(__name__)

#: ``broker_transport`` value naming this transport (kombu resolves ``module:Class``).
TRANSPORT = f"{__name__}:Transport"

_swept: set[str] = set()  # broker URLs whose leftover invisible rows this process removed
_sweep_lock = threading.Lock()


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel that deletes what it delivers and raises what it fails."""

    def _open(self) -> Any:
        opened = super()._open()
        url = self.connection.client.hostname
        if url not in _swept:
            with _sweep_lock:
                if url not in _swept:
                    _swept.add(url)
                    self._sweep(opened[0])
        return opened

    def _sweep(self, engine: Any) -> None:
        """Delete the invisible (delivered) rows kombu's own transport left behind."""
        table = self.message_cls.__table__
        try:
            with engine.begin() as conn:
                gone = conn.execute(delete(table).where(table.c.visible.is_(False))).rowcount
        except OperationalError as err:  # housekeeping only: a busy file is swept next start
            log.warning("embedded broker: could not remove delivered messages (%s)", err)
            return
        if gone:
            log.info("embedded broker: removed %d delivered messages left by kombu", gone)

    def _get_or_create(self, queue: str) -> Any:
        session = self.session
        obj = session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()
        if obj is not None:
            return obj
        with kombu_sqla._MUTEX:
            obj = session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()
            if obj is not None:
                return obj
            obj = self.queue_cls(queue)
            session.add(obj)
            try:
                session.commit()
            except (IntegrityError, OperationalError):
                # kombu swallows the OperationalError (a lock held too long) and goes on with
                # a queue that was never stored; here the caller's publish or declare fails.
                # An IntegrityError (another process created it first) goes up as in kombu:
                # ``declare_queue`` tries again.
                session.rollback()
                raise
            return obj

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        session = self.session
        try:
            obj = self._get_or_create(queue)
            session.add(self.message_cls(dumps(payload), obj))
            session.commit()
        except OperationalError:
            session.rollback()  # nothing was stored; Celery's retry policy publishes again
            raise

    def _get(self, queue: str) -> Any:
        obj = self._get_or_create(queue)
        session = self.session
        table = self.message_cls.__table__
        try:
            if session.bind.name == "sqlite":
                session.execute(text("BEGIN IMMEDIATE TRANSACTION"))  # no two takers
            row = session.execute(
                select(table.c.id, table.c.payload)
                .where(table.c.queue_id == obj.id, table.c.visible.is_not(False))
                .order_by(table.c.timestamp, table.c.id)
                .limit(1)
                .with_for_update()
            ).first()
            if row is None:
                session.commit()
                raise Empty()
            session.execute(delete(table).where(table.c.id == row.id))
            session.commit()  # only a committed delete hands the message out
        except Empty:
            raise
        except BaseException:
            session.rollback()
            raise
        return loads(bytes_to_str(row.payload))

    def _purge(self, queue: str) -> int:
        session = self.session
        table = self.message_cls.__table__
        obj = self._get_or_create(queue)
        try:
            count = session.execute(delete(table).where(table.c.queue_id == obj.id)).rowcount
            session.commit()
        except OperationalError:
            session.rollback()
            raise
        return count or 0


class Transport(kombu_sqla.Transport):
    Channel = Channel
    # Declared, so kombu's ``Connection.ensure`` keeps retrying (the publish retry policy)
    # instead of giving up after one reconnect, as it does for a transport that cannot tell
    # recoverable errors apart. A lock held too long is recoverable; the reconnect is free.
    recoverable_connection_errors = (OperationalError,)
    recoverable_channel_errors = ()


def transport_url(broker_url: str) -> str:
    """The SQLAlchemy URL this transport takes (``sqla+sqlite:///x`` → ``sqlite:///x``):
    kombu picks the transport from a ``sqla+`` prefix before ``broker_transport``."""
    return broker_url.removeprefix("sqla+")
