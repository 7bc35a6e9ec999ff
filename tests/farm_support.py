"""Helpers for the scheduler and worker tests: tiny workloads, jobs, worker processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tvm import te

from autosched.db import Job, JobWorkload, Trial, session_scope
from autosched.hardware import detect_hardware
from autosched.schemas import WorkerRegister
from autosched.service import farm
from autosched.service.tokens import Caller
from autosched.service.workloads import store_workload
from autosched.settings import Settings
from autosched.tune.measure import Measurer
from autosched.tune.trial import MeasureInput, MeasureResult, TrialStatus
from autosched.vocabulary import TERMINAL_JOB_STATES, TrialState
from autosched.wire import Workload
from services.scheduler.main import run_scheduler

REPO = Path(__file__).resolve().parents[1]


def matmul(
    m: int = 64, n: int = 64, k: int = 64, name: str = "farm_matmul", salt: float | None = None
) -> Workload:
    """Tests sharing the session's PostgreSQL database need workloads of their own (records
    and best configs are shared by workload key): a distinct shape, or a ``salt`` factor."""
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    if salt is None:
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    else:
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j] * salt, axis=r), name="C")
    return Workload.from_tensors([a, b, c], name)


def new_salt() -> float:
    """A ``matmul`` salt, and so a workload key, no other test (or earlier run) has."""
    return round(random.uniform(0.5, 2.0), 9)


def salted_matmul(name: str) -> Workload:
    """64×64×64, with a key no other test (or earlier run on this database) has."""
    return matmul(name=name, salt=new_salt())


def store(factory: sessionmaker[Session], *workloads: Workload) -> list[str]:
    with session_scope(factory) as session:
        return [store_workload(session, w)[0].key for w in workloads]


def create_job(
    factory: sessionmaker[Session],
    keys: list[str],
    device_key: str,
    trials: int,
    strategy: str = "evolutionary",
    priority: int = 0,
    seed: int = 0,
) -> int:
    with session_scope(factory) as session:
        job = Job(
            device_key=device_key,
            strategy=strategy,
            trials_per_workload=trials,
            priority=priority,
            seed=seed,
        )
        job.workloads = [JobWorkload(workload_key=k, position=i) for i, k in enumerate(keys)]
        session.add(job)
        session.flush()
        return job.id


def register_worker(factory: sessionmaker[Session], device_key: str) -> str:
    """A worker row for in-process tests (no Celery worker behind it), registered as the
    workers do: through the database, a trusted caller."""

    hw = detect_hardware()
    worker_id = f"test:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    reg = WorkerRegister(
        worker_id=worker_id,
        device_key=device_key,
        target_key=hw.target_key,
        target={"kind": "llvm"},
        hardware=hw.to_json(),
        hostname="test",
    )
    with session_scope(factory) as session:
        farm.register_worker(session, reg, caller=Caller.trusted())
    return worker_id


def trials_of(factory: sessionmaker[Session], job_id: int) -> list[Trial]:
    with session_scope(factory) as session:
        return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.id)))


def done_trials(factory: sessionmaker[Session], job_id: int) -> list[Trial]:
    return [t for t in trials_of(factory, job_id) if t.state == TrialState.DONE]


def job(factory: sessionmaker[Session], job_id: int) -> Job:
    with session_scope(factory) as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_job_end(factory: sessionmaker[Session], job_id: int, timeout: float) -> Job:
    """The job once it has succeeded, failed or been cancelled."""
    return wait_for(
        lambda: (j := job(factory, job_id)).state in TERMINAL_JOB_STATES and j,
        timeout,
        f"job {job_id} to end",
    )


class FakeMeasurer(Measurer):
    """Deterministic latencies from the config's JSON, no build (for in-process tests)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[list[MeasureInput]] = []

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        self.calls.append(list(inputs))
        time.sleep(self.delay_s)
        return [
            MeasureResult(TrialStatus.OK, latency, latencies=(latency,))
            for latency in (
                1e-3 * (1 + zlib.crc32(repr(i.config).encode()) % 997 / 997) for i in inputs
            )
        ]


# ---- processes ------------------------------------------------------------------------


def service_env(
    data_dir: Path,
    database_url: str | None,
    redis_url: str | None,
    **extra: str,
) -> dict[str, str]:
    """Environment of a worker/scheduler child: fast heartbeats, small batches."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOSCHED_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        AUTOSCHED_DATA_DIR=str(data_dir),
        AUTOSCHED_HEARTBEAT_INTERVAL_S="0.5",
        AUTOSCHED_HEARTBEAT_TIMEOUT_S="3",
        AUTOSCHED_BATCH_SIZE="4",
        TVM_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def service_settings(
    data_dir: Path, database_url: str | None, redis_url: str | None, **overrides: Any
) -> Settings:
    """The in-process twin of ``service_env``: the same fast heartbeats and small batches."""
    fast: dict[str, Any] = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 3, "batch_size": 4}
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        **{**fast, **overrides},
    )


@contextlib.contextmanager
def scheduler_thread(settings: Settings) -> Iterator[None]:
    """``run_scheduler`` in a thread, polling every 0.2 s, for as long as the block runs."""
    stopping = threading.Event()
    thread = threading.Thread(
        target=run_scheduler, args=(settings, stopping), kwargs={"poll_s": 0.2}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(60)
    assert not thread.is_alive(), "the scheduler thread did not stop"


def start(module: str, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: sandboxes die with it
        )
    finally:
        log.close()


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the child's whole process group (it and its sandboxes) and reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (graceful), SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    kill(process)


def online(factory: sessionmaker[Session], device_key: str) -> list[str]:
    with session_scope(factory) as session:
        return [w.id for w in farm.online_workers(session, device_key)]
