"""``python -m services.scheduler.main``: the scheduler process.

Each loop: reap workers that stopped heartbeating (their trials go back to the queue),
then claim runnable jobs — queued, or running under a lapsed lease (their scheduler died) —
highest priority first, then oldest, and run each in a thread of its own. Jobs on the same
device key share it through one ``DeviceGate``. SIGTERM (or ``stop_event``) stops the
loop; running jobs release their lease so the next scheduler resumes them at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.migrate import require_schema
from autosched.db.models import Job
from autosched.db.session import session_factory, session_scope
from autosched.logs import configure_logging
from autosched.service import job_state
from autosched.service.device_gate import DeviceGate
from autosched.service.farm import reap_silent_workers
from autosched.service.job_runner import run_job
from autosched.settings import Settings, get_settings

log = logging.getLogger("autosched.scheduler")


DESCRIPTION = "Claim jobs, run their search loops, dispatch trials to device queues."

JOIN_TIMEOUT_S = 30.0


def claim_jobs(
    factory: sessionmaker[Session],
    scheduler_id: str,
    lease_s: float,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> list[int]:
    """Take every runnable job nobody holds, in (priority desc, created asc) order.

    A claim is the state machine's conditional ``claim`` (``job_state``), so two schedulers
    never both get a job, and a skewed scheduler takes no lease early (database clock).
    """
    claimed = []
    with session_scope(factory) as session:
        candidates = session.scalars(
            select(Job.id)
            .where(*job_state.claimable())
            .order_by(Job.priority.desc(), Job.created_at, Job.id)
        ).all()
        for job_id in candidates:
            if job_id not in exclude and job_state.claim(session, job_id, scheduler_id, lease_s):
                claimed.append(job_id)
    return claimed


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals only reach the main thread; the caller owns stop_event
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def run_scheduler(
    settings: Settings | None = None,
    stop_event: threading.Event | None = None,
    *,
    poll_s: float = 1.0,
) -> None:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT in the main thread)."""
    from autosched.service.celery_app import make_celery  # configuration only, no tasks

    settings = settings or get_settings()
    configure_logging(settings, "scheduler")  # unless the embedding program did
    url = settings.resolved_database_url
    require_schema(url, settings)  # at head, or migrated under the lock, or exit
    factory = session_factory(url)
    app = make_celery(settings)
    stop = stop_event or threading.Event()
    _install_signal_handlers(stop)
    scheduler_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    gate = DeviceGate(settings.batches_in_flight_per_device)
    threads: dict[int, threading.Thread] = {}
    log.info("scheduler %s started (database %s)", scheduler_id, factory.kw["bind"].url)
    while not stop.is_set():
        try:
            with session_scope(factory) as session:
                requeued = reap_silent_workers(
                    session, settings.heartbeat_timeout_s, settings.max_trial_attempts
                )
            if requeued:
                log.warning("reaped silent workers: %d trials back in the queue", requeued)
            for job_id in claim_jobs(
                factory, scheduler_id, settings.heartbeat_timeout_s, set(threads)
            ):
                thread = threading.Thread(
                    target=run_job,
                    args=(job_id, factory, app, scheduler_id, stop),
                    kwargs={"settings": settings, "gate": gate, "poll_s": poll_s},
                    name=f"job-{job_id}",
                    daemon=True,
                )
                thread.start()
                threads[job_id] = thread
                log.info("claimed job %d", job_id, extra={"job_id": job_id})
        except Exception:  # the database or broker is down: keep trying
            log.exception("scheduler loop failed; retrying")
        threads = {j: t for j, t in threads.items() if t.is_alive()}
        stop.wait(poll_s)
    log.info("scheduler stopping: %d jobs to release", len(threads))
    for thread in threads.values():
        thread.join(JOIN_TIMEOUT_S)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.scheduler.main", description=DESCRIPTION
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(get_settings(), "scheduler", args.log_level)
    run_scheduler()


if __name__ == "__main__":
    main()
