"""Service benchmark: measurement throughput of the device farm and schedule-fetch latency.

    python bench/service.py                  # PostgreSQL + Redis on loopback (the default
                                             # URLs below), 1 then 2 worker processes
    python bench/service.py --embedded       # SQLite + SQLite broker instead
    python bench/service.py --trials 64 --rate 100 --seconds 20

Throughput: one job of ``--trials`` trials on a small matmul, timed from submission to the
job's end, with one and then two worker processes on the same device key (a batch is split
between the online workers). Fetch latency: ``GET /v1/schedules/{key}`` sent open-loop at a
fixed rate by ``bench/load.py``'s locust driver (requests leave on schedule whether or not
earlier ones answered, so a slow response can't hide the queueing it causes) and reported as
p50/p99; ``bench/load.py`` measures several rates, the lookup route and a burst of jobs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.table import Table
from tvm import te

from autosched.client import Client
from autosched.service.embedded import EmbeddedService
from autosched.settings import Settings
from autosched.wire import Workload
from bench.report import make_console

console = make_console(140)


def free_port() -> int:
    """A TCP port free on loopback now (for the API of a service a bench starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _matmul(n: int, salt: str) -> Workload:
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return Workload.from_tensors([a, b, c], f"bench_matmul_{n}_{salt.replace('-', '_')}")


def _settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    """A fresh database per run, so no run reuses another's measurements."""
    if args.embedded:
        return Settings(data_dir=data_dir, api_port=free_port())
    return Settings(
        data_dir=data_dir,
        api_port=free_port(),
        database_url=fresh_database(args.postgres, data_dir.name),
        redis_url=args.redis_url,
    )


def throughput(args: argparse.Namespace, workers: int, size: int) -> tuple[float, str, str]:
    """Trials per minute with ``workers`` worker processes; also the tuned key and target."""
    device_key = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="autosched-bench-") as tmp:
        svc = EmbeddedService(_settings(args, Path(tmp)), [device_key] * workers)
        svc.start()
        try:
            token = (Path(tmp) / "token").read_text().strip()
            with Client(svc.url, token=token) as client:
                workload = _matmul(size, device_key)
                client.register_workload(workload)
                t0 = time.perf_counter()
                job = client.submit_job(
                    [workload], device_key=device_key, trials=args.trials, strategy="random"
                )
                done = client.wait_for_job(job.id, poll_s=0.2, timeout=1800)
                wall = time.perf_counter() - t0
                if done.state != "succeeded":
                    raise RuntimeError(f"job {job.id} ended {done.state}: {done.error}")
                if args.fetch_after and workers == args.fetch_after:
                    fetch_latency(args, svc.url, workload.key, done.target_key or "", token)
            return done.trials_done / wall * 60.0, workload.key, done.target_key or ""
        finally:
            svc.stop()


def fetch_latency(args: argparse.Namespace, url: str, key: str, target: str, token: str) -> None:
    """Open-loop GETs at ``args.rate`` per second for ``args.seconds`` (bench/load.py's
    locust driver, with the admin token: anonymous reads are rate-limited per address);
    prints p50/p99. ``bench/load.py`` measures several rates and the lookup route."""
    from urllib.parse import urlencode

    from bench.load_fetch import Request, drive

    path = f"/v1/schedules/{key}?{urlencode({'target': target})}"
    with tempfile.TemporaryDirectory(prefix="autosched-fetch-") as tmp:
        r = drive(
            url,
            "get",
            [Request("GET", path)],
            rate=args.rate,
            seconds=args.seconds,
            headers={"Authorization": f"Bearer {token}"},
            expect='"source":"tuned"',
            timeout_s=10.0,
            window_s=1.0,
            workdir=Path(tmp),
        )
    ms = "{:.2f}".format
    console.print(
        f"GET /v1/schedules/{{key}}: {r.requests} requests at {args.rate:g}/s "
        f"(achieved {r.achieved or 0:.1f}/s), p50 {ms((r.p50_s or 0) * 1e3)} ms, "
        f"p99 {ms((r.p99_s or 0) * 1e3)} ms, max {ms((r.max_s or 0) * 1e3)} ms, "
        f"errors {r.errors}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedded", action="store_true", help="SQLite + SQLite broker, no Redis")
    ap.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432",
        help="server URL; each run creates (and drops) its own database there",
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--trials", type=int, default=48, help="trials per throughput run")
    ap.add_argument("--size", type=int, default=128, help="matmul size of the workload")
    ap.add_argument("--rate", type=float, default=50.0, help="schedule fetches per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="fetch-latency run length")
    args = ap.parse_args(argv)
    args.fetch_after = 2
    mode = "embedded (SQLite, SQLite broker)" if args.embedded else "PostgreSQL + Redis"
    console.print(f"[bold]mode[/]: {mode}; load average {os.getloadavg()[0]:.2f}")
    table = Table(title=f"measurement throughput ({args.trials} trials, matmul {args.size}³)")
    table.add_column("worker processes", justify="right")
    table.add_column("trials/min", justify="right")
    rates = {}
    try:
        for workers in (1, 2):
            rate, _, _ = throughput(args, workers, args.size)
            rates[workers] = rate
            table.add_row(str(workers), f"{rate:.1f}")
    finally:
        drop_databases()
    console.print(table)
    console.print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}×")
    return 0


def fresh_database(server: str, tag: str) -> str:
    """A new, empty PostgreSQL database on ``server`` named after ``tag`` (dropped first if a
    run left it); its URL. ``drop_databases`` drops every one made so."""
    from sqlalchemy import create_engine, text

    name = "autosched_bench_" + "".join(c for c in tag if c.isalnum()).lower()[-16:]
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    _created.append((server, name))
    return f"{server}/{name}"


_created: list[tuple[str, str]] = []


def drop_databases() -> None:
    """Drop the databases ``fresh_database`` made in this process."""
    from sqlalchemy import create_engine, text

    for server, name in _created:
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
