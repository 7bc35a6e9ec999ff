"""The worker's recording, in process, on both databases: claims are conditional, results
are stored once, the best config only ever gets faster, SQL records dedupe across jobs."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
from sqlalchemy import select, update

from autosched.db import (
    BestConfig,
    Job,
    Trial,
    WorkloadRow,
    session_factory,
    session_scope,
    upgrade_database,
)
from autosched.hardware import detect_hardware
from autosched.schedule import build_template, static_config
from autosched.service.best_configs import offer_best
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.measure_trials import FailurePolicy, measure_trials
from autosched.service.sql_database import SQLDatabase
from autosched.service.workloads import ensure_template
from autosched.space import Template
from autosched.tune.trial import MeasureInput, MeasureResult, TrialRecord, TrialStatus
from autosched.vocabulary import TrialState
from tests.farm_support import FakeMeasurer, create_job, matmul, register_worker, store
from tests.fault_outcome import check_jobs

HW = detect_hardware()
TARGET = HW.target_key


class RecordingApp:
    """Stands in for the Celery app: remembers what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int], str]] = []

    def send_task(self, name: str, args: list, queue: str) -> None:
        self.sent.append((name, list(args[0]), queue))


_SHAPES = itertools.count()


@pytest.fixture
def workload():
    """A workload of its own per test (records and best configs are shared by key)."""
    return matmul(16 + 4 * next(_SHAPES), 24, 20, "worker_measure_mm")


@pytest.fixture
def configs(workload):
    template: Template = build_template(workload.prim_func, HW)
    rng = random.Random(0)
    out = [static_config(workload.prim_func, HW)]
    while len(out) < 8:
        c = template.sample(rng)
        if c.to_json() not in [o.to_json() for o in out]:
            out.append(c)
    return out


@pytest.fixture
def setup(db_url, device_key, workload):
    factory = session_factory(db_url)
    (key,) = store(factory, workload)
    with session_scope(factory) as session:
        ensure_template(session, workload, HW)
    job_id = create_job(factory, [key], device_key, trials=8)
    worker_id = register_worker(factory, device_key)
    return factory, job_id, worker_id


def _trials(session, job_id: int) -> list[Trial]:
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id)))


def _queue(factory, job_id, device_key, workload, configs) -> list[int]:
    measurer = DispatchMeasurer(factory, RecordingApp(), job_id, device_key, TARGET)
    inputs = [MeasureInput(workload.to_json(), c.to_json(), HW.to_json()) for c in configs]
    return measurer.ensure_trials(inputs)


def test_a_redelivered_batch_is_stored_once(setup, device_key, workload, configs):
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs[:4])
    assert _queue(factory, job_id, device_key, workload, configs[:4]) == ids  # rows reused

    measurer = FakeMeasurer()
    assert measure_trials(factory, ids, worker_id, measurer) == 4
    with session_scope(factory) as session:
        first = {t.id: (t.latency, t.finished_at, t.worker_id) for t in _trials(session, job_id)}

    # The same task again (a redelivery), and from another worker: nothing is re-measured.
    other = register_worker(factory, device_key)
    assert measure_trials(factory, ids, worker_id, measurer) == 0
    assert measure_trials(factory, ids, other, measurer) == 0
    assert len(measurer.calls) == 1
    with session_scope(factory) as session:
        again = {t.id: (t.latency, t.finished_at, t.worker_id) for t in _trials(session, job_id)}
        assert again == first
        assert all(t.state == TrialState.DONE for t in _trials(session, job_id))


def test_a_result_is_dropped_once_the_trial_went_back_to_the_queue(
    setup, device_key, workload, configs
):
    """A worker reaped while measuring must not overwrite the trial another worker now has."""
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs[:2])

    class Reaped(FakeMeasurer):
        def measure(self, inputs):
            with session_scope(factory) as session:  # the scheduler re-queues meanwhile
                session.execute(
                    update(Trial)
                    .where(Trial.id.in_(ids))
                    .values(state=TrialState.QUEUED, worker_id=None, dispatched_at=None)
                )
            return super().measure(inputs)

    assert measure_trials(factory, ids, worker_id, Reaped()) == 0
    with session_scope(factory) as session:
        assert {t.state for t in _trials(session, job_id)} == {TrialState.QUEUED}


def test_concurrent_workers_claim_each_trial_once(setup, device_key, workload, configs):
    factory, job_id, _ = setup
    ids = _queue(factory, job_id, device_key, workload, configs)
    workers = [register_worker(factory, device_key) for _ in range(3)]
    stored: list[int] = []
    barrier = threading.Barrier(len(workers))

    def work(worker_id: str) -> None:
        barrier.wait()
        stored.append(measure_trials(factory, ids, worker_id, FakeMeasurer(0.05)))

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(stored) == len(ids)
    with session_scope(factory) as session:
        trials = list(session.scalars(select(Trial).where(Trial.job_id == job_id)))
    assert all(t.state == TrialState.DONE and t.worker_id in workers for t in trials)


def test_trials_of_a_cancelled_job_are_not_claimed(setup, device_key, workload, configs):
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs[:2])
    with session_scope(factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    measurer = FakeMeasurer()
    assert measure_trials(factory, ids, worker_id, measurer) == 0
    assert measurer.calls == []


def test_best_config_only_gets_faster_even_under_concurrency(setup, device_key, workload, configs):
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs)
    with session_scope(factory) as session:
        trials = list(session.scalars(select(Trial).where(Trial.id.in_(ids)).order_by(Trial.id)))
    latencies = [1e-3 * (len(trials) - i) for i in range(len(trials))]  # last is fastest

    won: list[bool] = []

    def offer(trial: Trial, latency: float) -> None:
        won.append(offer_best(factory, trial, latency, HW, worker_id, device_key))

    pairs = list(zip(trials, latencies, strict=True))
    random.Random(0).shuffle(pairs)
    threads = [threading.Thread(target=offer, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(factory) as session:
        best = session.get(BestConfig, (workload.key, TARGET))
        assert best is not None
        assert best.latency == pytest.approx(min(latencies))
        assert best.trial_id == trials[-1].id and best.config == trials[-1].config
        assert best.trace and best.tvm_version and best.device_key == device_key
        flops = session.get(WorkloadRow, workload.key).flops
        assert best.gflops == pytest.approx(flops / min(latencies) / 1e9)
    assert any(won) and not all(won)
    # A slower result never replaces it.
    assert not offer_best(factory, trials[0], 1.0, HW, worker_id, device_key)


def test_sql_database_dedupes_across_jobs(setup, device_key, workload, configs):
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs[:3])
    measure_trials(factory, ids, worker_id, FakeMeasurer())
    # A second job measured one of the same configs (and one new one).
    second = create_job(factory, [workload.key], device_key, trials=4)
    ids2 = _queue(factory, second, device_key, workload, [configs[0], configs[3]])
    measure_trials(factory, ids2, worker_id, FakeMeasurer())

    db = SQLDatabase(factory)
    records = db.records(workload.key, TARGET)
    assert (
        [r.digest for r in records]
        == [
            TrialRecord(workload.key, TARGET, c, None).digest  # type: ignore[arg-type]
            for c in configs[:4]
        ]
    )
    assert db.best(workload.key, TARGET) == min(records, key=lambda r: r.result.latency)
    assert db.records(workload.key, "llvm/other/1c/128b") == []

    # commit(): a recorded trial is a no-op; a record measured elsewhere is stored once.
    db_job = SQLDatabase(factory, second)
    db_job.commit(records[0])
    failed = TrialRecord(
        workload.key, TARGET, configs[4], MeasureResult(TrialStatus.BUILD_ERROR, float("inf"), "x")
    )
    db_job.commit(failed)
    db_job.commit(failed)
    records = db.records(workload.key, TARGET)
    assert len(records) == 5 and records[-1].result.error == "x"
    assert db.best(workload.key, TARGET).result.status == TrialStatus.OK


def test_a_measurer_error_is_recorded_and_a_shutdown_releases_the_claims(
    setup, device_key, workload, configs
):
    factory, job_id, worker_id = setup
    ids = _queue(factory, job_id, device_key, workload, configs[:4])

    class Broken(FakeMeasurer):
        def measure(self, inputs):
            if len(self.calls) == 0:
                self.calls.append(inputs)
                raise SystemExit(1)  # the worker is being shut down mid-batch
            raise ValueError("boom")

    broken = Broken()
    with pytest.raises(SystemExit):
        measure_trials(factory, ids[:2], worker_id, broken)
    with session_scope(factory) as session:
        assert {t.state for t in _trials(session, job_id)} == {TrialState.QUEUED}
        assert all(t.worker_id is None for t in _trials(session, job_id))

    # A broken measurer is this worker's fault, not the kernels': each trial goes back to
    # the queue with the reason, and after the attempts cap it is recorded as failed.
    policy = FailurePolicy(max_attempts=2, quarantine_after=100)
    assert measure_trials(factory, ids, worker_id, broken, policy) == 0
    with session_scope(factory) as session:
        trials = _trials(session, job_id)
    assert {t.state for t in trials} == {TrialState.QUEUED}
    assert all(t.attempts == 1 and "ValueError: boom" in t.last_error for t in trials)
    assert measure_trials(factory, ids, worker_id, broken, policy) == 4  # failures are data
    with session_scope(factory) as session:
        trials = _trials(session, job_id)
    assert {t.status for t in trials} == {TrialStatus.ENV_ERROR}
    assert all("ValueError: boom" in t.error and t.latency is None for t in trials)


@pytest.mark.slow
@pytest.mark.fault
def test_results_measured_while_postgresql_restarts_are_stored_once_it_is_back(
    private_pg, private_pg_url, device_key
):
    """The database goes down while the worker measures a batch and is back 2 s later: the
    worker stores its results when it can (no trial left claimed, none stored twice)."""
    upgrade_database(private_pg_url)
    factory = session_factory(private_pg_url)
    workload = matmul(20, 24, 20, "worker_write_outage")
    (key,) = store(factory, workload)
    with session_scope(factory) as session:
        ensure_template(session, workload, HW)
    job_id = create_job(factory, [key], device_key, trials=4)
    worker_id = register_worker(factory, device_key)
    template = build_template(workload.prim_func, HW)
    configs = [static_config(workload.prim_func, HW)]
    rng = random.Random(1)
    while len(configs) < 4:
        if (c := template.sample(rng)).to_json() not in [o.to_json() for o in configs]:
            configs.append(c)
    ids = _queue(factory, job_id, device_key, workload, configs)
    restarted: list[float] = []

    class MeasuredDuringAnOutage(FakeMeasurer):
        def measure(self, inputs):
            private_pg.stop()  # the batch is claimed; its results have nowhere to go

            def back() -> None:
                time.sleep(2)
                private_pg.start()
                restarted.append(time.monotonic())

            threading.Thread(target=back, daemon=True).start()
            return super().measure(inputs)

    policy = FailurePolicy(write_retry_s=60)
    assert measure_trials(factory, ids, worker_id, MeasuredDuringAnOutage(), policy) == 4
    recover_s = time.monotonic() - restarted[0]
    with session_scope(factory) as session:
        assert {t.state for t in _trials(session, job_id)} == {TrialState.DONE}
    check_jobs("worker_write_during_postgres_outage", factory, [job_id], 4, recover_s, 4)
