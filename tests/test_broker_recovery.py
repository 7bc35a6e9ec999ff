"""Recovery from broker loss, in process: a fake broker that loses, delays or refuses
messages stands in for Celery, and the real worker functions measure what it delivers.

What the scheduler must do (``DispatchMeasurer``): re-send a trial nobody claimed once its
device's queue is empty (the message is gone), not while the queue may still hold it, never
while a worker holds the trial; survive a publish the broker refuses; do the same for the
final re-measurement. What must not happen: a trial measured or recorded twice when the
lost message turns up after all.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
from kombu.exceptions import OperationalError as BrokerOperationalError

from autosched.db import session_factory, session_scope
from autosched.db.models import database_time
from autosched.hardware import detect_hardware
from autosched.service import dispatch
from autosched.service.device_tasks import MEASURE_TASK, REMEASURE_TASK
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.measure_trials import measure_trials
from autosched.service.remeasure import remeasure_trials
from autosched.tune.trial import MeasureInput, TrialStatus
from autosched.vocabulary import TrialState
from tests.farm_support import (
    FakeMeasurer,
    create_job,
    matmul,
    register_worker,
    store,
    trials_of,
)

HW = detect_hardware()
TARGET = HW.target_key
_SHAPES = itertools.count()


class LossyBroker:
    """``send_task`` as Celery's, with a worker behind it that measures in a thread.

    ``lose`` messages are kept back (a broker restarted without its data; ``deliver_lost``
    hands them over late), ``refuse`` is consumed one flag per publish (True: raise as kombu
    does when the broker is down), ``depth`` is what the queue-depth probe answers.
    """

    def __init__(self, factory, worker_id: str, measurer: FakeMeasurer | None = None) -> None:
        self.factory = factory
        self.worker_id = worker_id
        self.measurer = measurer or FakeMeasurer()
        self.lose = 0
        self.refuse: list[bool] = []
        self.depth: int | None = 0
        self.sent: list[tuple[str, list]] = []
        self.lost: list[tuple[str, list]] = []
        self.stored: list[int] = []  # what each measure delivery recorded
        self._threads: list[threading.Thread] = []

    def send_task(self, name: str, args: list, queue: str) -> None:
        if self.refuse and self.refuse.pop(0):
            raise BrokerOperationalError("Error 111 connecting to 127.0.0.1:6379. Refused.")
        self.sent.append((name, list(args)))
        if self.lose:
            self.lose -= 1
            self.lost.append((name, list(args)))
            return
        self._deliver(name, list(args))

    def _deliver(self, name: str, args: list) -> None:
        def work() -> None:
            if name == MEASURE_TASK:
                self.stored.append(
                    measure_trials(self.factory, args[0], self.worker_id, self.measurer)
                )
            else:
                assert name == REMEASURE_TASK
                remeasure_trials(self.factory, args[0], self.worker_id, self.measurer, *args[1:])

        thread = threading.Thread(target=work)
        thread.start()
        self._threads.append(thread)

    def deliver_lost(self) -> None:
        """The lost messages turn up after all (redelivered, or a second copy)."""
        lost, self.lost = self.lost, []
        for name, args in lost:
            self._deliver(name, args)
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(30)

    def queue_depth(self, name: str) -> int | None:
        return self.depth


@pytest.fixture
def env(sqlite_url, device_key):
    factory = session_factory(sqlite_url)
    workload = matmul(20 + 4 * next(_SHAPES), 16, 24, "broker_mm")
    (key,) = store(factory, workload)
    job_id = create_job(factory, [key], device_key, trials=8)
    worker_id = register_worker(factory, device_key)
    from autosched.schedule import build_template

    template = build_template(workload.prim_func, HW)
    rng = random.Random(2)
    inputs = [
        MeasureInput(workload.to_json(), template.sample(rng).to_json(), HW.to_json())
        for _ in range(4)
    ]
    return factory, job_id, worker_id, inputs


def _measurer(factory, broker: LossyBroker, job_id: int, device_key: str, **kwargs):
    kwargs.setdefault("unclaimed_resend_s", 0.3)
    return DispatchMeasurer(
        factory,
        broker,
        job_id,
        device_key,
        TARGET,
        poll_s=0.05,
        redispatch_s=600,
        queue_depth=broker.queue_depth,
        **kwargs,
    )


def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    return thread, out


def _sends(broker: LossyBroker, name: str = MEASURE_TASK) -> int:
    return sum(1 for n, _ in broker.sent if n == name)


def test_a_lost_batch_is_resent_once_its_queue_is_empty(env, device_key):
    factory, job_id, worker_id, inputs = env
    broker = LossyBroker(factory, worker_id)
    broker.lose, broker.depth = 1, 1  # lost, and other messages wait in the queue
    thread, out = _in_thread(_measurer(factory, broker, job_id, device_key).measure, inputs)

    time.sleep(1.0)  # over three times the unclaimed time
    assert _sends(broker) == 1, "re-sent while the queue may still hold the message"
    broker.depth = 0  # the queue drained, the trials still unclaimed: the message is gone
    thread.join(10)
    assert out and [r.status for r in out[0]] == [TrialStatus.OK] * 4
    assert _sends(broker) == 2

    broker.deliver_lost()  # the first copy turns up after all: it claims nothing
    trials = trials_of(factory, job_id)
    assert [t.state for t in trials] == [TrialState.DONE] * 4
    assert {t.dispatch_count for t in trials} == {2}
    assert sorted(broker.stored) == [0, 4]  # each result recorded once
    assert len(broker.measurer.calls) == 1  # and measured once


def test_every_lost_chunk_of_a_batch_is_resent_at_once(env, device_key, caplog):
    """Two workers, two messages, both lost: one resend round sends all four trials again
    (the second chunk, sent a moment after the first, is not left for another round)."""
    factory, job_id, worker_id, inputs = env
    register_worker(factory, device_key)
    broker = LossyBroker(factory, worker_id)
    broker.lose = 2
    with caplog.at_level("WARNING", logger="autosched.service.dispatch"):
        results = _measurer(factory, broker, job_id, device_key).measure(inputs)
    assert [r.status for r in results] == [TrialStatus.OK] * 4
    assert [r.getMessage().count("was lost") for r in caplog.records] == [1]
    assert _sends(broker) == 4  # two chunks, twice
    assert {t.dispatch_count for t in trials_of(factory, job_id)} == {2}


def test_a_broker_that_cannot_be_asked_gets_no_resend(env, device_key):
    """While the broker is down (the probe answers None) nothing is re-sent early; the long
    redispatch time still applies."""
    factory, job_id, worker_id, inputs = env
    broker = LossyBroker(factory, worker_id)
    broker.lose, broker.depth = 1, None
    measurer = _measurer(factory, broker, job_id, device_key)
    thread, out = _in_thread(measurer.measure, inputs[:1])
    time.sleep(0.8)
    assert _sends(broker) == 1
    broker.depth = 0  # back
    thread.join(10)
    assert out and _sends(broker) == 2


def test_a_claimed_trial_is_left_to_its_worker(env, device_key):
    """A worker measuring longer than the unclaimed time keeps its trials: no resend."""
    factory, job_id, worker_id, inputs = env
    broker = LossyBroker(factory, worker_id, FakeMeasurer(delay_s=1.2))
    results = _measurer(factory, broker, job_id, device_key).measure(inputs)
    assert [r.status for r in results] == [TrialStatus.OK] * 4
    assert _sends(broker) == 1
    assert {t.dispatch_count for t in trials_of(factory, job_id)} == {1}


def test_a_refused_publish_is_sent_again_and_counted_once(env, device_key, monkeypatch):
    """The broker is down past Celery's publish retries for the second of two chunks: the
    job goes on, the unsent chunk is sent once the broker answers, and every trial's
    dispatch count says how often it really went out."""
    factory, job_id, worker_id, inputs = env
    register_worker(factory, device_key)  # two workers: two chunks per batch
    monkeypatch.setattr(dispatch, "SEND_BACKOFF_S", 0.2)
    broker = LossyBroker(factory, worker_id)
    broker.refuse = [False, True, True]  # chunk 1 goes, chunk 2 is refused twice
    results = _measurer(factory, broker, job_id, device_key).measure(inputs)
    assert [r.status for r in results] == [TrialStatus.OK] * 4
    broker.join()
    sent = sorted(i for _, args in broker.sent for i in args[0])
    assert sent == sorted(t.id for t in trials_of(factory, job_id))  # each sent once
    assert {t.dispatch_count for t in trials_of(factory, job_id)} == {1}
    assert sum(broker.stored) == 4


def test_a_lost_remeasurement_is_resent_and_recorded_once(env, device_key):
    factory, job_id, worker_id, inputs = env
    broker = LossyBroker(factory, worker_id)
    measurer = _measurer(factory, broker, job_id, device_key)
    measurer.measure(inputs)
    broker.join()
    ids = [t.id for t in trials_of(factory, job_id)]
    before = {t.id: len(t.latencies) for t in trials_of(factory, job_id)}

    broker.lose = 1  # the re-measure request is lost with the broker
    start = time.monotonic()
    assert measurer.remeasure(ids, rounds=2)
    assert time.monotonic() - start < 10  # not the 600 s redispatch time
    broker.join()
    assert _sends(broker, REMEASURE_TASK) == 2
    after = {t.id: (len(t.latencies), t.remeasured_at) for t in trials_of(factory, job_id)}
    assert {i: n - before[i] for i, (n, _) in after.items()} == dict.fromkeys(ids, 2)

    broker.deliver_lost()  # the lost copy arrives late: it records nothing
    late = {t.id: (len(t.latencies), t.remeasured_at) for t in trials_of(factory, job_id)}
    assert late == after


def test_two_copies_of_a_remeasurement_at_once_record_once(env, device_key):
    factory, job_id, worker_id, inputs = env
    broker = LossyBroker(factory, worker_id)
    _measurer(factory, broker, job_id, device_key).measure(inputs)
    broker.join()
    ids = [t.id for t in trials_of(factory, job_id)]
    before = {t.id: len(t.latencies) for t in trials_of(factory, job_id)}
    with session_scope(factory) as session:
        since = database_time(session).isoformat()
    copies = [
        threading.Thread(
            target=remeasure_trials,
            args=(factory, ids, worker_id, FakeMeasurer(delay_s=0.3), 2, since),
        )
        for _ in range(2)
    ]
    for copy in copies:
        copy.start()
    for copy in copies:
        copy.join(30)
    after = {t.id: len(t.latencies) for t in trials_of(factory, job_id)}
    assert {i: n - before[i] for i, n in after.items()} == dict.fromkeys(ids, 2)


def test_resend_waits_are_bounded_by_the_redispatch_time(env, device_key):
    factory, job_id, worker_id, _ = env
    broker = LossyBroker(factory, worker_id)
    measurer = DispatchMeasurer(
        factory, broker, job_id, device_key, TARGET, redispatch_s=5, unclaimed_resend_s=60
    )
    assert measurer.unclaimed_resend_s == 5


def test_unclaimed_resend_setting(monkeypatch):
    from autosched.settings import Settings

    assert Settings().trial_unclaimed_resend_s == 60
    monkeypatch.setenv("AUTOSCHED_TRIAL_UNCLAIMED_RESEND_S", "7.5")
    assert Settings().trial_unclaimed_resend_s == 7.5
