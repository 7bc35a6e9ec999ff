"""The embedded (SQLite) broker.

Two workers of one device key starting together must not crash on creating their queue
(kombu creates queues with a select-then-insert that is guarded only within one process).
Workers create the queue before they register, so the scheduler, which waits for an online
worker, never takes part in that race.

The service's transport (``autosched.service.embedded_broker``) deletes what it delivers
(kombu's own keeps every message forever, marked invisible), puts back what a consumer took
unacknowledged, and raises on a publish it could not store (a write lock held past the
timeout), so Celery's publish retry policy applies and a retried publish lands once.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

QUEUES = 25

# kombu's SQLAlchemy models use a loader option SQLAlchemy 2.1 deprecates (kombu's issue).
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


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


# --- the transport: what it delivers it deletes, what it cannot store it raises ------------


def _embedded_app(data_dir: Path, lock_timeout_s: float | None = None):
    from autosched.service.celery_app import make_celery
    from autosched.settings import Settings

    app = make_celery(Settings(data_dir=data_dir, redis_url=None))
    if lock_timeout_s is not None:  # how long SQLite waits on a held lock (30 s in service)
        app.conf.broker_transport_options = {
            "connect_args": {"timeout": lock_timeout_s, "check_same_thread": False}
        }
    return app


def _rows(data_dir: Path) -> tuple[int, int]:
    """(every message row, visible ones) in the broker file."""
    import sqlite3

    with sqlite3.connect(data_dir / "broker.db") as db:
        total, visible = db.execute("select count(*), sum(visible) from kombu_message").fetchone()
    return total, visible or 0


def _queue(name: str):
    from kombu import Exchange, Queue

    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _sent_ids(app, name: str, n: int, *, ack: bool = True) -> list[int]:
    """Take ``n`` messages of queue ``name`` as a consumer would; the first trial id of each."""
    got = []
    with app.connection_for_read() as conn, conn.SimpleQueue(_queue(name)) as queue:
        for _ in range(n):
            message = queue.get(timeout=5)
            got.append(message.payload[0][0][0])  # Celery protocol 2: [args, kwargs, embed]
            if ack:
                message.ack()
    return got


def test_the_embedded_broker_uses_its_own_transport(tmp_path: Path) -> None:
    from autosched.service.embedded_broker import Transport

    app = _embedded_app(tmp_path)
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.transport_options["connect_args"]["timeout"] == 30


def test_delivered_messages_leave_no_rows(tmp_path: Path) -> None:
    from autosched.service.celery_app import declare_queue

    app = _embedded_app(tmp_path)
    declare_queue(app, "device.rows")
    n = 40
    for i in range(n):
        app.send_task("autosched.measure_trials", args=[[i]], queue="device.rows")
    assert _rows(tmp_path) == (n, n)
    assert _sent_ids(app, "device.rows", n) == list(range(n))  # in order, each once
    assert _rows(tmp_path) == (0, 0)  # kombu's own transport keeps n invisible rows here

    # What a consumer took but never acknowledged comes back (its channel closes), once.
    app.send_task("autosched.measure_trials", args=[[99]], queue="device.rows")
    assert _sent_ids(app, "device.rows", 1, ack=False) == [99]
    assert _rows(tmp_path) == (1, 1)
    assert _sent_ids(app, "device.rows", 1) == [99]
    assert _rows(tmp_path) == (0, 0)


def test_rows_left_by_kombus_transport_are_swept(tmp_path: Path) -> None:
    """A broker file written by kombu's own transport (delivered rows kept invisible) is
    cleaned when the service's transport first opens it."""
    from celery import Celery

    from autosched.service.celery_app import declare_queue

    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    stock = Celery("stock", broker=url, set_as_current=False)
    declare_queue(stock, "device.old")
    for i in range(5):
        stock.send_task("autosched.measure_trials", args=[[i]], queue="device.old")
    assert _sent_ids(stock, "device.old", 3) == [0, 1, 2]
    assert _rows(tmp_path) == (5, 2)  # the growth this transport exists to stop

    # A fresh process (the sweep runs once per process and file), then the service's app.
    code = (
        "from pathlib import Path; from autosched.settings import Settings;"
        "from autosched.service.celery_app import make_celery;"
        f"app = make_celery(Settings(data_dir=Path({str(tmp_path)!r}), redis_url=None));"
        "c = app.connection_for_write(); c.default_channel.session; c.release()"
    )
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
    assert _rows(tmp_path) == (2, 2)
    assert _sent_ids(_embedded_app(tmp_path), "device.old", 2) == [3, 4]


def test_a_publish_on_a_held_lock_raises_instead_of_vanishing(tmp_path: Path) -> None:
    """Another connection holds the broker file's write lock longer than the publish waits:
    the publish fails loudly and stores nothing (older kombu releases reported success)."""
    import sqlite3

    from kombu.exceptions import OperationalError

    from autosched.service.celery_app import declare_queue

    app = _embedded_app(tmp_path, lock_timeout_s=0.2)
    declare_queue(app, "device.locked")
    holder = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock; readers still get in
    try:
        with pytest.raises(OperationalError, match="locked"):
            app.send_task(
                "autosched.measure_trials", args=[[1]], queue="device.locked", retry=False
            )
        # With the service's retry policy it keeps trying, and still fails while held.
        with pytest.raises(OperationalError, match="locked"):
            app.send_task(
                "autosched.measure_trials",
                args=[[2]],
                queue="device.locked",
                retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.1},
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _rows(tmp_path) == (0, 0)


def test_a_publish_retried_past_a_held_lock_lands_once(tmp_path: Path) -> None:
    import sqlite3
    import threading
    import time

    from autosched.service.celery_app import declare_queue

    app = _embedded_app(tmp_path, lock_timeout_s=0.2)
    declare_queue(app, "device.retry")
    holder = sqlite3.connect(tmp_path / "broker.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    start = time.monotonic()
    try:
        # The service's own policy (task_publish_retry_policy): each try waits 0.2 s on the
        # lock, kombu reconnects and tries again until the holder lets go.
        app.send_task("autosched.measure_trials", args=[[7]], queue="device.retry")
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - start >= 1.0  # it did wait for the lock
    assert _rows(tmp_path) == (1, 1)
    assert _sent_ids(app, "device.retry", 1) == [7]
    assert _rows(tmp_path) == (0, 0)


def test_a_celery_worker_on_the_embedded_broker_leaves_no_rows(tmp_path: Path, device_key):
    """The real consumer (a ``workers.main`` process: acks_late, prefetch 1, solo pool)
    takes every message once and the broker file ends empty."""
    import re

    from autosched.db.session import session_factory, upgrade_database
    from autosched.service.device_tasks import MEASURE_TASK, device_queue
    from tests.farm_support import online, service_env, start, stop, wait_for

    app = _embedded_app(tmp_path)
    database = f"sqlite:///{tmp_path / 'autosched.db'}"
    upgrade_database(database)
    log = tmp_path / "worker.log"
    worker = start(
        "workers.main", service_env(tmp_path, None, None), log, "--device-key", device_key
    )
    try:
        wait_for(lambda: online(session_factory(database), device_key), 120, "the worker online")
        n = 20
        for i in range(n):  # ids of no trial: each task claims nothing and is acknowledged
            app.send_task(MEASURE_TASK, args=[[10**6 + i]], queue=device_queue(device_key))

        def handled() -> int:
            return len(re.findall(r"already claimed or finished", log.read_text(errors="replace")))

        wait_for(lambda: handled() >= n, 120, "the worker to take every message")
        wait_for(lambda: _rows(tmp_path) == (0, 0), 30, "the broker file to be empty")
        assert handled() == n  # each message delivered once
    finally:
        stop(worker)
