"""Failures classified (issue 12): the kernel's fault is final, the environment's is retried
on a worker up to a cap and then recorded with its reason; a trial that kills its workers is
quarantined by the reaper; a worker whose sandboxes keep failing quarantines itself, shows
as such on the farm page and gets no work. In process on both databases, a real full disk
(a tmpfs, as root), and one real-process fault test (a trial that SIGKILLs its workers)."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from autosched.db import Trial, Worker, session_factory, session_scope
from autosched.db.models import utcnow
from autosched.hardware import detect_hardware
from autosched.schedule import build_template, static_config
from autosched.service import farm
from autosched.service.device_tasks import isolate
from autosched.service.dispatch import DispatchMeasurer
from autosched.service.measure_trials import FailurePolicy, measure_trials
from autosched.service.sql_database import SQLDatabase
from autosched.service.workloads import ensure_template
from autosched.tune.measure import LocalMeasurer, Measurer
from autosched.tune.trial import Fault, MeasureInput, MeasureResult, TrialStatus, classify
from autosched.vocabulary import TrialState
from tests.api_support import api_client
from tests.farm_support import (
    FakeMeasurer,
    create_job,
    kill,
    matmul,
    online,
    register_worker,
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
DISK_FULL = "/usr/bin/ld: final link failed: No space left on device"

# ---- the classification table -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "fault"),
    [
        (TrialStatus.OK, None, Fault.NONE),
        (TrialStatus.WRONG_ANSWER, "max abs diff 3.0", Fault.KERNEL),
        (TrialStatus.RUN_ERROR, "child died (SIGSEGV)", Fault.KERNEL),
        (TrialStatus.BUILD_ERROR, "TVMError: vectorize failed", Fault.KERNEL),
        (TrialStatus.BUILD_TIMEOUT, "build timed out after 60 s", Fault.ENVIRONMENT),
        (TrialStatus.RUN_TIMEOUT, "run timed out after 10 s", Fault.ENVIRONMENT),
        (TrialStatus.BUILD_ERROR, DISK_FULL, Fault.ENVIRONMENT),
        (TrialStatus.RUN_ERROR, "OSError: [Errno 122] Disk quota exceeded", Fault.ENVIRONMENT),
        (TrialStatus.ENV_ERROR, "reference failed: timed out", Fault.ENVIRONMENT),
        (TrialStatus.ENV_ERROR, "measurement failed on worker w: OSError", Fault.ENVIRONMENT),
        (TrialStatus.ENV_ERROR, "poison: killed 3 workers", Fault.ENVIRONMENT),
    ],
)
def test_classification(status, error, fault):
    result = MeasureResult(status, 1e-3 if status == TrialStatus.OK else math.inf, error)
    assert classify(status, error) == fault == result.fault
    assert result.final == (fault != Fault.ENVIRONMENT)


@pytest.mark.parametrize(
    ("status", "error", "blames"),
    [
        (TrialStatus.BUILD_ERROR, DISK_FULL, True),  # the machine: its disk
        (TrialStatus.ENV_ERROR, "measurement failed on worker w: OSError", True),
        (TrialStatus.RUN_TIMEOUT, "run timed out", False),  # a slow kernel times out anywhere
        (TrialStatus.ENV_ERROR, "reference failed: timed out", False),  # the workload's
        (TrialStatus.ENV_ERROR, "reference failed: No space left on device", True),
        (TrialStatus.WRONG_ANSWER, "max abs diff", False),
    ],
)
def test_what_blames_the_worker(status, error, blames):
    assert MeasureResult(status, math.inf, error).blames_worker is blames


def test_suspects_are_sent_alone():
    assert isolate([1, 2, 3, 4], {2, 4}) == [[1, 3], [2], [4]]
    assert isolate([5], {5}) == [[5]] and isolate([1, 2], set()) == [[1, 2]]


# ---- in process ------------------------------------------------------------------------------

_SHAPES = itertools.count()


class Scripted(Measurer):
    """Answers each input with the next of ``outcomes`` (status, error), cycling."""

    def __init__(self, *outcomes: tuple[TrialStatus, str | None]) -> None:
        self.outcomes = itertools.cycle(outcomes)
        self.calls = 0

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        self.calls += 1
        out = []
        for _ in inputs:
            status, error = next(self.outcomes)
            ok = status == TrialStatus.OK
            out.append(MeasureResult(status, 1e-3 if ok else math.inf, error, latencies=(1e-3,)))
        return out


@pytest.fixture
def setup(db_url, device_key):
    """A workload, its job of 8 trials queued (not sent), the factory."""
    # n = 28, not test_worker_measure's 24: the session's database shares bests by key.
    workload = matmul(16 + 4 * next(_SHAPES), 28, 20, "failure_classes_mm")
    factory = session_factory(db_url)
    store(factory, workload)
    with session_scope(factory) as session:
        ensure_template(session, workload, HW)
    job_id = create_job(factory, [workload.key], device_key, trials=8)
    template = build_template(workload.prim_func, HW)
    configs = [static_config(workload.prim_func, HW)]
    rng = random.Random(0)
    while len(configs) < 4:
        c = template.sample(rng)
        if c.to_json() not in [o.to_json() for o in configs]:
            configs.append(c)
    measurer = DispatchMeasurer(factory, None, job_id, device_key, TARGET)
    ids = measurer.ensure_trials(
        [MeasureInput(workload.to_json(), c.to_json(), HW.to_json()) for c in configs]
    )
    return factory, job_id, workload, ids


def _trial(factory, trial_id: int) -> Trial:
    with session_scope(factory) as session:
        trial = session.get(Trial, trial_id)
        session.expunge(trial)
        return trial


def test_environment_failures_are_retried_then_recorded_with_the_reason(setup, device_key):
    factory, _, _, ids = setup
    policy = FailurePolicy(max_attempts=3, quarantine_after=100)
    disk_full = Scripted((TrialStatus.BUILD_ERROR, DISK_FULL))
    for attempt in (1, 2):
        worker = register_worker(factory, device_key)
        assert measure_trials(factory, ids[:1], worker, disk_full, policy) == 0  # handed back
        trial = _trial(factory, ids[0])
        assert trial.state == TrialState.QUEUED and trial.worker_id is None
        assert trial.dispatched_at is None  # the scheduler sends it again at once
        assert trial.attempts == attempt and "No space left on device" in trial.last_error
    worker = register_worker(factory, device_key)
    assert measure_trials(factory, ids[:1], worker, disk_full, policy) == 1
    trial = _trial(factory, ids[0])
    assert trial.state == TrialState.DONE and trial.status == TrialStatus.BUILD_ERROR
    assert trial.attempts == 3
    assert trial.error.startswith("failed 3 times for environment reasons; last: ")
    assert DISK_FULL in trial.error

    # The kernel's fault is final at once; a success after an environment failure counts.
    wrong = Scripted((TrialStatus.WRONG_ANSWER, "max abs diff 3.0"))
    assert measure_trials(factory, ids[1:2], worker, wrong, policy) == 1
    assert _trial(factory, ids[1]).status == TrialStatus.WRONG_ANSWER
    timeout = Scripted((TrialStatus.RUN_TIMEOUT, "run timed out after 10 s"))
    assert measure_trials(factory, ids[2:3], worker, timeout, policy) == 0
    other = register_worker(factory, device_key)
    assert measure_trials(factory, ids[2:3], other, FakeMeasurer(), policy) == 1
    trial = _trial(factory, ids[2])
    assert trial.status == TrialStatus.OK and trial.worker_id == other and trial.attempts == 1


def test_a_later_job_may_propose_a_config_that_failed_for_environment_reasons(setup, device_key):
    factory, job_id, workload, ids = setup
    with session_scope(factory) as session:
        for trial_id, status, error in (
            (ids[0], TrialStatus.BUILD_ERROR, DISK_FULL),
            (ids[1], TrialStatus.WRONG_ANSWER, "max abs diff"),
            (ids[2], TrialStatus.ENV_ERROR, "poison: killed 3 workers"),
        ):
            session.execute(
                update(Trial)
                .where(Trial.id == trial_id)
                .values(state=TrialState.DONE, status=status, error=error)
            )
    own = {r.digest for r in SQLDatabase(factory, job_id).records(workload.key, TARGET)}
    later_job = create_job(factory, [workload.key], device_key, trials=8)
    later = {r.digest for r in SQLDatabase(factory, later_job).records(workload.key, TARGET)}
    digests = {t.id: t.config_digest for t in trials_of(factory, job_id)}
    assert own == {digests[i] for i in ids[:3]}  # its own job keeps every result
    assert later == {digests[ids[1]]}  # only the kernel's fault is final everywhere


def test_a_worker_whose_sandboxes_keep_failing_is_quarantined(setup, device_key, db_url, tmp_path):
    factory, _, _, ids = setup
    quarantined = threading.Event()
    policy = FailurePolicy(max_attempts=3, quarantine_after=3, on_quarantine=quarantined.set)
    sick = register_worker(factory, device_key)
    healthy = register_worker(factory, device_key)

    # Timeouts and kernel faults are not the machine's: they never quarantine it.
    slow = Scripted((TrialStatus.RUN_TIMEOUT, "run timed out"))
    measure_trials(factory, ids, sick, slow, policy)
    assert not quarantined.is_set()

    # A full disk on every trial of a batch of four: over the limit of three in a row.
    assert (
        measure_trials(factory, ids, sick, Scripted((TrialStatus.BUILD_ERROR, DISK_FULL)), policy)
        == 0
    )
    assert quarantined.is_set()  # the worker process stops consuming its queue
    with session_scope(factory) as session:
        worker = session.get(Worker, sick)
        assert worker.env_failure_streak == 4 and worker.quarantined_at is not None
        assert "4 trials in a row" in worker.quarantine_reason
        assert DISK_FULL in worker.quarantine_reason
        assert [w.id for w in farm.online_workers(session, device_key)] == [healthy]
        views = {v.id: v for v in farm.list_workers(session, redact=False)}
    assert views[sick].quarantined and not views[healthy].quarantined
    assert views[sick].state == "online"  # still heartbeating: it is shown, not reaped

    # It claims nothing more; the batch it was given is marked unsent for the scheduler.
    with session_scope(factory) as session:
        session.execute(update(Trial).where(Trial.id.in_(ids)).values(dispatched_at=utcnow()))
    fake = FakeMeasurer()
    assert measure_trials(factory, ids, sick, fake, policy) == 0 and not fake.calls
    assert all(_trial(factory, i).dispatched_at is None for i in ids)
    assert all(_trial(factory, i).state == TrialState.QUEUED for i in ids)
    assert measure_trials(factory, ids, healthy, fake, policy) == 4  # the others do them

    # The farm page shows it, with its reason for an operator.
    with api_client(db_url, tmp_path) as client:
        page = client.get("/farm").text
    row = page[page.index(f'data-worker="{sick}"') :]
    row = row[: row.index("</tr>")]
    assert "st-quarantined" in row and "No space left on device" in row
    assert "st-quarantined" not in page[page.index(f'data-worker="{healthy}"') :].split("</tr>")[0]
    # Anonymous views keep the flag and drop the reason (it may name hosts and paths).
    with session_scope(factory) as session:
        redacted = {v.device_key + str(v.quarantined) for v in farm.list_workers(session)}
        assert all(v.quarantine_reason is None for v in farm.list_workers(session))
    assert f"{device_key}True" in redacted

    # Registering again (an operator restarted it) lifts the quarantine.
    register_again(factory, sick, device_key)
    with session_scope(factory) as session:
        assert session.get(Worker, sick).quarantine_reason is None


def register_again(factory, worker_id: str, device_key: str) -> None:
    from autosched.schemas import WorkerRegister
    from autosched.service.tokens import Caller

    reg = WorkerRegister(
        worker_id=worker_id,
        device_key=device_key,
        hardware=HW.to_json(),
        hostname="test",
    )
    with session_scope(factory) as session:
        farm.register_worker(session, reg, caller=Caller.trusted())


def test_the_reaper_quarantines_a_trial_that_killed_its_workers(setup, device_key):
    factory, _, _, ids = setup
    poison = ids[0]
    for killed in (1, 2, 3):
        worker = register_worker(factory, device_key)
        with session_scope(factory) as session:  # claimed, then the worker went silent
            session.execute(
                update(Trial)
                .where(Trial.id.in_(ids[:2] if killed == 1 else [poison]))
                .values(state=TrialState.RUNNING, worker_id=worker)
            )
            session.execute(
                update(Worker)
                .where(Worker.id == worker)
                .values(last_heartbeat=utcnow() - timedelta(seconds=60))
            )
        with session_scope(factory) as session:
            requeued = farm.reap_silent_workers(session, timeout_s=5, max_attempts=3)
        trial = _trial(factory, poison)
        assert trial.workers_lost == killed and trial.attempts == killed
        if killed < 3:
            assert requeued == (2 if killed == 1 else 1) and trial.state == TrialState.QUEUED
        else:
            assert requeued == 0 and trial.state == TrialState.DONE
    assert trial.status == TrialStatus.ENV_ERROR and trial.error.startswith("poison: killed 3")
    bystander = _trial(factory, ids[1])  # lost once with it, then sent alone: not poison
    assert bystander.state == TrialState.QUEUED and bystander.workers_lost == 1


# ---- a full disk, for real --------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled: every write in it fails with ENOSPC (needs root)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        with (mount / "fill").open("wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * (2 * 1024 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_retried_and_succeeds_on_another_worker(
    setup, device_key, full_disk, tmp_path
):
    factory, _, _, ids = setup
    policy = FailurePolicy(max_attempts=3, quarantine_after=5)
    full = register_worker(factory, device_key)
    roomy = register_worker(factory, device_key)
    on_full = LocalMeasurer.create(str(full_disk))
    on_roomy = LocalMeasurer.create(str(tmp_path / "roomy"))
    try:
        assert measure_trials(factory, ids[:1], full, on_full, policy) == 0
        trial = _trial(factory, ids[0])
        assert trial.state == TrialState.QUEUED and trial.attempts == 1
        assert "No space left on device" in trial.last_error
        assert measure_trials(factory, ids[:1], roomy, on_roomy, policy) == 1
    finally:
        on_full.close()
        on_roomy.close()
    trial = _trial(factory, ids[0])
    assert trial.status == TrialStatus.OK and trial.worker_id == roomy and trial.latency > 0


# ---- a trial that kills its workers, with real processes ------------------------------------

STARTUP_S = 90


@pytest.mark.slow  # fault injection: SIGKILL, three times
@pytest.mark.fault
def test_a_poison_trial_is_quarantined_and_the_job_completes(pg_url, redis_url, tmp_path):
    """Four workers; the test SIGKILLs whichever claims the job's first trial (its static
    config, measured alone). After three dead workers the reaper quarantines it, and the
    job finishes its budget on the fourth with nothing recorded twice."""
    key = f"test-poison-{uuid.uuid4().hex[:8]}"
    env = service_env(tmp_path, pg_url, redis_url)
    procs = {}
    factory = session_factory(pg_url)
    settings = service_settings(tmp_path, pg_url, redis_url)
    # The reaper in the scheduler thread reads the cap from this process's settings.
    assert os.environ.get("AUTOSCHED_MAX_TRIAL_ATTEMPTS") in (None, "3")
    try:
        for i in range(4):
            proc = start("workers.main", env, tmp_path / f"worker-{i}.log", "--device-key", key)
            procs[proc.pid] = proc
        wait_for(lambda: len(online(factory, key)) == 4, STARTUP_S, "four workers online")
        workload = salted_matmul("poison")
        store(factory, workload)
        job_id = create_job(factory, [workload.key], key, trials=8)
        with scheduler_thread(settings):
            first = wait_for(lambda: trials_of(factory, job_id), 60, "the first trial")[0].id
            killed: list[str] = []
            first_kill = 0.0
            while len(killed) < 3:
                trial = wait_for(
                    lambda: (
                        (t := _trial(factory, first)).state == TrialState.RUNNING
                        and t.worker_id not in killed
                        and t
                    ),
                    120,
                    f"the poison trial claimed (killed {len(killed)} so far)",
                    poll=0.02,
                )
                pid = int(trial.worker_id.split(":")[1])  # worker ids are host:pid:uuid
                kill(procs[pid], signal.SIGKILL)
                killed.append(trial.worker_id)
                first_kill = first_kill or time.monotonic()
            wait_for(
                lambda: _trial(factory, first).state == TrialState.DONE, 60, "the trial quarantined"
            )
            recovered = time.monotonic() - first_kill
            print(f"poison trial quarantined {recovered:.1f} s after the first kill")
            ended = wait_for_job_end(factory, job_id, 240)
        assert ended.state == "succeeded", ended.error
    finally:
        for proc in procs.values():
            stop(proc)
    check_jobs("trial_kills_its_worker", factory, [job_id], 8, recovered)
    trials = trials_of(factory, job_id)
    poison = next(t for t in trials if t.id == first)
    assert poison.state == TrialState.DONE and poison.status == TrialStatus.ENV_ERROR
    assert poison.error.startswith("poison: killed 3 workers") and poison.workers_lost == 3
    assert len(trials) == 8 and all(t.state == TrialState.DONE for t in trials)
    assert len({t.config_digest for t in trials}) == 8
    assert all(t.worker_id not in killed for t in trials if t.id != first)
    with session_scope(factory) as session:
        assert all(session.get(Worker, w).state == "offline" for w in killed)


def test_a_reference_that_failed_on_a_full_disk_is_computed_again_later(full_disk, tmp_path):
    """The runner does not remember a failed reference for its lifetime: once the cause may
    have passed (here: after ``REFERENCE_RETRY_S``, once space is freed) it tries again."""
    from autosched.tune.builder import LocalBuilder
    from autosched.tune.runner import LocalRunner

    workload = matmul(12, 16, 8, "failure_classes_ref")
    inputs = [
        MeasureInput(
            workload.to_json(), static_config(workload.prim_func, HW).to_json(), HW.to_json()
        )
    ]
    runner = LocalRunner(str(full_disk))
    measurer = LocalMeasurer(LocalBuilder(str(tmp_path / "build")), runner)
    try:
        (failed,) = measurer.measure(inputs)
        assert failed.status == TrialStatus.ENV_ERROR and not failed.final
        assert failed.error.startswith("reference failed") and failed.blames_worker
        assert "No space left on device" in failed.error
        (full_disk / "fill").unlink()  # the cause passes
        (again,) = measurer.measure(inputs)
        assert again.status == TrialStatus.ENV_ERROR  # within the retry time: remembered
        # As if REFERENCE_RETRY_S had passed since.
        runner._ref_failures = {k: (0.0, e) for k, (_, e) in runner._ref_failures.items()}
        (ok,) = measurer.measure(inputs)
    finally:
        measurer.close()
    assert ok.status == TrialStatus.OK, ok.error
    assert runner.reference_computations == 2


@pytest.mark.slow  # real worker processes, one on a full disk
@pytest.mark.fault
def test_a_worker_on_a_full_disk_quarantines_itself_and_the_job_completes(
    pg_url, redis_url, tmp_path, full_disk
):
    """Two workers; one's work directory is on a full tmpfs.
    Its first trials fail for lack of space: they go back to the queue, it quarantines
    itself and stops consuming, and the other worker measures the whole budget."""
    key = f"test-disk-{uuid.uuid4().hex[:8]}"
    env = service_env(tmp_path, pg_url, redis_url, AUTOSCHED_WORKER_QUARANTINE_AFTER="2")
    factory = session_factory(pg_url)
    settings = service_settings(tmp_path, pg_url, redis_url)
    healthy = start("workers.main", env, tmp_path / "healthy.log", "--device-key", key)
    sick_env = {**env, "AUTOSCHED_WORKER_WORK_ROOT": str(full_disk)}
    sick = start("workers.main", sick_env, tmp_path / "sick.log", "--device-key", key)
    try:
        wait_for(lambda: len(online(factory, key)) == 2, STARTUP_S, "two workers online")
        with session_scope(factory) as session:
            by_pid = {w.id.split(":")[1]: w.id for w in farm.online_workers(session, key)}
        sick_id = by_pid[str(sick.pid)]
        workload = salted_matmul("full_disk")
        store(factory, workload)
        job_id = create_job(factory, [workload.key], key, trials=8)
        with scheduler_thread(settings):
            ended = wait_for_job_end(factory, job_id, 240)
        assert ended.state == "succeeded", ended.error
        with session_scope(factory) as session:
            worker = session.get(Worker, sick_id)
            reason = worker.quarantine_reason
            assert reason and "No space left on device" in reason
            assert worker.state == "online"  # it still heartbeats
            contained_s = (worker.quarantined_at - ended.started_at).total_seconds()
    finally:
        stop(sick)
        stop(healthy)
    # Recovered: the sick worker out of the way (quarantined), counted from the job's start.
    check_jobs("worker_disk_full", factory, [job_id], 8, contained_s)
    trials = trials_of(factory, job_id)
    assert len(trials) == 8 and all(t.state == TrialState.DONE for t in trials)
    assert all(t.status == TrialStatus.OK and t.worker_id != sick_id for t in trials)
    assert any(t.attempts for t in trials)  # some were handed back by the sick worker
    assert "Canceling queue" in (tmp_path / "sick.log").read_text()
