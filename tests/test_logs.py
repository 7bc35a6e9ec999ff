"""Structured logs: JSON lines (python-json-logger) when AUTOSCHED_LOG_JSON, every line tagged
with its component and, from context variables, the job and trials it is about. The job
runner and the worker's measure_trials run in process (SQLite, a fake farm measuring in
threads) to show that the real code paths tag their own lines; ``serve()`` and
``configure_logging`` run in child processes, where nothing configured logging first."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from autosched.db import session_factory
from autosched.logs import configure_logging, log_context, make_handler
from autosched.service.device_gate import DeviceGate
from autosched.service.device_tasks import REMEASURE_TASK
from autosched.service.job_runner import run_job
from autosched.service.measure_trials import measure_trials
from autosched.service.remeasure import remeasure_trials
from autosched.settings import Settings
from services.scheduler.main import claim_jobs
from tests.farm_support import (
    REPO,
    FakeMeasurer,
    create_job,
    matmul,
    register_worker,
    service_env,
    store,
    trials_of,
)
from tests.fault_support import free_port

SETTINGS = Settings(heartbeat_interval_s=0.2, heartbeat_timeout_s=2, batch_size=4)


class Captured:
    """A handler of ``configure_logging``'s kind on the root logger, writing to a buffer."""

    def __init__(self, settings: Settings, component: str) -> None:
        self.buffer = io.StringIO()
        self.handler = make_handler(settings, component, self.buffer)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]  # every line is one JSON object


@pytest.fixture
def capture() -> Iterator[callable]:
    root = logging.getLogger()
    level, made = root.level, []

    def attach(component: str, *, json_lines: bool = True) -> Captured:
        captured = Captured(Settings(log_json=json_lines), component)
        root.addHandler(captured.handler)
        made.append(captured)
        return captured

    root.setLevel(logging.INFO)
    yield attach
    for captured in made:
        root.removeHandler(captured.handler)
    root.setLevel(level)


class FakeFarm:
    """The Celery app for ``run_job``: each batch is measured by ``measure_trials`` in a
    thread of its own, as a worker process would (so no context is inherited)."""

    def __init__(self, factory, worker_id: str) -> None:
        self.factory = factory
        self.worker_id = worker_id
        self.sent: list[list[int]] = []

    def send_task(self, name: str, args: list, queue: str) -> None:
        if name == REMEASURE_TASK:  # the job's final re-measurement of its best few
            target, task_args = remeasure_trials, (*args[:1], self.worker_id, FakeMeasurer())
        else:
            self.sent.append(list(args[0]))
            target, task_args = measure_trials, (list(args[0]), self.worker_id, FakeMeasurer())
        threading.Thread(target=target, args=(self.factory, *task_args), name="fake-worker").start()


def test_job_runner_and_worker_lines_carry_job_and_trial_ids(sqlite_url, device_key, capture):
    factory = session_factory(sqlite_url)
    app = FakeFarm(factory, register_worker(factory, device_key))
    keys = store(factory, matmul(20, 28, 12, "logs_mm"))
    job_id = create_job(factory, keys, device_key, trials=5, seed=1)
    captured = capture("scheduler")

    assert job_id in claim_jobs(factory, "s-logs", lease_s=5)
    state = run_job(
        job_id, factory, app, "s-logs", settings=SETTINGS, gate=DeviceGate(1), poll_s=0.05
    )
    assert state == "succeeded"

    records = captured.records()
    assert records and all(r["component"] == "scheduler" for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    ours = [r for r in records if r["logger"].startswith("autosched.")]
    assert all(r["job_id"] == job_id for r in ours), [r for r in ours if "job_id" not in r]

    job_loggers = {"autosched.service.job_runner", "autosched.service.job_state"}
    runner = [r for r in ours if r["logger"] in job_loggers]
    started = next(r for r in runner if "running on" in r["message"])
    assert started["level"] == "INFO" and started["thread"] == threading.current_thread().name
    finished = next(r for r in runner if r.get("job_state") == "succeeded")
    assert finished["trials_done"] == 5 and set(finished["best_latency_s"]) == set(keys)
    assert 0 < finished["best_latency_s"][keys[0]] < 1

    # Scheduler side: one "dispatched" and one "measured" line per batch, with its trial ids.
    trial_ids = sorted(t.id for t in trials_of(factory, job_id))
    dispatched = [r for r in ours if r["message"].startswith(f"job {job_id}: dispatched trials")]
    assert [r["trial_ids"] for r in dispatched] == app.sent
    measured = [r for r in ours if r["message"].startswith(f"job {job_id}: batch measured")]
    assert [r["trial_ids"] for r in measured] == app.sent
    assert sorted(t for batch in app.sent for t in batch) == trial_ids

    # Worker side, in the measuring threads: the batch's ids and the job the worker looked up.
    worker = [r for r in ours if r["logger"] == "autosched.service.measure_trials"]
    recorded = [r for r in worker if r["message"].startswith("measured ")]
    assert {r["thread"] for r in recorded} == {"fake-worker"}
    assert [r["trial_ids"] for r in recorded] == app.sent
    assert all(r["job_id"] == job_id and "ok=" in r["message"] for r in recorded)
    assert len([r for r in ours if r["level"] == "INFO"]) < 8 * len(app.sent)  # no per-trial


def test_context_is_scoped_and_rendered_in_the_plain_format(capture):
    captured = capture("api", json_lines=False)
    log = logging.getLogger("autosched.test")
    log.info("outside")
    with log_context(job_id=7, trial_ids=[3, 4]):
        log.info("inside")
        with log_context(trial_ids=[5]):
            log.info("nested")
        log.info("explicit", extra={"job_id": 8})
    log.info("after")
    lines = captured.lines()
    assert len(lines) == 5
    assert all(" INFO api autosched.test [" in line for line in lines)
    assert lines[0].endswith("] outside") and "job=" not in lines[0]
    assert lines[1].endswith(" [job=7 trials=3,4] inside")
    assert lines[2].endswith(" [job=7 trials=5] nested")
    assert lines[3].endswith(" [job=8 trials=3,4] explicit")
    assert "job=" not in lines[4]


def test_context_does_not_leak_into_other_threads(capture):
    captured = capture("worker")
    log = logging.getLogger("autosched.test")
    with log_context(job_id=1):
        other = threading.Thread(target=log.info, args=("from another thread",))
        other.start()
        other.join()
        log.info("here")
    by_message = {r["message"]: r for r in captured.records()}
    assert "job_id" not in by_message["from another thread"]
    assert by_message["here"]["job_id"] == 1


def test_an_embedding_programs_logging_is_left_alone():
    root = logging.getLogger()
    theirs = logging.NullHandler()
    saved = root.handlers[:]
    root.handlers = [theirs]
    try:
        assert configure_logging(Settings(log_json=True), "scheduler") is None
        assert root.handlers == [theirs]
    finally:
        root.handlers = saved


CHILD = """
import logging
from autosched.logs import configure_logging, log_context
from autosched.settings import Settings

first = configure_logging(Settings(), "scheduler", "DEBUG")
again = configure_logging(Settings(log_json=True), "worker")  # reformats, keeps the level
assert again is first and logging.getLogger().handlers == [first]
log = logging.getLogger("autosched.child")
log.debug("debug kept")
with log_context(job_id=11, trial_ids=[1, 2]):
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
logging.getLogger("alembic.runtime").info("quiet")
"""


def test_configure_logging_in_a_fresh_process_is_idempotent():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["message"] for r in records] == ["debug kept", "failed"]
    assert all(r["component"] == "worker" for r in records)
    failed = records[1]
    assert (failed["job_id"], failed["trial_ids"], failed["level"]) == (11, [1, 2], "ERROR")
    assert "ValueError: boom" in failed["exc_info"]


def test_serve_logs_json_including_uvicorns_access_log(sqlite_url, tmp_path):
    port = free_port()
    env = service_env(
        tmp_path,
        sqlite_url,
        None,
        AUTOSCHED_LOG_JSON="true",
        AUTOSCHED_API_HOST="127.0.0.1",
        AUTOSCHED_API_PORT=str(port),
    )
    log_path = tmp_path / "api.log"
    with log_path.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "services.api.app"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs/5", timeout=5).status_code == 404
    finally:
        server.terminate()
        server.wait(30)
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all(r["component"] == "api" for r in records)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(re.search(r'"GET /v1/jobs/5 HTTP/1.1" 404', r["message"]) for r in access)
    assert any(r["logger"] == "uvicorn.error" and "startup" in r["message"] for r in records)
    assert not any("color_message" in r for r in records)
