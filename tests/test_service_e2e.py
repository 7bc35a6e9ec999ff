"""End to end, as a user runs it: real processes (uvicorn API, scheduler, Celery worker),
the Python client over HTTP, a tuned schedule applied on the client and checked numerically.

Once with PostgreSQL + Redis (the distributed deployment), once embedded (SQLite file and
SQLite broker, no Redis).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tvm

from autosched.client import Client
from autosched.fetched_schedule import apply_schedule
from autosched.hardware import HardwareParams, cpu_target
from autosched.service.embedded import EmbeddedService
from autosched.settings import Settings
from tests.farm_support import matmul
from tests.fault_support import free_port


@pytest.fixture(params=["postgres+redis", "embedded"])
def service(request, tmp_path, device_key):
    if request.param == "embedded":
        settings = Settings(data_dir=tmp_path, api_port=free_port())
    else:
        settings = Settings(
            data_dir=tmp_path,
            api_port=free_port(),
            database_url=request.getfixturevalue("pg_url"),
            redis_url=request.getfixturevalue("redis_url"),
        )
    svc = EmbeddedService(settings, [device_key])
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_submit_tune_fetch_apply(service, device_key):
    workload = matmul(48, 48, 48, "e2e_matmul")
    token = (service.settings.data_dir / "token").read_text().strip()
    with Client(service.url, token=token) as client:
        view = client.register_workload(workload)
        assert view.key == workload.key
        assert [s.meta_template for s in view.stages] == ["complex_reduction"]

        before = client.schedule(workload.key)
        assert before.source == "static"

        job = client.submit_job([workload], device_key=device_key, trials=16, seed=1)
        done = client.wait_for_job(job.id, poll_s=0.5, timeout=600)
        assert done.state == "succeeded", done.error
        assert done.trials_done == 16
        assert [p.trial for p in done.curve] == list(range(1, 17))
        assert done.best_latency is not None and done.best_gflops > 0

        # Before it ended, the job had a worker time its fastest few again (Celery task).
        from sqlalchemy import func, select

        from autosched.db import Trial, session_factory, session_scope

        with session_scope(session_factory(service.settings.resolved_database_url)) as session:
            remeasured = session.scalar(
                select(func.count()).where(Trial.job_id == job.id, Trial.remeasured_at.is_not(None))
            )
        assert remeasured >= 2

        fetched = client.schedule(workload.key, target=done.target_key)
        assert fetched.source == "tuned"
        assert fetched.latency == pytest.approx(done.best_latency)
        assert fetched.worker_id and fetched.device_key == device_key

    # The client applies what it fetched to its own PrimFunc, builds and checks it.
    sch = apply_schedule(workload, fetched)
    hw = HardwareParams.from_json(fetched.hardware)
    lib = tvm.compile(sch.mod, target=cpu_target(hw))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((48, 48), dtype=np.float32)
    b = rng.standard_normal((48, 48), dtype=np.float32)
    c = tvm.runtime.tensor(np.zeros((48, 48), np.float32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_cli_up_detach_then_down(tmp_path):
    """What a new user types: ``autosched up --detach``, look at the farm, ``autosched down``."""
    import os
    import subprocess
    import sys

    port = free_port()
    env = dict(os.environ, AUTOSCHED_DATA_DIR=str(tmp_path / "state"))
    env |= {"AUTOSCHED_API_PORT": str(port), "AUTOSCHED_API_URL": f"http://127.0.0.1:{port}"}
    for name in ("DATABASE_URL", "REDIS_URL", "AUTOSCHED_DATABASE_URL", "AUTOSCHED_REDIS_URL"):
        env.pop(name, None)  # the embedded default
    cli = [sys.executable, "-m", "autosched.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=240)

    try:
        up = run("up", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port}" in up.stdout
        again = run("up", "--detach")  # idempotent: the running service is reused
        assert "already up" in again.stdout
        workers = run("workers")
        assert workers.returncode == 0, workers.stdout + workers.stderr
        assert "online" in workers.stdout
        assert (tmp_path / "state" / "token").stat().st_mode & 0o077 == 0
    finally:
        down = run("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
