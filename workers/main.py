"""``python -m workers.main [--device cpu|cuda:N] [--device-key K]``: one device's worker.

A CPU worker measures on this host's cores; a GPU worker (``--device cuda:0``, one per
card) builds on this host's cores and measures on its card, and registers the card's
hardware (``cuda/<arch>/...`` target key). ``--gpu-tag`` describes a card from TVM's target
tags instead of the driver and ``--replay FILE`` answers runs from recorded measurements:
together, a GPU worker for a machine without one (CI).

Registers in the farm, heartbeats from a thread, and consumes only ``device.<key>`` with
Celery's solo pool: one batch at a time, so measurements on a device never overlap (builds
still run in parallel in the measurer's builder processes). SIGTERM finishes the current
batch, then the worker marks itself offline; a worker killed outright stops heartbeating,
the scheduler reaps it and its claimed trials go back to the queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autosched.db.migrate import require_schema
from autosched.db.session import session_factory, session_scope
from autosched.errors import InvalidHardwareError
from autosched.gpu_hardware import detect_gpu_hardware
from autosched.hardware import HardwareParams, cpu_target, detect_hardware
from autosched.host_description import describe_host
from autosched.logs import configure_logging
from autosched.schemas import WorkerRegister
from autosched.service import farm
from autosched.service.celery_app import declare_queue
from autosched.service.device_tasks import device_queue
from autosched.service.measure_trials import FailurePolicy
from autosched.service.tokens import Caller
from autosched.settings import Settings, get_settings

log = logging.getLogger("autosched.worker")


DESCRIPTION = "Measure trials from one device key's queue (register, heartbeat, Celery solo pool)."


DEVICE_PATTERN = re.compile(r"cpu|cuda:([0-9]|1[0-5])")


def default_device_key(hw: HardwareParams) -> str:
    """Workers on identical hardware share one queue: ``cpu-<mcpu>-<cores>c``, or
    ``cuda-<arch>-<SMs>sm`` for a GPU."""
    if hw.gpu is not None:
        return f"cuda-{hw.gpu.arch}-{hw.gpu.sm_count}sm"
    return f"cpu-{hw.mcpu}-{hw.num_cores}c"


def device_hardware(device: str, gpu_tag: str | None = None) -> HardwareParams:
    """The hardware a worker for ``device`` ("cpu" or "cuda:N") schedules for: the card's
    own parameters, or those of ``gpu_tag`` (a TVM target tag) when given."""
    match = DEVICE_PATTERN.fullmatch(device)
    if match is None:
        raise InvalidHardwareError(f"device {device!r} is not 'cpu' or 'cuda:<index>'")
    if device == "cpu":
        return detect_hardware()
    if gpu_tag:
        return detect_gpu_hardware(tag=gpu_tag)
    return detect_gpu_hardware(device=int(match.group(1)))


class Heartbeat(threading.Thread):
    def __init__(self, factory: sessionmaker[Session], worker_id: str, interval_s: float):
        super().__init__(name="heartbeat", daemon=True)
        self.factory = factory
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                with session_scope(self.factory) as session:
                    farm.heartbeat(session, self.worker_id, caller=Caller.trusted())
            except Exception:  # a database blip: the next beat may get through
                log.warning("heartbeat failed", exc_info=True)


def _plain(obj: Any) -> Any:
    """TVM containers (Map, Array) as JSON types."""
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    return [_plain(v) for v in obj]


def register(factory: sessionmaker[Session], device_key: str, hw: HardwareParams) -> WorkerRegister:
    """Register through the database, as a trusted caller: a worker holds the database's
    credentials anyway (it claims trials and records results there), so no API token adds
    anything. Its hardware is validated and pinned like any registration's; a worker whose
    hardware differs from its device key's pin re-pins it (an operator's process)."""

    hostname = socket.gethostname()
    reg = WorkerRegister(
        worker_id=f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        device_key=device_key,
        target_key=hw.target_key,
        target=_plain(cpu_target(hw).export()),
        hardware=describe_host(hw),
        hostname=hostname,
    )
    with session_scope(factory) as session:
        farm.register_worker(session, reg, caller=Caller.trusted())
    return reg


def run_worker(
    device_key: str | None = None,
    settings: Settings | None = None,
    *,
    device: str = "cpu",
    gpu_tag: str | None = None,
    replay: str | None = None,
    loglevel: str = "INFO",
) -> int:
    """Serve ``device_key``'s queue until SIGTERM/SIGINT; returns the exit code."""
    from autosched.tune.measure import LocalMeasurer
    from workers import tasks
    from workers.celery_app import make_celery

    settings = settings or get_settings()
    configure_logging(settings, "worker", loglevel)  # unless the embedding program did
    url = settings.resolved_database_url
    require_schema(url, settings)  # at head, or migrated under the lock, or exit
    factory = session_factory(url)
    hw = device_hardware(device, gpu_tag)
    key = device_key or settings.device_key or default_device_key(hw)
    app = make_celery(settings)
    # The queue exists before the worker is seen online, so the scheduler never creates it.
    declare_queue(app, device_queue(key))
    reg = register(factory, key, hw)
    log.info("worker %s serving %s (%s)", reg.worker_id, device_queue(key), reg.target_key)

    work_dir = tempfile.mkdtemp(prefix="autosched-worker-", dir=settings.worker_work_root)
    measurer = LocalMeasurer.create(work_dir, device=device, replay=replay)
    queue = device_queue(key)

    def stop_consuming() -> None:
        # Quarantined: keep heartbeating (the farm page shows it and why) but take no more
        # messages from the queue. The solo pool runs tasks on the consumer's own thread.
        if queue in app.amqp.queues.consume_from:
            worker.consumer.cancel_task_queue(queue)

    policy = FailurePolicy.from_settings(settings, on_quarantine=stop_consuming)
    tasks.configure(tasks.WorkerContext(factory, reg.worker_id, measurer, policy))
    heartbeat = Heartbeat(factory, reg.worker_id, settings.heartbeat_interval_s)
    heartbeat.start()
    worker = app.Worker(
        hostname=f"{key}.{reg.worker_id.rsplit(':', 1)[-1]}@{reg.hostname}",
        queues=[queue],
        pool_cls="solo",
        concurrency=1,
        loglevel=loglevel,
        without_heartbeat=True,  # liveness is the database heartbeat
        without_mingle=True,
        without_gossip=True,
    )
    try:
        worker.start()
    finally:
        heartbeat.stopped.set()
        tasks.configure(None)
        try:
            with session_scope(factory) as session:
                requeued = farm.mark_offline(session, reg.worker_id)
            log.info("worker %s offline (%d trials back in the queue)", reg.worker_id, requeued)
        finally:
            measurer.close()
            shutil.rmtree(work_dir, ignore_errors=True)
    return worker.exitcode or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.main", description=DESCRIPTION)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda:<index>")
    parser.add_argument(
        "--device-key", default=None, help="default: cpu-<mcpu>-<cores>c or cuda-<arch>-<SMs>sm"
    )
    parser.add_argument("--gpu-tag", default=None, help="describe the GPU by a TVM target tag")
    parser.add_argument("--replay", default=None, help="answer runs from recorded measurements")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(get_settings(), "worker", args.log_level)
    raise SystemExit(
        run_worker(
            args.device_key,
            device=args.device,
            gpu_tag=args.gpu_tag,
            replay=args.replay,
            loglevel=args.log_level.upper(),
        )
    )


if __name__ == "__main__":
    main()
