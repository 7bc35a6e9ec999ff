"""Helpers shared by the API tests (test_api_*.py): apps on a test database, small
workloads, and rows written straight into the database the way the scheduler would.

The PostgreSQL database is shared by the whole session, so every test makes its own
workloads (``matmul`` salts the computation: a fresh key each call) and device keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient

from autosched.db import Job, JobWorkload, Trial, session_factory, session_scope
from autosched.db.models import Device
from autosched.hardware import HardwareParams
from autosched.settings import Settings
from autosched.vocabulary import TrialState
from services.api import create_app
from tests.farm_support import matmul as farm_matmul
from tests.farm_support import new_salt


def matmul(
    n: int = 64, salt: float | None = None, name: str = "mm"
) -> tuple[dict[str, Any], float]:
    """A wire document of ``C = salt * A @ B`` (n×n×n) and its salt; a new salt, a new key."""
    salt = salt if salt is not None else new_salt()
    return farm_matmul(n, n, n, name=name, salt=salt).to_json(), salt


def settings_for(db_url: str, tmp_path: Any, **overrides: Any) -> Settings:
    """Auth off unless a test turns it on (the auth tests do)."""
    defaults: dict[str, Any] = {"auth_required": False}
    return Settings(database_url=db_url, data_dir=tmp_path, **{**defaults, **overrides})


@contextmanager
def api_client(db_url: str, tmp_path: Any, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan run (migrations, hardware detection)."""
    with TestClient(create_app(settings_for(db_url, tmp_path, **overrides))) as client:
        yield client


@contextmanager
def db(db_url: str) -> Iterator[Any]:
    with session_scope(session_factory(db_url)) as session:
        yield session


def host_hardware(client: TestClient) -> HardwareParams:
    return client.app.state.api.host_hardware()


def unique_device() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


#: Valid hardware that is not this machine's (tests that need a second, different device).
HASWELL = HardwareParams(2, 256, 32768, 524288, 8388608, "haswell")


def hardware_doc(hw: HardwareParams = HASWELL) -> dict[str, Any]:
    return {**hw.to_json(), "cpu_model": "test cpu", "cuda_devices": []}


def registration(
    device_key: str, worker_id: str | None = None, hw: HardwareParams = HASWELL, **extra: Any
) -> dict[str, Any]:
    """A valid ``POST /v1/workers/register`` body (target key and target left to the server)."""
    return {
        "worker_id": worker_id or f"host-1:42:{uuid.uuid4().hex[:8]}",
        "device_key": device_key,
        "hardware": hardware_doc(hw),
        "hostname": "host-1",
        **extra,
    }


def known_device(db_url: str, hw: HardwareParams = HASWELL) -> str:
    """A fresh device key with pinned hardware, as a worker's first registration leaves it
    (jobs may only name a key some worker registered)."""

    key = unique_device()
    with db(db_url) as session:
        session.add(Device(key=key, target_key=hw.target_key, hardware=hw.to_json()))
    return key


def add_trial(
    session: Any,
    job_id: int,
    workload_key: str,
    *,
    state: str = TrialState.DONE,
    status: str | None = None,
    latency: float | None = None,
    finished_at: datetime | None = None,
    worker_id: str | None = None,
    device_key: str = "test-device",
    target_key: str = "llvm/test/1c/128b",
) -> Trial:
    trial = Trial(
        job_id=job_id,
        workload_key=workload_key,
        target_key=target_key,
        device_key=device_key,
        config_digest=uuid.uuid4().hex,
        config={"stages": {}},
        state=state,
        status=status,
        latency=latency,
        finished_at=finished_at,
        worker_id=worker_id,
    )
    session.add(trial)
    session.flush()
    return trial


def job_workloads(session: Any, job_id: int) -> list[JobWorkload]:
    return list(session.get(Job, job_id).workloads)
