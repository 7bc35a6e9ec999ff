"""One migrator: concurrent migrators serialize on a lock, services check the revision.

Concurrent starts run on a private PostgreSQL cluster (``fault_support``) and on an SQLite
file; the unknown-revision case starts a real service process and reads its exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from autosched.db.migrate import (
    EXIT_SCHEMA,
    current_state,
    ensure_schema,
    require_schema,
    upgrade_database,
)
from autosched.errors import SchemaError
from autosched.settings import Settings
from tests.fault_outcome import FaultOutcome
from tests.fault_support import PrivatePostgres, start_together

REPO = Path(__file__).resolve().parents[1]
FUTURE = "9999_from_a_newer_version"


def _versions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCHED_")}
    return {**env, "DATABASE_URL": url, **extra}


@pytest.mark.fault
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_migrators_serialize(backend: str, request, tmp_path) -> None:
    """Five migrators released at one instant on a new database: every one exits 0, exactly
    one migrates, and the schema is at head once (no DuplicateTable, no second row)."""
    if backend == "postgresql":
        url = request.getfixturevalue("private_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'race.db'}"
    started = time.monotonic()
    codes, migrated = start_together(upgrade_database, [(url,)] * 5)
    state = current_state(url)
    migrations = sum(bool(m) for m in migrated)
    FaultOutcome(
        f"migrators_started_at_once_{backend}",
        budget=1,  # one migration to head
        recorded=migrations,
        duplicates=max(0, migrations - 1),
        lost=int(codes.count(0) != 5 or not state.at_head),  # a migrator failed, or no head
        recover_s=time.monotonic() - started,
    ).check()
    assert codes == [0] * 5
    assert sorted(migrated) == [False] * 4 + [True]
    assert state.at_head and not state.unknown
    assert _versions(url) == list(state.heads)


def test_db_upgrade_command(private_pg_url: str) -> None:
    """`autosched db upgrade`: migrates, then finds head; an unknown revision is exit 78
    with the reason and no traceback."""
    argv = [sys.executable, "-m", "autosched.cli", "db", "upgrade"]
    env = _env(private_pg_url, COLUMNS="200")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    first, second = run(), run()
    assert first.returncode == 0 and "migrated to head" in first.stdout, first.stderr
    assert second.returncode == 0 and "already at head" in second.stdout, second.stderr
    _stamp(private_pg_url, FUTURE)
    refused = run()
    assert refused.returncode == EXIT_SCHEMA
    assert FUTURE in refused.stderr and "newer autosched" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout


def test_service_refuses_an_unknown_revision(private_pg_url: str) -> None:
    """A rolled-back image (the database is at a revision it does not know) exits at start
    with one clear line, not a stack trace, and leaves the schema alone."""
    upgrade_database(private_pg_url)
    _stamp(private_pg_url, FUTURE)
    proc = subprocess.run(
        [sys.executable, "-m", "services.scheduler.main"],
        cwd=REPO,
        env=_env(private_pg_url),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_SCHEMA, output
    assert f"revision {FUTURE} is unknown to this version" in output
    assert "Traceback" not in output
    assert _versions(private_pg_url) == [FUTURE]


def test_behind_without_auto_migrate_waits_then_exits(tmp_path) -> None:
    """auto_migrate off: a service waits for a migrator, and after schema_wait_s exits with
    the command to run; with it on, the service migrates (under the lock)."""
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    off = Settings(database_url=url, auto_migrate=False, schema_wait_s=0.3)
    with pytest.raises(SchemaError, match="autosched db upgrade"):
        ensure_schema(url, off, poll_s=0.05)
    with pytest.raises(SystemExit) as exit_info:
        require_schema(url, off)
    assert exit_info.value.code == EXIT_SCHEMA
    assert not current_state(url).at_head  # waiting never migrates

    # An operator's `autosched db upgrade` arrives while the service waits: it goes on.
    patient = Settings(database_url=url, auto_migrate=False, schema_wait_s=30)
    migrator = threading.Timer(0.5, upgrade_database, args=(url,))
    migrator.start()
    started = time.monotonic()
    ensure_schema(url, patient, poll_s=0.05)
    migrator.join()
    assert 0.4 < time.monotonic() - started < 20
    assert current_state(url).at_head

    other = f"sqlite:///{tmp_path / 'auto.db'}"
    ensure_schema(other, Settings(database_url=other))  # auto_migrate: the default
    assert current_state(other).at_head


def test_unknown_revision_refused_by_every_entry(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    upgrade_database(url)
    _stamp(url, FUTURE)
    with pytest.raises(SchemaError, match="unknown to this version"):
        upgrade_database(url)
    with pytest.raises(SchemaError, match="unknown to this version"):
        ensure_schema(url, Settings(database_url=url))
    assert _versions(url) == [FUTURE]


def test_private_postgres_restarts(private_pg: PrivatePostgres) -> None:
    """The fault helpers' cluster keeps its port and data across a restart and a kill."""
    url = private_pg.create_database()
    upgrade_database(url)
    private_pg.restart()
    assert current_state(url).at_head
    private_pg.kill()
    assert not private_pg.running
    private_pg.start()
    assert current_state(url).at_head
