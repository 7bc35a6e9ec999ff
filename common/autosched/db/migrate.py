"""One migrator: Alembic upgrades under a lock, and the schema check services start with.

``upgrade_database`` (``autosched db upgrade``, ``autosched up``, and a service whose schema
is behind when ``auto_migrate`` is on) holds a lock while it reads the revision and
migrates: PostgreSQL's session advisory lock ``MIGRATION_LOCK_KEY``, taken on the very
connection that runs the migration, or for SQLite an exclusive ``flock`` on a file beside
the database. Concurrent migrators therefore serialize, and the later ones find the schema
at head and do nothing. ``ensure_schema`` is what a service does on start: at head it goes
on; behind, it migrates (``auto_migrate``) or waits ``schema_wait_s`` for an operator's
``autosched db upgrade``; at a revision this code does not know (the database was migrated
by a newer version, and this image is a rollback) it refuses with a ``SchemaError``, which
``require_schema`` turns into one log line and exit status ``EXIT_SCHEMA``.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, pool, select
from sqlalchemy.engine import make_url

from autosched.db.session import make_engine
from autosched.errors import SchemaError
from autosched.settings import Settings, get_settings

log = logging.getLogger("autosched.db")

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"
#: The advisory lock every migrator takes (any fixed bigint; this one spells "autosch").
MIGRATION_LOCK_KEY = int.from_bytes(b"autosch", "big")
#: Exit status of a service that cannot run on the database's schema (sysexits EX_CONFIG).
EXIT_SCHEMA = 78
UPGRADE_HINT = "run `autosched db upgrade` (or set AUTOSCHED_AUTO_MIGRATE=true)"


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection  # migrations/env.py runs on it
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


@dataclass(frozen=True)
class SchemaState:
    """The database's revisions against this code's migration scripts."""

    current: tuple[str, ...]  # empty: a new database
    heads: tuple[str, ...]
    unknown: tuple[str, ...]  # revisions in the database that no script here defines

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)

    def describe(self) -> str:
        now = ", ".join(self.current) or "empty (no revision)"
        return f"database schema {now}; this version's head {', '.join(self.heads)}"


def schema_state(connection: Connection) -> SchemaState:
    """Read the revision with Alembic's ``MigrationContext`` (no migration)."""
    script = _script()
    current = tuple(MigrationContext.configure(connection).get_current_heads())
    known = {rev.revision for rev in script.walk_revisions()}
    return SchemaState(
        current=current,
        heads=tuple(script.get_heads()),
        unknown=tuple(rev for rev in current if rev not in known),
    )


def _unknown_error(state: SchemaState) -> SchemaError:
    return SchemaError(
        f"{state.describe()}: revision {', '.join(state.unknown)} is unknown to this "
        "version — the database was migrated by a newer autosched. Run that version (or "
        "newer), or downgrade the schema with it (`alembic downgrade`) before rolling back."
    )


@contextmanager
def migration_lock(url: str) -> Iterator[Connection]:
    """A connection that holds the migration lock until the block ends."""
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
                conn.commit()  # a session-level lock: it outlives this transaction
                try:
                    yield conn
                finally:
                    conn.rollback()  # whatever the block left open
                    conn.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
                    conn.commit()
        else:
            with _file_lock(url), engine.connect() as conn:
                yield conn
    finally:
        engine.dispose()


@contextmanager
def _file_lock(url: str) -> Iterator[None]:
    """SQLite: an exclusive flock on ``<database>.migrate.lock`` (none for in-memory)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    path = Path(f"{database}.migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def upgrade_database(url: str | None = None) -> bool:
    """Migrate to head under the migration lock; returns whether it changed anything.

    Raises ``SchemaError`` when the database is at a revision these scripts do not know.
    """
    url = url or get_settings().resolved_database_url
    with migration_lock(url) as conn:
        state = schema_state(conn)
        conn.rollback()  # end the read: the migration runs in a transaction of its own
        if state.unknown:
            raise _unknown_error(state)
        if state.at_head:
            return False
        log.info("migrating: %s", state.describe())
        command.upgrade(alembic_config(url, conn), "head")
        conn.commit()  # in case env.py's transaction was the caller's to end
    return True


def current_state(url: str) -> SchemaState:
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return schema_state(conn)
    finally:
        engine.dispose()


def ensure_schema(
    url: str | None = None,
    settings: Settings | None = None,
    *,
    migrate: bool | None = None,
    poll_s: float = 1.0,
) -> None:
    """A service's start: return once the schema is at head (migrating it under the lock
    when ``migrate``, default ``settings.auto_migrate``); ``SchemaError`` when it is at an
    unknown revision, or still behind after ``settings.schema_wait_s``."""
    settings = settings or get_settings()
    url = url or settings.resolved_database_url
    migrate = settings.auto_migrate if migrate is None else migrate
    deadline = time.monotonic() + settings.schema_wait_s
    waiting = False
    while True:
        state = current_state(url)
        if state.unknown:
            raise _unknown_error(state)
        if state.at_head:
            return
        if migrate:
            upgrade_database(url)
            return
        if time.monotonic() >= deadline:
            raise SchemaError(
                f"{state.describe()}: the schema is behind this version and automatic "
                f"migration is off; {UPGRADE_HINT}"
            )
        if not waiting:
            log.warning("%s: waiting for a migrator; %s", state.describe(), UPGRADE_HINT)
            waiting = True
        time.sleep(poll_s)


def require_schema(
    url: str | None = None, settings: Settings | None = None, *, migrate: bool | None = None
) -> None:
    """``ensure_schema`` for a process's start: a ``SchemaError`` becomes one error line
    and ``SystemExit(EXIT_SCHEMA)`` instead of a traceback."""
    try:
        ensure_schema(url, settings, migrate=migrate)
    except SchemaError as err:
        log.error("cannot start: %s", err)
        raise SystemExit(EXIT_SCHEMA) from None
