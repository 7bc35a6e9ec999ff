"""The device farm end to end: real Celery worker processes (``python -m workers.main``),
the scheduler (in a thread, or as a process where it gets killed), PostgreSQL and Redis —
and once the embedded default, SQLite with kombu's SQLite broker and no Redis."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from subprocess import Popen

import pytest
from sqlalchemy import select

from autosched.db import BestConfig, Job, JobWorkload, Trial, Worker, session_factory, session_scope
from autosched.db.models import utcnow
from autosched.db.session import upgrade_database
from autosched.hardware import detect_hardware
from autosched.service.celery_app import make_celery
from autosched.service.device_tasks import MEASURE_TASK, device_queue
from autosched.service.dispatch import DispatchMeasurer
from autosched.settings import Settings
from autosched.tune.trial import MeasureInput, TrialStatus
from autosched.vocabulary import TrialState, WorkerState
from tests.farm_support import (
    create_job,
    done_trials,
    job,
    kill,
    online,
    salted_matmul,
    scheduler_thread,
    service_env,
    service_settings,
    start,
    stop,
    store,
    trials_of,
    wait_for,
    wait_for_job_end,
)
from tests.fault_outcome import check_jobs

HW = detect_hardware()
TARGET = HW.target_key
STARTUP_S = 90  # a worker imports TVM and Celery; the machine may be busy


@dataclass
class Farm:
    factory: object
    settings: Settings
    data_dir: Path
    keys: tuple[str, str]
    workers: dict[str, str]  # device key -> worker id


@pytest.fixture(scope="module")
def farm(pg_url, redis_url, tmp_path_factory) -> Iterator[Farm]:
    """Two workers, each on a device key of its own, for the module's tests."""
    data_dir = tmp_path_factory.mktemp("farm")
    keys = (f"test-a-{uuid.uuid4().hex[:8]}", f"test-b-{uuid.uuid4().hex[:8]}")
    env = service_env(data_dir, pg_url, redis_url)
    procs = [
        start("workers.main", env, data_dir / f"worker-{i}.log", "--device-key", key)
        for i, key in enumerate(keys)
    ]
    factory = session_factory(pg_url)
    try:
        wait_for(lambda: all(online(factory, k) for k in keys), STARTUP_S, "workers online")
        workers = {k: online(factory, k)[0] for k in keys}
        yield Farm(factory, service_settings(data_dir, pg_url, redis_url), data_dir, keys, workers)
    finally:
        for p in procs:
            stop(p)


@pytest.fixture
def scheduler(request) -> Iterator[None]:
    """``run_scheduler`` in a thread, for the settings of the test's ``farm``/``embedded``."""
    with scheduler_thread(request.getfixturevalue("scheduler_settings")):
        yield


@pytest.fixture
def scheduler_settings(farm) -> Settings:
    return farm.settings


def _assert_no_duplicates(trials: list[Trial]) -> None:
    digests = [(t.workload_key, t.config_digest) for t in trials]
    assert len(digests) == len(set(digests))


def test_jobs_complete_on_their_own_device_with_a_verified_best(farm, scheduler):
    factory = farm.factory
    key_a, key_b = farm.keys
    wl_a, wl_b = salted_matmul("farm_a"), salted_matmul("farm_b")
    store(factory, wl_a, wl_b)
    job_a = create_job(factory, [wl_a.key], key_a, trials=16, seed=1)
    job_b = create_job(factory, [wl_b.key], key_b, trials=4, strategy="random")

    for job_id in (job_a, job_b):
        ended = wait_for_job_end(factory, job_id, 240)
        assert ended.state == "succeeded", ended.error
        assert ended.target_key == TARGET and ended.started_at and ended.finished_at

    trials_a, trials_b = done_trials(factory, job_a), done_trials(factory, job_b)
    assert len(trials_a) == len(trials_of(factory, job_a)) == 16
    assert len(trials_b) == len(trials_of(factory, job_b)) == 4
    _assert_no_duplicates(trials_a)
    # Each device key's trials went only to that device's worker.
    assert {t.worker_id for t in trials_a} == {farm.workers[key_a]}
    assert {t.worker_id for t in trials_b} == {farm.workers[key_b]}
    assert {t.device_key for t in trials_a} == {key_a}

    with session_scope(factory) as session:
        best = session.get(BestConfig, (wl_a.key, TARGET))
        static = session.scalar(
            select(JobWorkload.static_latency).where(JobWorkload.job_id == job_a)
        )
    ok = [t for t in trials_a if t.status == TrialStatus.OK]
    assert ok and best is not None
    assert best.latency == pytest.approx(min(t.latency for t in ok))
    assert best.trial_id in {t.id for t in ok} and best.device_key == key_a
    assert best.worker_id == farm.workers[key_a] and best.gflops > 0 and best.trace
    assert static is not None and static >= best.latency


def test_a_task_delivered_twice_is_stored_once(farm):
    """The same trial ids sent twice (a redelivery): measured once, result kept."""
    factory = farm.factory
    key = farm.keys[0]
    workload = salted_matmul("farm_dup")
    store(factory, workload)
    # A job no scheduler will touch: running under a lease that is not about to lapse.
    job_id = create_job(factory, [workload.key], key, trials=4)
    with session_scope(factory) as session:
        row = session.get(Job, job_id)
        row.state, row.scheduler_id = "running", "test"
        row.lease_expires_at = utcnow() + timedelta(hours=1)

    from autosched.schedule import build_template, static_config

    configs = [static_config(workload.prim_func, HW)]
    import random

    rng = random.Random(3)
    configs.append(build_template(workload.prim_func, HW).sample(rng))
    measurer = DispatchMeasurer(factory, None, job_id, key, TARGET)
    inputs = [MeasureInput(workload.to_json(), c.to_json(), HW.to_json()) for c in configs]
    first, sentinel = measurer.ensure_trials(inputs)

    app = make_celery(farm.settings)
    app.send_task(MEASURE_TASK, args=[[first]], queue=device_queue(key))
    app.send_task(MEASURE_TASK, args=[[first]], queue=device_queue(key))
    wait_for(lambda: all(t.state == "done" for t in trials_of(factory, job_id)[:1]), 60, "first")
    recorded = trials_of(factory, job_id)[0]
    # The worker takes its queue in order: once a later task is done, so is the duplicate.
    app.send_task(MEASURE_TASK, args=[[sentinel]], queue=device_queue(key))
    wait_for(lambda: len(done_trials(factory, job_id)) == 2, 60, "sentinel")
    again = trials_of(factory, job_id)[0]
    assert (again.latency, again.finished_at, again.worker_id, again.latencies) == (
        recorded.latency,
        recorded.finished_at,
        recorded.worker_id,
        recorded.latencies,
    )
    log = (farm.data_dir / "worker-0.log").read_text()
    assert "already claimed or finished" in log


def test_cancel_stops_a_running_job_promptly(farm, scheduler):
    factory = farm.factory
    workload = salted_matmul("farm_cancel")
    store(factory, workload)
    job_id = create_job(factory, [workload.key], farm.keys[0], trials=400)
    wait_for(lambda: len(done_trials(factory, job_id)) >= 5, 120, "a few trials")
    with session_scope(factory) as session:
        session.get(Job, job_id).cancel_requested = True
    ended = wait_for_job_end(factory, job_id, 15)
    assert ended.state == "cancelled" and ended.finished_at is not None
    # Nothing left waiting on the device, and the job stopped far short of its budget.
    wait_for(
        lambda: all(t.state in ("done", "cancelled") for t in trials_of(factory, job_id)),
        30,
        "in-flight trials to settle",
    )
    assert len(done_trials(factory, job_id)) < 40


@pytest.mark.slow  # fault injection: SIGKILL
@pytest.mark.fault
def test_a_killed_scheduler_is_resumed_without_measuring_twice(farm):
    factory = farm.factory
    workload = salted_matmul("farm_resume")
    store(factory, workload)
    job_id = create_job(factory, [workload.key], farm.keys[0], trials=16, seed=2)
    env = service_env(farm.data_dir, farm.settings.database_url, farm.settings.redis_url)
    log = farm.data_dir / "scheduler.log"
    first = start("services.scheduler.main", env, log)
    second: Popen | None = None
    try:
        in_flight = ("queued", "running")
        wait_for(
            lambda: (
                len(done_trials(factory, job_id)) >= 4
                and any(t.state in in_flight for t in trials_of(factory, job_id))
            ),
            120,
            "the job half-way with a batch in flight",
            poll=0.02,
        )
        kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        before = job(factory, job_id)
        assert before.state == "running" and before.scheduler_id
        second = start("services.scheduler.main", env, log)
        wait_for(
            lambda: job(factory, job_id).scheduler_id != before.scheduler_id,
            120,
            "another scheduler to take the job over",
        )
        recover_s = time.monotonic() - killed_at
        ended = wait_for_job_end(factory, job_id, 240)
        assert ended.state == "succeeded", ended.error
        assert ended.scheduler_id != before.scheduler_id
    finally:
        kill(first)
        if second is not None:
            stop(second)
    check_jobs("scheduler_sigkill", factory, [job_id], 16, recover_s)
    trials = trials_of(factory, job_id)
    assert len(trials) == 16 and all(t.state == TrialState.DONE for t in trials)
    _assert_no_duplicates(trials)


@pytest.mark.slow  # fault injection: SIGKILL
@pytest.mark.fault
def test_a_killed_worker_is_reaped_and_its_trials_finish_elsewhere(farm, scheduler):
    factory = farm.factory
    key = f"test-c-{uuid.uuid4().hex[:8]}"
    env = service_env(farm.data_dir, farm.settings.database_url, farm.settings.redis_url)
    doomed = start("workers.main", env, farm.data_dir / "worker-doomed.log", "--device-key", key)
    spare: Popen | None = None
    try:
        wait_for(lambda: online(factory, key), STARTUP_S, "the first worker online")
        (doomed_id,) = online(factory, key)
        workload = salted_matmul("farm_reap")
        store(factory, workload)
        job_id = create_job(factory, [workload.key], key, trials=8)

        def claimed() -> list[int]:
            return [t.id for t in trials_of(factory, job_id) if t.state == "running"]

        taken = wait_for(claimed, 120, "a batch claimed by the first worker", poll=0.02)
        kill(doomed, signal.SIGKILL)
        killed_at = time.monotonic()
        spare = start("workers.main", env, farm.data_dir / "worker-spare.log", "--device-key", key)
        wait_for(
            lambda: all(
                t.worker_id not in (None, doomed_id)
                for t in trials_of(factory, job_id)
                if t.id in taken
            ),
            180,
            "the dead worker's trials claimed by the spare",
        )
        recover_s = time.monotonic() - killed_at
        ended = wait_for_job_end(factory, job_id, 240)
        assert ended.state == "succeeded", ended.error
        (spare_id,) = online(factory, key)
    finally:
        kill(doomed)
        if spare is not None:
            stop(spare)
    check_jobs("worker_sigkill_mid_batch", factory, [job_id], 8, recover_s)
    trials = {t.id: t for t in trials_of(factory, job_id)}
    assert len(trials) == 8 and all(t.state == "done" for t in trials.values())
    assert all(trials[i].worker_id == spare_id and trials[i].dispatch_count >= 2 for i in taken)
    _assert_no_duplicates(list(trials.values()))
    with session_scope(factory) as session:
        assert session.get(Worker, doomed_id).state == WorkerState.OFFLINE
        assert session.get(Worker, spare_id).state == WorkerState.OFFLINE  # clean shutdown


@pytest.fixture
def embedded(tmp_path) -> Iterator[Settings]:
    """No PostgreSQL, no Redis: a SQLite database and kombu's SQLite broker in data_dir."""
    settings = service_settings(tmp_path, None, None)
    assert settings.broker_url.startswith("sqla+sqlite:///")
    upgrade_database(settings.resolved_database_url)
    yield settings


# kombu's SQLAlchemy transport uses a loader option SQLAlchemy 2.1 deprecates (kombu's issue).
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_the_embedded_broker_runs_a_job(embedded, device_key, tmp_path):
    factory = session_factory(embedded.resolved_database_url)
    env = service_env(tmp_path, None, None)
    worker = start("workers.main", env, tmp_path / "worker.log", "--device-key", device_key)
    try:
        workload = salted_matmul("farm_embedded")
        store(factory, workload)
        job_id = create_job(factory, [workload.key], device_key, trials=6, strategy="random")
        with scheduler_thread(embedded):
            ended = wait_for_job_end(factory, job_id, 180)
        assert ended.state == "succeeded", ended.error
    finally:
        stop(worker)
    trials = trials_of(factory, job_id)
    assert len(trials) == 6 and all(t.state == "done" for t in trials)
    with session_scope(factory) as session:
        assert session.get(BestConfig, (workload.key, TARGET)) is not None
    assert (tmp_path / "broker.db").exists()
