"""The job state machine (``service/job_state.py``) on PostgreSQL and SQLite: every move
changes exactly the states it may start from, a stale holder changes nothing, and the API's
cancel is a move like the others. Then a real fault: the private PostgreSQL restarted in
the middle of a job run by the scheduler's own loop; the job still succeeds with exactly its
budget and nothing recorded twice (run alone: ``pytest -m fault tests/test_job_state.py -s``).
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from autosched.db import Job, session_factory, session_scope, upgrade_database
from autosched.db.models import utcnow
from autosched.service import farm, job_state
from autosched.service.device_tasks import REMEASURE_TASK
from autosched.service.job_state import TRANSITIONS, Move, allowed, is_transient
from autosched.service.measure_trials import measure_trials
from autosched.service.remeasure import remeasure_trials
from autosched.service.tokens import Caller
from autosched.settings import Settings
from autosched.vocabulary import TERMINAL_JOB_STATES, JobState
from tests.farm_support import (
    FakeMeasurer,
    create_job,
    done_trials,
    job,
    matmul,
    register_worker,
    scheduler_thread,
    store,
    trials_of,
    wait_for,
    wait_for_job_end,
)
from tests.fault_outcome import check_jobs

HOLDER = "s1"


def _job_in(factory, device_key: str, state: JobState, holder: str | None = HOLDER) -> int:
    keys = store(factory, matmul(8, 8, 8, "js"))
    job_id = create_job(factory, keys, device_key, trials=2)
    with session_scope(factory) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state=state,
                scheduler_id=holder,
                lease_expires_at=utcnow() + timedelta(hours=1) if holder else None,
            )
        )
    return job_id


def _move(factory, move: Move, job_id: int, holder: str = HOLDER) -> bool:
    with session_scope(factory) as session:
        if move is Move.CLAIM:
            return job_state.claim(session, job_id, holder, 60)
        if move is Move.RENEW:
            return job_state.renew(session, job_id, holder, 60)
        if move is Move.RELEASE:
            return job_state.release(session, job_id, holder)
        if move is Move.START:
            return job_state.start(session, job_id, holder, "llvm")
        if move is Move.CANCEL:
            return job_state.apply(session, Move.CANCEL, job_id, finished_at=utcnow())
        if move is Move.REQUEST_CANCEL:
            return job_state.apply(session, Move.REQUEST_CANCEL, job_id, cancel_requested=True)
        ending = {e: s for s, e in job_state.ENDINGS.items()}[move]
        return job_state.finish(session, job_id, holder, ending)


def test_the_table_ends_nothing_twice_and_starts_only_from_queued_or_running():
    for state in TERMINAL_JOB_STATES:
        assert not any(allowed(move, state) for move in Move)
    assert {m for m in Move if TRANSITIONS[m].target == JobState.RUNNING} == {Move.START}
    assert TRANSITIONS[Move.SUCCEED].sources == {JobState.RUNNING}
    assert all(TRANSITIONS[m].held for m in job_state.ENDINGS.values())


@pytest.mark.parametrize("move", list(Move))
def test_each_move_changes_exactly_the_states_it_starts_from(db_url, device_key, move):
    factory = session_factory(db_url)
    for state in JobState:
        # A claim takes free jobs; every other move is made on a job held by HOLDER.
        holder = None if move is Move.CLAIM else HOLDER
        job_id = _job_in(factory, device_key, state, holder)
        changed = _move(factory, move, job_id)
        assert changed == allowed(move, state), (move, state)
        target = TRANSITIONS[move].target
        assert job(factory, job_id).state == (target if changed and target else state)


@pytest.mark.parametrize("move", [m for m in Move if TRANSITIONS[m].held])
def test_a_stale_holder_changes_nothing(db_url, device_key, move):
    """Its lease went to another scheduler: every holder's move finds nothing to update."""
    factory = session_factory(db_url)
    for state in (JobState.QUEUED, JobState.RUNNING):
        job_id = _job_in(factory, device_key, state, holder="s2")
        before = job(factory, job_id)
        assert not _move(factory, move, job_id, holder=HOLDER)
        after = job(factory, job_id)
        assert (after.state, after.scheduler_id, after.lease_expires_at) == (
            before.state,
            "s2",
            before.lease_expires_at,
        )


def test_a_claim_takes_a_lapsed_lease_but_not_a_live_one(db_url, device_key):
    factory = session_factory(db_url)
    job_id = _job_in(factory, device_key, JobState.RUNNING, holder="s2")
    assert not _move(factory, Move.CLAIM, job_id)
    with session_scope(factory) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(minutes=5))
        )
    assert _move(factory, Move.CLAIM, job_id)
    assert job(factory, job_id).scheduler_id == HOLDER


def test_cancel_ends_a_queued_job_and_flags_a_running_one(db_url, device_key):
    factory = session_factory(db_url)
    queued = _job_in(factory, device_key, JobState.QUEUED)
    running = _job_in(factory, device_key, JobState.RUNNING)
    done = _job_in(factory, device_key, JobState.SUCCEEDED)
    with session_scope(factory) as session:
        assert job_state.cancel(session, queued)
        assert job_state.cancel(session, running)
        assert not job_state.cancel(session, done)
    assert job(factory, queued).state == JobState.CANCELLED
    flagged = job(factory, running)
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert not _move(factory, Move.START, running)  # its holder must end it instead
    assert _move(factory, Move.END_CANCELLED, running)


def test_transient_errors_are_told_from_the_jobs_own():
    assert is_transient(OperationalError("SELECT 1", {}, Exception("server closed")))
    assert is_transient(ConnectionError("broker unreachable"))
    assert not is_transient(ValueError("bad workload"))


# ---- a real fault ----------------------------------------------------------------------
BUDGET = 24
HEARTBEAT_TIMEOUT_S = 10.0  # longer than the restart: the worker is not reaped meanwhile


class SlowFarm:
    """The broker and one worker, in process: ``send_task`` queues the ids; the worker thread
    measures them one batch at a time under ``lock`` (the test takes it to restart the
    database between batches: what a worker does mid-write is not under test here) and
    heartbeats. A batch whose database write fails is tried again, as Celery would."""

    def __init__(self, factory, worker_id: str) -> None:
        self.factory = factory
        self.worker_id = worker_id
        self.lock = threading.Lock()
        self.stored = 0  # results recorded, over every delivery of every batch
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, daemon=True),
            threading.Thread(target=self._heartbeat, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send_task(self, name: str, args: list, queue: str) -> None:
        self._queue.put((name, args))

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                name, args = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            while not self._stop.is_set():
                try:
                    with self.lock:
                        time.sleep(0.2)  # a batch takes a moment: the job spans the restart
                        measurer = FakeMeasurer()
                        if name == REMEASURE_TASK:
                            remeasure_trials(
                                self.factory, args[0], self.worker_id, measurer, *args[1:]
                            )
                        else:
                            self.stored += measure_trials(
                                self.factory, args[0], self.worker_id, measurer
                            )
                    break
                except Exception as err:
                    assert is_transient(err), err
                    time.sleep(0.2)

    def _heartbeat(self) -> None:
        while not self._stop.wait(0.5):
            try:
                with session_scope(self.factory) as session:
                    farm.heartbeat(session, self.worker_id, caller=Caller.trusted())
            except Exception:  # the database restarting
                pass

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


@pytest.mark.slow
@pytest.mark.fault
def test_a_postgresql_restart_mid_job_loses_and_repeats_nothing(
    private_pg, private_pg_url, device_key, monkeypatch
):
    upgrade_database(private_pg_url)
    factory = session_factory(private_pg_url)
    app = SlowFarm(factory, register_worker(factory, device_key))
    monkeypatch.setattr("autosched.service.celery_app.make_celery", lambda settings: app)
    keys = store(factory, matmul(24, 20, 16, "js_pg_restart"))
    job_id = create_job(factory, keys, device_key, trials=BUDGET, seed=7)
    settings = Settings(
        database_url=private_pg_url,
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        batch_size=4,
        trial_unclaimed_resend_s=5,
    )
    try:
        with scheduler_thread(settings):
            wait_for(lambda: len(done_trials(factory, job_id)) >= 8, 60, "a third of the budget")
            with app.lock:  # between two batches of the worker
                before = len(done_trials(factory, job_id))
                private_pg.restart()
                back = time.monotonic()
            assert before < BUDGET, "the job ended before the fault"
            wait_for(
                lambda: len(done_trials(factory, job_id)) > before, 60, "a trial after the restart"
            )
            recover_s = time.monotonic() - back
            print(f"\nPostgreSQL restarted after {before} trials; recovered in {recover_s:.1f} s")
            ended = wait_for_job_end(factory, job_id, 90)
    finally:
        app.close()
    assert ended.state == JobState.SUCCEEDED, ended.error
    check_jobs("postgres_restart_in_process", factory, [job_id], BUDGET, recover_s, app.stored)
    trials = trials_of(factory, job_id)
    assert len(trials) == BUDGET and all(t.state == "done" for t in trials)
    assert len({t.config_digest for t in trials}) == BUDGET  # no config twice
    assert app.stored == BUDGET  # every result recorded exactly once
