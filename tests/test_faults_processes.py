"""Faults on a farm of real processes: two schedulers (``python -m services.scheduler.main``)
and two Celery workers (``python -m workers.main``) of one device key, on a private
PostgreSQL and a private Redis (``tests/fault_support.py``).

The four processes start at the same moment on a new, empty database, so four migrators race
(exactly one must migrate) and two schedulers claim the same jobs, both holding some: every
job must be held by one scheduler at a time, which a trigger on the jobs table checks against
the database's own clock. Then PostgreSQL is restarted while a worker measures a batch: the
worker's own writes of that batch must land, and the job must finish its budget exactly.
Last, two more workers whose wall clocks run 40 s ahead and 40 s behind (libfaketime) share
a job. The farm is started once for the module.
Run alone: ``pytest -m fault tests/test_faults_processes.py -s``.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from autosched.db import Trial, session_factory, session_scope
from autosched.db.migrate import current_state
from autosched.vocabulary import TrialState
from tests.farm_support import (
    create_job,
    matmul,
    new_salt,
    online,
    service_env,
    start,
    stop,
    store,
    trials_of,
    wait_for,
    wait_for_job_end,
)
from tests.fault_outcome import check_jobs, results_recorded
from tests.fault_support import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.fault]

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

STARTUP_S = 150  # four processes importing TVM at once on a busy machine
#: Longer than a restart, so neither a worker nor a job's lease lapses while the database is
#: away: what is under test is that their writes survive it, not the reaper.
HEARTBEAT_TIMEOUT_S = "10"
JOB_BUDGET = 8  # two batches a job: the two schedulers' jobs share the device meanwhile

#: Every change of a job's holder, with the lease the previous holder had then (the
#: database's ``now()``, the clock leases are taken and judged by).
LEASE_AUDIT = """
CREATE TABLE lease_changes (
    job_id integer, old_holder text, old_expiry timestamptz, new_holder text,
    at timestamptz DEFAULT now()
);
CREATE FUNCTION record_lease_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.scheduler_id IS NOT NULL AND NEW.scheduler_id IS DISTINCT FROM OLD.scheduler_id THEN
        INSERT INTO lease_changes (job_id, old_holder, old_expiry, new_holder)
        VALUES (NEW.id, OLD.scheduler_id, OLD.lease_expires_at, NEW.scheduler_id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER lease_changes AFTER UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION record_lease_change();
"""


@dataclass
class ProcessFarm:
    pg: PrivatePostgres
    url: str
    factory: sessionmaker[Session]
    device_key: str
    data_dir: Path
    env: dict[str, str]
    processes: dict[str, Popen]  # log name -> process

    def logs(self, prefix: str) -> str:
        return "".join(
            (self.data_dir / f"{name}.log").read_text(errors="replace")
            for name in self.processes
            if name.startswith(prefix)
        )

    def alive(self) -> list[str]:
        return [name for name, proc in self.processes.items() if proc.poll() is None]


@pytest.fixture(scope="module")
def process_farm(
    private_pg: PrivatePostgres, private_redis: PrivateRedis, tmp_path_factory
) -> Iterator[ProcessFarm]:
    """Two schedulers and two workers started together on a new, unmigrated database."""
    private_pg.start()  # no-ops unless an earlier test left them stopped
    private_redis.start()
    url = private_pg.create_database()
    data_dir = tmp_path_factory.mktemp("process_farm")
    device_key = f"test-faults-{uuid.uuid4().hex[:8]}"
    env = service_env(
        data_dir,
        url,
        private_redis.url,
        AUTOSCHED_HEARTBEAT_TIMEOUT_S=HEARTBEAT_TIMEOUT_S,
        AUTOSCHED_TRIAL_UNCLAIMED_RESEND_S="10",
    )
    commands = {
        "scheduler-0": ("services.scheduler.main",),
        "scheduler-1": ("services.scheduler.main",),
        "worker-0": ("workers.main", "--device-key", device_key),
        "worker-1": ("workers.main", "--device-key", device_key),
    }
    processes = {
        name: start(module, env, data_dir / f"{name}.log", *args)
        for name, (module, *args) in commands.items()
    }
    farm = ProcessFarm(private_pg, url, session_factory(url), device_key, data_dir, env, processes)
    try:
        wait_for(lambda: current_state(url).at_head, STARTUP_S, "the schema migrated")
        private_pg.psql(LEASE_AUDIT, database=url.rsplit("/", 1)[1])
        wait_for(lambda: len(online(farm.factory, device_key)) == 2, STARTUP_S, "both workers")
        yield farm
    finally:
        for proc in processes.values():  # all asked at once: they shut down side by side
            if proc.poll() is None:
                proc.terminate()
        for proc in processes.values():
            stop(proc)


def _first_holder(farm: ProcessFarm, job_id: int) -> str | None:
    with session_scope(farm.factory) as session:
        return session.scalar(
            text("SELECT new_holder FROM lease_changes WHERE job_id = :id ORDER BY at LIMIT 1"),
            {"id": job_id},
        )


def _overlapping_leases(farm: ProcessFarm, job_ids: list[int]) -> tuple[int, list[tuple]]:
    """How many holders the jobs had in all, and the changes of holder made while the
    previous holder's lease still ran (two schedulers at once on one job)."""
    with session_scope(farm.factory) as session:
        changes = session.execute(
            text(
                "SELECT job_id, old_holder, old_expiry, new_holder, at FROM lease_changes"
                " WHERE job_id = ANY(:ids) ORDER BY at"
            ),
            {"ids": job_ids},
        ).all()
    holders = {c.new_holder for c in changes}
    overlapping = [tuple(c) for c in changes if c.old_holder is not None and c.old_expiry > c.at]
    return len(holders), overlapping


def test_two_schedulers_and_four_migrators_started_at_once(process_farm: ProcessFarm):
    farm = process_farm
    migrating = [
        name
        for name in farm.processes
        if "migrating:" in (farm.data_dir / f"{name}.log").read_text(errors="replace")
    ]
    assert len(migrating) == 1, f"migrated by {migrating or 'none'}: one migrator only"
    assert sorted(farm.alive()) == sorted(farm.processes), "a process exited at start"

    # Started together, the two poll in step and the first to look takes every job it finds
    # (the other's conditional claims then change nothing). So that both hold a job, the
    # holder of the first is paused (SIGSTOP, well within its lease) while the second is
    # submitted; the third goes to whichever looks first.
    started = time.monotonic()
    holders = {0: _submit_and_wait_for_claim(farm, 0)}
    paused = farm.processes[_scheduler_of(farm, holders[0][1])]
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        holders[1] = _submit_and_wait_for_claim(farm, 1)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    holders[2] = _submit_and_wait_for_claim(farm, 2)
    jobs = list(holders.values())
    assert len({holder for _, holder in jobs}) == 2, f"one scheduler claimed every job: {jobs}"
    for job_id, _ in jobs:
        ended = wait_for_job_end(farm.factory, job_id, 120)
        assert ended.state == "succeeded", ended.error
    elapsed = time.monotonic() - started

    ids = [job_id for job_id, _ in jobs]
    count, overlapping = _overlapping_leases(farm, ids)
    print(f"\n{len(ids)} jobs held by {count} schedulers; migrated by {migrating[0]}")
    assert not overlapping, f"a job taken over while its lease ran: {overlapping}"
    stored = results_recorded(farm.logs("worker-"), ids)
    # Nothing failed here: "recovered" is the time to finish the jobs.
    budget = JOB_BUDGET * len(ids)
    check_jobs("two_schedulers_two_migrators", farm.factory, ids, budget, elapsed, stored)


def _submit_and_wait_for_claim(farm: ProcessFarm, seed: int) -> tuple[int, str]:
    """A new job on the farm's device, once a scheduler claimed it: (job id, its holder)."""
    (key,) = store(farm.factory, matmul(32, 32, 32, f"two_schedulers_{seed}", new_salt()))
    job_id = create_job(farm.factory, [key], farm.device_key, JOB_BUDGET, "random", seed=seed)
    holder = wait_for(functools.partial(_first_holder, farm, job_id), 60, f"job {job_id} claimed")
    return job_id, holder


def _scheduler_of(farm: ProcessFarm, scheduler_id: str) -> str:
    """The farm's name for the scheduler process with this id (``host:pid:nonce``)."""
    pid = int(scheduler_id.split(":")[1])
    return next(name for name, proc in farm.processes.items() if proc.pid == pid)


def _claimed_batch(farm: ProcessFarm, job_id: int, seen: set[int]) -> dict[int, str] | None:
    """A batch of the job a worker claimed since the last look (trial id -> worker id), or
    None; ``seen`` collects the running trials looked at."""
    with session_scope(farm.factory) as session:
        running = dict(
            session.execute(
                select(Trial.id, Trial.worker_id).where(
                    Trial.job_id == job_id, Trial.state == TrialState.RUNNING
                )
            ).all()
        )
    fresh = {i: w for i, w in running.items() if i not in seen}
    seen.update(running)
    return fresh or None


def test_a_postgresql_restart_mid_batch_keeps_the_workers_writes(process_farm: ProcessFarm):
    farm = process_farm
    budget = 16
    (key,) = store(farm.factory, matmul(48, 32, 40, "pg_restart_processes", new_salt()))
    job_id = create_job(farm.factory, [key], farm.device_key, budget, seed=5)

    def done() -> int:
        return sum(t.state == TrialState.DONE for t in trials_of(farm.factory, job_id))

    wait_for(lambda: done() >= 4, 120, "a few trials done")
    # A batch claimed a moment ago (looked for every 20 ms): the restart falls while the
    # worker measures it, and its results are written to the restarted server.
    seen: set[int] = set()
    _claimed_batch(farm, job_id, seen)
    batch = wait_for(lambda: _claimed_batch(farm, job_id, seen), 60, "a fresh batch", 0.02)
    before = done()
    farm.pg.restart()
    back = time.monotonic()
    assert before < budget, "the job ended before the fault"
    wait_for(lambda: done() > before, 60, "a trial recorded after the restart")
    recover_s = time.monotonic() - back
    ended = wait_for_job_end(farm.factory, job_id, 120)
    assert ended.state == "succeeded", ended.error
    print(f"\nPostgreSQL restarted with trials {sorted(batch)} being measured")

    trials = {t.id: t for t in trials_of(farm.factory, job_id)}
    assert {i: trials[i].worker_id for i in batch} == batch, "the batch was measured again"
    _, overlapping = _overlapping_leases(farm, [job_id])
    assert not overlapping, f"a job taken over while its lease ran: {overlapping}"
    assert sorted(farm.alive()) == sorted(farm.processes), "a process died with the restart"
    stored = results_recorded(farm.logs("worker-"), [job_id])
    check_jobs("postgres_restart_with_processes", farm.factory, [job_id], budget, recover_s, stored)


def _skewed_worker(farm: ProcessFarm, name: str, offset: str, device_key: str) -> Popen:
    """A worker whose wall clock runs ``offset`` off (libfaketime, as NTP drift would: its
    monotonic clock is left alone), it and its sandboxes."""
    assert FAKETIME_LIB.exists(), "the clock-skew test needs libfaketime (apt-get install faketime)"
    env = {
        **farm.env,
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": offset,
        "DONT_FAKE_MONOTONIC": "1",
    }
    proc = start("workers.main", env, farm.data_dir / f"{name}.log", "--device-key", device_key)
    farm.processes[name] = proc  # stopped with the farm
    return proc


def test_workers_40s_ahead_and_behind_share_a_job(process_farm: ProcessFarm):
    """Liveness is judged by the database's clock: neither skewed worker is reaped (behind)
    or taken for dead early (ahead), and both measure their share of the job."""
    farm = process_farm
    key = f"{farm.device_key}-skew"
    _skewed_worker(farm, "worker-ahead", "+40s", key)
    _skewed_worker(farm, "worker-behind", "-40s", key)
    wait_for(lambda: len(online(farm.factory, key)) == 2, STARTUP_S, "both skewed workers")
    workers = set(online(farm.factory, key))
    (workload,) = store(farm.factory, matmul(40, 40, 24, "clock_skew", new_salt()))
    started = time.monotonic()
    job_id = create_job(farm.factory, [workload], key, 16, seed=3)
    ended = wait_for_job_end(farm.factory, job_id, 150)
    assert ended.state == "succeeded", ended.error
    elapsed = time.monotonic() - started

    trials = trials_of(farm.factory, job_id)
    by_worker = {w: sum(t.worker_id == w for t in trials) for w in workers}
    print(f"\ntrials per skewed worker: {sorted(by_worker.values())}")
    assert set(online(farm.factory, key)) == workers, "a skewed worker was reaped"
    assert all(by_worker.values()), f"a skewed worker measured nothing: {by_worker}"
    assert all(t.dispatch_count == 1 for t in trials), "a trial re-sent: taken for lost"
    stored = results_recorded(farm.logs("worker-"), [job_id])
    # Nothing failed here: "recovered" is the time to finish the job.
    check_jobs("worker_clock_skew_40s", farm.factory, [job_id], 16, elapsed, stored)
