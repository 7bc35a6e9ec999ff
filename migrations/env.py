"""Alembic environment: the URL comes from the caller (``upgrade_database``) or settings.

``upgrade_database`` passes the connection that holds the migration lock
(``config.attributes["connection"]``); the migration then runs on it, and the caller
commits. The ``alembic`` command line gets a connection of its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

from autosched.db.models import Base
from autosched.db.session import make_engine
from autosched.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite can only ALTER tables by copying them.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    locked = config.attributes.get("connection")
    if locked is not None:
        _run(locked)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)  # one-shot: release the connection
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
