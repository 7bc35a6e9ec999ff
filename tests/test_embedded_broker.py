"""The embedded (SQLite) broker: two workers of one device key starting together must not
crash on creating their queue (kombu creates queues with a select-then-insert that is
guarded only within one process). Workers create the queue before they register, so the
scheduler, which waits for an online worker, never takes part in that race."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

QUEUES = 25


def _race(role: str, data_dir: Path, barrier, raw: bool, queues: int) -> None:
    # In a spawned process: two of them meet at ``barrier`` before each queue.
    from kombu import Exchange, Queue

    from autosched.service.celery_app import declare_queue, make_celery
    from autosched.settings import Settings

    settings = Settings(data_dir=data_dir, redis_url=None)
    assert settings.embedded
    app = make_celery(settings)
    for i in range(queues):
        name = f"device.race-{i}"
        barrier.wait(timeout=10)
        if raw:
            queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
            with app.connection_for_write() as conn:
                queue(conn.default_channel).declare()
        else:
            declare_queue(app, name)
        if role == "b":  # a message into the queue just created, kept once
            app.send_task("autosched.measure_trials", args=[[i]], queue=name)


def _run(tmp_path: Path, raw: bool, queues: int = QUEUES) -> list[int | None]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_race, args=(role, tmp_path, barrier, raw, queues))
        for role in ("a", "b")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    return [p.exitcode for p in procs]


def test_two_workers_race_to_create_their_queue(tmp_path: Path) -> None:
    assert _run(tmp_path, raw=False) == [0, 0]
    import sqlite3

    with sqlite3.connect(tmp_path / "broker.db") as db:
        queues = db.execute("select count(*) from kombu_queue").fetchone()[0]
        messages = db.execute("select count(*) from kombu_message").fetchone()[0]
    assert queues == QUEUES and messages == QUEUES  # one queue each, no message lost or doubled


@pytest.mark.slow
def test_the_race_is_real(tmp_path: Path) -> None:
    """Without the retry, kombu's own declare loses the race (what crashed a starting worker
    while the scheduler sent). It did within 25 tries in every run here; up to 400 tries
    keep this control from depending on one machine's timing (a lost race ends it early)."""
    assert _run(tmp_path, raw=True, queues=400) != [0, 0]
