"""The job runner in process (SQLite, a fake app measuring in threads): exact budgets,
static first, round-robin over workloads, warm start across jobs, resume of a job whose
batch was in flight when its scheduler stopped, and failures recorded on the job."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from autosched.db import BestConfig, JobWorkload, session_factory, session_scope
from autosched.hardware import detect_hardware
from autosched.service.device_gate import DeviceGate
from autosched.service.device_tasks import REMEASURE_TASK
from autosched.service.job_phases import REMEASURE_TOP
from autosched.service.job_runner import run_job
from autosched.service.measure_trials import measure_trials
from autosched.service.remeasure import remeasure_trials
from autosched.settings import Settings
from autosched.tune.trial import MeasureResult, config_digest
from services.scheduler.main import claim_jobs
from tests.farm_support import (
    FakeMeasurer,
    create_job,
    done_trials,
    job,
    matmul,
    register_worker,
    store,
    trials_of,
    wait_for,
)

HW = detect_hardware()
SETTINGS = Settings(heartbeat_interval_s=0.2, heartbeat_timeout_s=2, batch_size=4)


class FakeFarm:
    """``send_task`` hands the ids to a thread that measures them (unless paused)."""

    def __init__(self, factory, worker_id: str) -> None:
        self.factory = factory
        self.worker_id = worker_id
        self.paused = False
        self.fail_sends: Exception | None = None
        self.sent: list[list[int]] = []
        self.remeasured: list[list[int]] = []
        self.remeasure_measurer: FakeMeasurer | None = None

    def send_task(self, name: str, args: list, queue: str) -> None:
        if self.fail_sends is not None:
            raise self.fail_sends
        measurer = FakeMeasurer()
        if name == REMEASURE_TASK:  # the job's final re-measurement of its best few
            self.remeasured.append(list(args[0]))
            target, measurer = remeasure_trials, self.remeasure_measurer or measurer
        else:
            self.sent.append(list(args[0]))
            target = measure_trials
        if not self.paused:
            threading.Thread(
                target=target, args=(self.factory, list(args[0]), self.worker_id, measurer)
            ).start()


@pytest.fixture
def farm(sqlite_url, device_key):
    factory = session_factory(sqlite_url)
    return factory, FakeFarm(factory, register_worker(factory, device_key))


def _run(factory, app, job_id: int, stop: threading.Event | None = None, name: str = "s1"):
    assert job_id in claim_jobs(factory, name, lease_s=5)
    return run_job(
        job_id,
        factory,
        app,
        name,
        stop,
        settings=SETTINGS,
        gate=DeviceGate(1),
        poll_s=0.05,
    )


def test_budget_is_exact_and_static_goes_first(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(32, 32, 24, "jr_a"), matmul(24, 40, 16, "jr_b"))
    job_id = create_job(factory, keys, device_key, trials=6, seed=3)
    assert _run(factory, app, job_id) == "succeeded"

    ended = job(factory, job_id)
    assert ended.target_key == HW.target_key and ended.started_at and ended.finished_at
    trials = trials_of(factory, job_id)
    assert Counter(t.workload_key for t in trials) == {keys[0]: 6, keys[1]: 6}
    assert all(t.state == "done" for t in trials)
    assert len({(t.workload_key, t.config_digest) for t in trials}) == 12
    # Static configs first (one batch), then round-robin: each batch is one workload's.
    assert len(app.sent[0]) == 2
    batches = [{t.workload_key for t in trials if t.id in b} for b in app.sent[1:]]
    assert all(len(b) == 1 for b in batches)
    assert [next(iter(b)) for b in batches[:2]] == keys
    with session_scope(factory) as session:
        statics = session.scalars(
            select(JobWorkload.static_latency).where(JobWorkload.job_id == job_id)
        )
        assert all(s is not None for s in statics)


def test_static_strategy_measures_only_the_static_config(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(28, 20, 12, "jr_static"))
    job_id = create_job(factory, keys, device_key, trials=50, strategy="static")
    assert _run(factory, app, job_id) == "succeeded"
    assert len(trials_of(factory, job_id)) == 1


def test_a_second_job_warm_starts_and_measures_nothing_known(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(36, 12, 20, "jr_warm"))
    first = create_job(factory, keys, device_key, trials=8, strategy="random", seed=1)
    assert _run(factory, app, first) == "succeeded"
    second = create_job(factory, keys, device_key, trials=8, strategy="random", seed=1)
    assert _run(factory, app, second) == "succeeded"
    one, two = trials_of(factory, first), trials_of(factory, second)
    assert len(two) == 8  # its own budget, all new configs
    assert not {t.config_digest for t in one} & {t.config_digest for t in two}
    with session_scope(factory) as session:  # the static result came from the first job
        static = session.scalar(
            select(JobWorkload.static_latency).where(JobWorkload.job_id == second)
        )
    assert static is not None


def test_a_stopped_job_resumes_and_finishes_its_in_flight_batch(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(20, 28, 36, "jr_resume"))
    job_id = create_job(factory, keys, device_key, trials=10, seed=5)
    stop = threading.Event()
    out: list = []
    thread = threading.Thread(target=lambda: out.append(_run(factory, app, job_id, stop)))
    thread.start()
    wait_for(lambda: len(done_trials(factory, job_id)) >= 5, 30, "5 trials")
    app.paused = True  # the next batch goes out but nobody measures it
    wait_for(lambda: len(trials_of(factory, job_id)) > 5, 30, "a batch in flight")
    stop.set()
    thread.join(10)
    assert out == [None]  # left to be resumed, not failed
    left = job(factory, job_id)
    assert left.state == "running" and left.scheduler_id is None
    in_flight = [t.id for t in trials_of(factory, job_id) if t.state == "queued"]
    assert in_flight

    app.paused = False
    assert _run(factory, app, job_id, name="s2") == "succeeded"
    trials = trials_of(factory, job_id)
    assert len(trials) == 10 and all(t.state == "done" for t in trials)
    assert len({t.config_digest for t in trials}) == 10
    assert any(set(in_flight) <= set(batch) for batch in app.sent[-3:])  # sent again


def test_an_internal_error_fails_the_job_with_its_message(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(12, 12, 44, "jr_fail"))
    job_id = create_job(factory, keys, device_key, trials=4)
    app.fail_sends = RuntimeError("a bug in the send")
    assert _run(factory, app, job_id) == "failed"
    ended = job(factory, job_id)
    assert "a bug in the send" in (ended.error or "") and ended.finished_at
    assert {t.state for t in trials_of(factory, job_id)} == {"cancelled"}


def test_a_transient_error_releases_the_job_to_be_resumed(farm, device_key):
    """The broker (or database) unreachable is not the job's fault: it is left, unheld,
    to the next claim, which finishes it with its exact budget."""
    factory, app = farm
    keys = store(factory, matmul(12, 20, 44, "jr_transient"))
    job_id = create_job(factory, keys, device_key, trials=4)
    app.fail_sends = ConnectionError("broker unreachable")
    assert _run(factory, app, job_id) is None
    left = job(factory, job_id)
    assert left.state == "running" and left.scheduler_id is None and left.error is None
    app.fail_sends = None
    assert _run(factory, app, job_id, name="s2") == "succeeded"
    assert len(done_trials(factory, job_id)) == 4


def test_a_job_waits_for_a_worker_of_its_device(sqlite_url, device_key):
    """No online worker: the job stays queued (and the thread ends when stopped)."""
    factory = session_factory(sqlite_url)
    keys = store(factory, matmul(8, 16, 8, "jr_wait"))
    job_id = create_job(factory, keys, device_key, trials=4)
    stop = threading.Event()
    out: list = []
    thread = threading.Thread(target=lambda: out.append(_run(factory, None, job_id, stop)))
    thread.start()
    time.sleep(0.5)
    assert job(factory, job_id).state == "queued"
    stop.set()
    thread.join(10)
    assert out == [None] and job(factory, job_id).scheduler_id is None


def test_digest_helper_matches_rows(farm, device_key):
    """Trial digests are ``config_digest`` of the stored config (records and rows agree)."""
    factory, app = farm
    keys = store(factory, matmul(16, 8, 24, "jr_digest"))
    job_id = create_job(factory, keys, device_key, trials=3, strategy="random")
    _run(factory, app, job_id)
    from autosched.space import Config

    for t in trials_of(factory, job_id):
        assert t.config_digest == config_digest(Config.from_json(t.config))


class FasterAgain(FakeMeasurer):
    """Re-measurements come back twice as fast (the first timings fell in a slow spell)."""

    def measure(self, inputs):
        return [
            MeasureResult(r.status, r.latency / 2, latencies=(r.latency / 2,))
            for r in super().measure(inputs)
        ]


def test_final_remeasurement_keeps_each_trials_lowest_timing(farm, device_key):
    factory, app = farm
    keys = store(factory, matmul(28, 36, 20, "jr_remeasure"))
    job_id = create_job(factory, keys, device_key, trials=9, seed=5)
    app.remeasure_measurer = FasterAgain()
    assert _run(factory, app, job_id) == "succeeded"

    (ids,) = app.remeasured  # one re-measurement: the 4 fastest and the static config
    assert 2 <= len(ids) <= REMEASURE_TOP + 1
    trials = {t.id: t for t in trials_of(factory, job_id)}
    assert len(trials) == 9  # no extra trials: the budget is unchanged
    for trial_id in ids:
        t = trials[trial_id]
        assert t.remeasured_at is not None
        assert len(t.latencies) == 3 and t.latency == min(t.latencies) == t.latencies[0] / 2
    fastest = min(trials.values(), key=lambda t: t.latency)
    assert fastest.id in ids
    with session_scope(factory) as session:
        best = session.get(BestConfig, (keys[0], HW.target_key))
        assert best is not None and best.trial_id == fastest.id
        assert best.latency == fastest.latency
        (jw,) = session.scalars(select(JobWorkload).where(JobWorkload.job_id == job_id)).all()
        static = trials[min(trials)]  # the static config is measured first
        assert jw.static_latency == static.latency
