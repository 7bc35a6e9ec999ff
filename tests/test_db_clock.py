"""Liveness times come from the database's clock (``db_now``), so skew does not reap.

In process, on both backends: this process's clock (every module's ``utcnow``) is moved
40 s either way and heartbeats, leases and re-sends are still judged right. For real, on
a private PostgreSQL: a heartbeat process runs under ``faketime`` 40 s behind (a live
worker is not reaped) or ahead (a dead one is reaped on time). SQLite has no server clock
(its ``'now'`` is the writing process's), but it is one machine's file, so one clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from autosched.db import Job, Trial, Worker, WorkloadRow, session_factory, session_scope
from autosched.db import models as db_models
from autosched.db.migrate import upgrade_database
from autosched.db.models import database_time, db_now
from autosched.hardware import HardwareParams
from autosched.schemas import WorkerRegister
from autosched.service import dispatch, farm, job_state
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.job_state import JobLease
from autosched.service.tokens import Caller
from autosched.vocabulary import TrialState, WorkerState
from services.scheduler import main as scheduler_main

REPO = Path(__file__).resolve().parents[1]
HW = HardwareParams(2, 256, 32768, 524288, 8388608, "haswell")
SKEW_S = 40.0
TIMEOUT_S = 30.0


@pytest.fixture
def skew(monkeypatch):
    """``skew(s)``: this process's clock runs ``s`` seconds off from now on."""

    def set_skew(seconds: float) -> None:
        def skewed() -> datetime:
            return datetime.now(UTC) + timedelta(seconds=seconds)

        for module in (db_models, farm, job_state, dispatch, scheduler_main):
            if hasattr(module, "utcnow"):
                monkeypatch.setattr(module, "utcnow", skewed)

    return set_skew


def _register(factory, device_key: str) -> str:
    reg = WorkerRegister(
        worker_id=f"clock:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        device_key=device_key,
        hardware={**HW.to_json(), "cpu_model": "test cpu", "cuda_devices": []},
        hostname="clock-test",
    )
    with session_scope(factory) as session:
        farm.register_worker(session, reg, caller=Caller.trusted())
    return reg.worker_id


def _worker(factory, worker_id: str) -> Worker:
    with session_scope(factory) as session:
        worker = session.get(Worker, worker_id)
        assert worker is not None
        return worker


def _reap(factory, timeout_s: float = TIMEOUT_S) -> int:
    with session_scope(factory) as session:
        return farm.reap_silent_workers(session, timeout_s)


def _age_s(factory, stamp: datetime) -> float:
    with session_scope(factory) as session:
        return (database_time(session) - stamp).total_seconds()


def test_db_now_is_the_database_clock(db_url):
    factory = session_factory(db_url)
    with session_scope(factory) as session:
        now, earlier, later = session.execute(select(db_now(), db_now(-30), db_now(0.25))).one()
        # Separate statements with other offsets (the compiled SQL is cached; values bind).
        before, after = session.scalar(select(db_now(-600))), session.scalar(select(db_now(600)))
        assert database_time(session) >= now
    assert now.tzinfo is not None and abs((now - datetime.now(UTC)).total_seconds()) < 5
    assert (now - earlier).total_seconds() == pytest.approx(30, abs=0.002)
    assert (later - now).total_seconds() == pytest.approx(0.25, abs=0.002)
    assert (after - before).total_seconds() == pytest.approx(1200, abs=1)


@pytest.mark.parametrize("seconds", [-SKEW_S, SKEW_S])
def test_a_skewed_workers_heartbeat_is_judged_by_the_database(db_url, device_key, skew, seconds):
    """Registered and beating with a clock 40 s off, the worker is online by the database's
    clock: not reaped (behind), and reaped on time once silent (ahead)."""
    factory = session_factory(db_url)
    skew(seconds)
    worker_id = _register(factory, device_key)
    with session_scope(factory) as session:
        farm.heartbeat(session, worker_id, caller=Caller.trusted())
    beat = _worker(factory, worker_id).last_heartbeat
    assert abs(_age_s(factory, beat)) < 5  # the database's time, not this process's
    skew(-seconds)  # the reaper's clock is off the other way
    _reap(factory)  # (other tests' silent workers in this database may go offline)
    assert _worker(factory, worker_id).state == WorkerState.ONLINE


def test_the_reaper_cuts_at_the_timeout(db_url, device_key):
    factory = session_factory(db_url)
    silent, alive = _register(factory, device_key), _register(factory, device_key)
    with session_scope(factory) as session:
        for worker_id, age in ((silent, TIMEOUT_S + 1), (alive, TIMEOUT_S - 5)):
            session.execute(
                update(Worker).where(Worker.id == worker_id).values(last_heartbeat=db_now(-age))
            )
    _reap(factory)
    assert _worker(factory, silent).state == WorkerState.OFFLINE
    assert _worker(factory, alive).state == WorkerState.ONLINE


def _job(factory, device_key: str) -> int:
    with session_scope(factory) as session:
        job = Job(device_key=device_key, strategy="random", trials_per_workload=1)
        session.add(job)
        session.flush()
        return job.id


def test_a_lease_holds_whatever_the_schedulers_clocks(db_url, device_key, skew):
    """A lease taken and renewed by a scheduler 40 s behind is not taken over by one 40 s
    ahead until it really lapses."""
    factory = session_factory(db_url)
    job_id = _job(factory, device_key)
    skew(-SKEW_S)
    assert job_id in scheduler_main.claim_jobs(factory, "behind", lease_s=TIMEOUT_S)
    assert JobLease(factory, job_id, "behind", TIMEOUT_S, 1.0).renew()
    with session_scope(factory) as session:
        expires = session.scalar(select(Job.lease_expires_at).where(Job.id == job_id))
    assert _age_s(factory, expires) == pytest.approx(-TIMEOUT_S, abs=5)
    skew(SKEW_S)
    assert job_id not in scheduler_main.claim_jobs(factory, "ahead", lease_s=TIMEOUT_S)
    with session_scope(factory) as session:  # the holder dies: its lease runs out
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=db_now(-1)))
    assert job_id in scheduler_main.claim_jobs(factory, "ahead", lease_s=TIMEOUT_S)


class _MarksDone:
    """A broker and worker in one: what is sent is measured (marked done) at once."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.sent: list[list[int]] = []

    def send_task(self, name: str, args: list, queue: str) -> None:
        self.sent.append(sorted(args[0]))
        _finish(self.factory, args[0])


def _finish(factory, trial_ids: list[int]) -> None:
    with session_scope(factory) as session:
        session.execute(
            update(Trial)
            .where(Trial.id.in_(trial_ids))
            .values(state=TrialState.DONE, status="ok", latency=1e-3)
        )


def test_resends_only_what_is_overdue_by_the_database(db_url, device_key, skew):
    """With the scheduler's clock 40 s ahead, a trial dispatched 20 s ago (redispatch after
    30 s) is left alone and one dispatched 31 s ago is sent again."""
    factory = session_factory(db_url)
    job_id = _job(factory, device_key)
    key = f"clock-{uuid.uuid4().hex[:8]}"
    with session_scope(factory) as session:
        session.add(WorkloadRow(key=key, name="clock", wire={}, analysis=[]))
        session.flush()
        trials = [
            Trial(
                job_id=job_id,
                workload_key=key,
                target_key="t",
                device_key=device_key,
                config_digest=digest,
                config={},
                state=TrialState.QUEUED,
                dispatched_at=db_now(-age),
                dispatch_count=1,
            )
            for digest, age in (("overdue", TIMEOUT_S + 1), ("recent", TIMEOUT_S - 10))
        ]
        session.add_all(trials)
        session.flush()
        overdue, recent = (t.id for t in trials)
    skew(SKEW_S)
    app = _MarksDone(factory)
    measurer = DispatchMeasurer(
        factory, app, job_id, device_key, "t", redispatch_s=TIMEOUT_S, poll_s=0.05
    )
    measurer._sent.update({overdue, recent})  # this scheduler sent both
    answer = threading.Timer(1.0, _finish, args=(factory, [recent]))  # its worker's result
    answer.start()
    try:
        measurer.wait([overdue, recent])
    finally:
        answer.join()
    assert app.sent == [[overdue]]


# ---- real skew: a heartbeat process under faketime, on a private PostgreSQL ----------

HEARTBEATS = """
import sys, time
from datetime import UTC, datetime
from autosched.db.session import session_factory, session_scope
from autosched.service import farm
from autosched.service.tokens import Caller
url, worker_id, beats, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
print(datetime.now(UTC).timestamp(), flush=True)
factory = session_factory(url)
for _ in range(beats):
    with session_scope(factory) as session:
        farm.heartbeat(session, worker_id, caller=Caller.trusted())
    print("beat", flush=True)
    time.sleep(interval)
"""


def _beating(url: str, worker_id: str, offset: str, beats: int) -> subprocess.Popen[str]:
    faketime = shutil.which("faketime")
    assert faketime, "the clock-skew test needs faketime (apt-get install faketime)"
    return subprocess.Popen(
        [faketime, "-f", offset, sys.executable, "-c", HEARTBEATS, url, worker_id, str(beats),
         "0.3"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def skew_db(private_pg_url):
    upgrade_database(private_pg_url)
    return private_pg_url


@pytest.mark.parametrize("offset", ["-40s", "+40s"])
def test_heartbeats_from_a_process_40s_off(skew_db, device_key, offset):
    """Behind: the live worker stays online through heartbeats under a 4 s timeout. Ahead:
    once it stops beating, it is reaped about 4 s later, not 44 s later."""
    factory = session_factory(skew_db)
    worker_id = _register(factory, device_key)
    behind = offset.startswith("-")
    proc = _beating(skew_db, worker_id, offset, beats=12 if behind else 2)
    try:
        assert proc.stdout is not None
        their_clock = float(proc.stdout.readline())
        assert (their_clock - time.time()) == pytest.approx(float(offset[:-1]), abs=5)
        assert proc.stdout.readline().strip() == "beat"
        if behind:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                assert _reap(factory, timeout_s=4) == 0
                time.sleep(0.2)
            assert _worker(factory, worker_id).state == WorkerState.ONLINE
        proc.wait(60)
        assert proc.returncode == 0
        if not behind:
            stopped = time.monotonic()
            while _worker(factory, worker_id).state == WorkerState.ONLINE:
                _reap(factory, timeout_s=4)
                assert time.monotonic() - stopped < 12, "a dead worker ahead in time stays"
                time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert abs(_age_s(factory, _worker(factory, worker_id).last_heartbeat)) < 15
