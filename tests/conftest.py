import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fault_support import PrivatePostgres, PrivateRedis

# TVM runs on one thread unless told; set before tvm starts its thread pool.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

# The machine's services (CI starts them if down). Tests fail, not skip, without them.
PG_ADMIN_URL = os.environ.get("AUTOSCHED_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("AUTOSCHED_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database with migrations applied, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from autosched.db import upgrade_database

    name = f"autosched_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_ADMIN_URL}/{name}"
    upgrade_database(url)
    yield url
    from autosched.db import engine_for

    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """One SQLite file migrated to head, for ``sqlite_url`` to copy: migrating takes about
    half a second, and a few hundred tests want a fresh database."""
    from autosched.db import upgrade_database

    path = tmp_path_factory.mktemp("migrated") / "autosched.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path, migrated_sqlite_file) -> str:
    """A fresh SQLite file with migrations applied (the embedded default's database)."""
    path = tmp_path / "autosched.db"
    shutil.copyfile(migrated_sqlite_file, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request) -> str:
    """Both backends the service supports."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(fixture)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    redis.Redis.from_url(REDIS_URL).ping()  # fails loudly when Redis is down
    return REDIS_URL


@pytest.fixture(scope="session")
def private_pg() -> Iterator["PrivatePostgres"]:
    """A private PostgreSQL cluster that fault tests may restart, stop or kill (never the
    machine's): started once per run, removed at its end; a test that stops it restarts it."""
    from tests.fault_support import PrivatePostgres

    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def private_pg_url(private_pg) -> str:
    """A fresh, empty (unmigrated) database on the running private cluster."""
    private_pg.start()  # a no-op unless an earlier test left it stopped
    return private_pg.create_database()


@pytest.fixture(scope="session")
def private_redis() -> Iterator["PrivateRedis"]:
    """A private Redis, without persistence, that fault tests may stop and restart."""
    from tests.fault_support import PrivateRedis

    with PrivateRedis() as server:
        yield server


@pytest.fixture
def device_key() -> str:
    """A device key no other test (or concurrent test run) uses: queues stay separate."""
    return f"test-{uuid.uuid4().hex[:10]}"
