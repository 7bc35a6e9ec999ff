"""The scheduler's side of measuring, in process: trial rows, (re)sending, waiting, cancel,
and the per-device gate. A fake app stands in for Celery and measures in a thread."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
from sqlalchemy import update

from autosched.db import Trial, session_factory, session_scope
from autosched.hardware import detect_hardware
from autosched.service.device_gate import DeviceGate
from autosched.service.device_tasks import MEASURE_TASK
from autosched.service.dispatch import STOPPED_MESSAGE, DispatchMeasurer
from autosched.service.job_state import StopReason
from autosched.service.measure_trials import measure_trials
from autosched.tune.trial import MeasureInput, TrialStatus
from autosched.vocabulary import TrialState
from tests.farm_support import FakeMeasurer, create_job, matmul, register_worker, store

HW = detect_hardware()
TARGET = HW.target_key
_SHAPES = itertools.count()


class ThreadWorkerApp:
    """``send_task`` measures the ids in a thread, like a worker would (unless paused)."""

    def __init__(self, factory, worker_id: str, measure: bool = True) -> None:
        self.factory = factory
        self.worker_id = worker_id
        self.measure = measure
        self.sent: list[list[int]] = []
        self.queues: set[str] = set()

    def send_task(self, name: str, args: list, queue: str) -> None:
        assert name == MEASURE_TASK
        self.sent.append(list(args[0]))
        self.queues.add(queue)
        if self.measure:
            threading.Thread(
                target=measure_trials,
                args=(self.factory, list(args[0]), self.worker_id, FakeMeasurer()),
            ).start()


@pytest.fixture
def env(sqlite_url, device_key):
    factory = session_factory(sqlite_url)
    workload = matmul(20 + 4 * next(_SHAPES), 16, 24, "dispatch_mm")
    (key,) = store(factory, workload)
    job_id = create_job(factory, [key], device_key, trials=8)
    worker_id = register_worker(factory, device_key)
    from autosched.schedule import build_template

    template = build_template(workload.prim_func, HW)
    rng = random.Random(1)
    inputs = [
        MeasureInput(workload.to_json(), template.sample(rng).to_json(), HW.to_json())
        for _ in range(4)
    ]
    return factory, job_id, worker_id, inputs


def _measurer(factory, app, job_id, device_key, **kwargs) -> DispatchMeasurer:
    return DispatchMeasurer(factory, app, job_id, device_key, TARGET, poll_s=0.05, **kwargs)


def test_measures_on_the_device_queue_and_reuses_rows(env, device_key):
    factory, job_id, worker_id, inputs = env
    app = ThreadWorkerApp(factory, worker_id)
    results = _measurer(factory, app, job_id, device_key).measure(inputs)
    assert [r.status for r in results] == [TrialStatus.OK] * 4
    assert len(app.sent) == 1 and app.queues == {f"device.{device_key}"}

    # A resumed scheduler (new measurer) asking for the same configs gets the recorded
    # results in order and sends nothing.
    again = _measurer(factory, app, job_id, device_key).measure(inputs[::-1])
    assert again == results[::-1]
    assert len(app.sent) == 1


def test_a_batch_is_split_between_the_devices_workers(env, device_key):
    factory, job_id, worker_id, inputs = env
    register_worker(factory, device_key)
    app = ThreadWorkerApp(factory, worker_id)
    _measurer(factory, app, job_id, device_key).measure(inputs)
    assert sorted(len(s) for s in app.sent) == [2, 2]
    assert sorted(i for s in app.sent for i in s) == sorted({i for s in app.sent for i in s})


def test_resends_trials_that_went_back_to_the_queue(env, device_key):
    factory, job_id, worker_id, inputs = env
    app = ThreadWorkerApp(factory, worker_id, measure=False)
    measurer = _measurer(factory, app, job_id, device_key)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(measurer.measure(inputs)))
    thread.start()
    time.sleep(0.3)
    assert len(app.sent) == 1
    # The worker that got them is reaped: the trials are queued again, undispatched.
    with session_scope(factory) as session:
        session.execute(
            update(Trial)
            .where(Trial.job_id == job_id)
            .values(state=TrialState.QUEUED, dispatched_at=None)
        )
    app.measure = True
    thread.join(10)
    assert out and len(out[0]) == 4
    assert len(app.sent) == 2 and sorted(app.sent[1]) == sorted(app.sent[0])


def test_redispatches_a_trial_pending_too_long(env, device_key):
    factory, job_id, worker_id, inputs = env
    app = ThreadWorkerApp(factory, worker_id, measure=False)
    measurer = _measurer(factory, app, job_id, device_key, redispatch_s=0.3)
    thread = threading.Thread(target=measurer.measure, args=(inputs[:1],))
    thread.start()
    time.sleep(0.5)
    app.measure = True  # the message was lost; the resend is measured
    thread.join(10)
    assert len(app.sent) >= 2
    with session_scope(factory) as session:
        trial = session.query(Trial).filter(Trial.job_id == job_id).one()
        assert trial.state == TrialState.DONE and trial.dispatch_count >= 2


def test_a_stop_condition_ends_the_wait_with_failures_not_exceptions(env, device_key):
    """Cancel and lease loss reach the measurer as a checked condition (``should_stop``):
    it stops waiting promptly and answers, as a measurer does, with results (failures the
    caller discards); nothing is raised through the ``Measurer`` interface."""
    factory, job_id, worker_id, inputs = env
    app = ThreadWorkerApp(factory, worker_id, measure=False)
    stopping = threading.Event()

    def should_stop() -> StopReason | None:
        return StopReason.CANCELLED if stopping.is_set() else None

    measurer = _measurer(factory, app, job_id, device_key, should_stop=should_stop)
    threading.Timer(0.3, stopping.set).start()
    started = time.monotonic()
    results = measurer.measure(inputs[:2])
    assert time.monotonic() - started < 3
    assert [r.error for r in results] == [STOPPED_MESSAGE] * 2
    assert not measurer.remeasure([1, 2])  # stopping: no re-measurement either
    with session_scope(factory) as session:  # the trials stay, for a resumed run
        assert session.query(Trial).filter(Trial.job_id == job_id).count() == 2


def test_a_device_slot_is_given_up_when_asked(env):
    gate = DeviceGate(limit=1)
    with (
        gate.slot("dev", (0, 0.0, 0)) as first,
        gate.slot("dev", (0, 1.0, 1), lambda: True) as second,
    ):
        assert first and not second
    with gate.slot("dev", (0, 2.0, 2)) as third:  # the waiter that gave up left the line
        assert third


def test_cancelled_trials_come_back_as_failures(env, device_key):
    factory, job_id, worker_id, inputs = env
    app = ThreadWorkerApp(factory, worker_id, measure=False)
    measurer = _measurer(factory, app, job_id, device_key)
    ids = measurer.ensure_trials(inputs[:2])
    with session_scope(factory) as session:
        session.execute(update(Trial).where(Trial.id == ids[0]).values(state=TrialState.CANCELLED))
    app.measure = True
    first, second = measurer.measure(inputs[:2])
    assert first.status != TrialStatus.OK and "cancelled" in (first.error or "")
    assert second.status == TrialStatus.OK


def test_device_gate_grants_by_priority_then_age():
    gate = DeviceGate(limit=1)
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.slot("dev", (0, 0.0, 0)):
            holding.set()
            release.wait(5)

    def waiter(name: str, rank) -> None:
        with gate.slot("dev", rank):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    holding.wait(5)
    waiters = [
        threading.Thread(target=waiter, args=("low-old", (0, 1.0, 1))),
        threading.Thread(target=waiter, args=("high", (-5, 3.0, 3))),
        threading.Thread(target=waiter, args=("low-new", (0, 2.0, 2))),
    ]
    for t in waiters:
        t.start()
    time.sleep(0.2)
    # Another device is not blocked by this one.
    with gate.slot("other", (0, 9.0, 9)):
        pass
    release.set()
    for t in [first, *waiters]:
        t.join(5)
    assert order == ["high", "low-old", "low-new"]
