"""Load benchmark: schedule fetches at fixed request rates, and a burst of prioritised jobs.

    python bench/load.py                  # PostgreSQL + Redis on loopback: GET and lookup at
                                          # 100, 200 and 500 requests/s (20 s each), then
                                          # 100 jobs x 8 trials on 2 worker processes
    python bench/load.py --embedded       # SQLite + the SQLite broker instead
    python bench/load.py --quick          # smoke run: 2 s per rate, 10 jobs
    python bench/load.py --parts get --rates 200 --seconds 60 --api-workers 2

It starts the service itself (``EmbeddedService``, as ``autosched up`` does: the API under
uvicorn with ``--api-workers`` processes, default 1 as ``autosched api`` runs it, the
scheduler and ``--workers`` worker processes). PostgreSQL: a fresh database on ``--postgres``
(the server of ``DATABASE_URL``, else 127.0.0.1:5432), dropped afterwards. Redis: an empty
database number (15 down to 1) on the server of ``REDIS_URL`` (else 127.0.0.1:6379), claimed
with a marker key and flushed afterwards, so that neither the tests' database 0 nor their
rate-limit counters see this traffic.

Fetch (``get``: ``GET /v1/schedules/{key}?target=...``; ``lookup``: ``POST
/v1/schedules/lookup`` with the compute declaration): a short real tuning job publishes best
configs for ``--fetch-workloads`` tiny matmuls; then, per rate, locust (headless, a
separate process: ``bench/load_locustfile.py``) sends requests open-loop: request ``i`` is
due at ``i / rate`` seconds whether or not earlier ones were answered, and its latency is
counted from when it was due, so queueing in the server (or in the load generator) shows up
in the latency instead of slowing the load down. Locust users are concurrency slots, each
sending every ``--window-s`` (1 s, within uvicorn's 5 s keep-alive); an answer slower than
that delays its user's next sends: they are counted as late sends, and their lateness is in
their latency (no coordinated omission). An error is a non-2xx answer, a timeout or
connection error, or a 2xx body that is not the tuned schedule. Reads are anonymous by
default with the anonymous rate limit raised for the run (``--auth token`` sends the admin
token instead); the submission limit, which also counts lookups, is raised too.

Jobs: ``--jobs`` tiny matmuls (distinct shapes) are registered, then one job each
(``--trials`` trials, random priority 0..``--priorities``-1) is submitted in a burst; the
run waits for all of them and checks that each succeeded with its trials, and how the
completion order follows priority then age (the rule is printed with the results).

Exit code 0 even when a target is missed: the tables say MET or MISSED.

This module parses the command line and runs the parts: the open-loop statistics are in
``bench/load_stats.py``, the completion-order rule in ``bench/load_order.py``, the parts in
``bench/load_fetch.py`` and ``bench/load_jobs.py``, the service they run against in
``bench/load_service.py`` and the tables in ``bench/load_report.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# `python bench/load.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load_fetch import fetch_part
from bench.load_jobs import JobsResult, jobs_part
from bench.load_order import ORDER_RULE
from bench.load_report import environment, fetch_table, jobs_table, print_verdicts
from bench.load_service import BENCH_RATE_LIMIT, RedisClaim, use_api_workers
from bench.load_stats import RateResult

PARTS = ("get", "lookup", "jobs")
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379"


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"rates: comma-separated numbers, got {text!r}") from err
    if not rates or any(not math.isfinite(r) or r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"parts: some of {', '.join(PARTS)}; got {text!r}")
    return parts


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def _server_of(url: str | None, default: str, schemes: tuple[str, ...]) -> str:
    """``scheme://user@host:port`` of ``url`` (path dropped) when it has one of ``schemes``."""
    if not url or not url.startswith(schemes):
        return default
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    assert __doc__ is not None
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s per rate, 10 jobs")
    ap.add_argument("--embedded", action="store_true", help="SQLite + SQLite broker, no servers")
    ap.add_argument(
        "--postgres",
        default=_server_of(os.environ.get("DATABASE_URL"), DEFAULT_POSTGRES, ("postgresql",)),
        help="PostgreSQL server URL; the run creates (and drops) its own database there",
    )
    ap.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL used as is (default: an empty database number on the server of "
        f"REDIS_URL, else {DEFAULT_REDIS}, flushed afterwards)",
    )
    ap.add_argument(
        "--parts", type=_parts, default=list(PARTS), help="comma-separated: get,lookup,jobs"
    )
    ap.add_argument("--rates", type=_rates, default=[100.0, 200.0, 500.0], help="requests/s")
    ap.add_argument("--lookup-rates", type=_rates, default=None, help="default: --rates")
    ap.add_argument(
        "--seconds", type=_positive(float), default=None, help="per rate (20; --quick 2)"
    )
    ap.add_argument("--timeout-s", type=_positive(float), default=5.0, help="per request")
    ap.add_argument(
        "--window-s",
        type=_positive(float),
        default=1.0,
        help="locust users = rate x window: a user waits for its answer before its next send",
    )
    ap.add_argument(
        "--auth",
        choices=("anonymous", "token"),
        default="anonymous",
        help="reads without a token (anonymous limit raised for the run) or with the admin one",
    )
    ap.add_argument(
        "--api-workers",
        type=_positive(int),
        default=1,
        help="uvicorn worker processes (1: the API as `autosched api` runs it)",
    )
    ap.add_argument("--workers", type=_positive(int), default=2, help="worker processes")
    ap.add_argument("--fetch-workloads", type=_positive(int), default=4)
    ap.add_argument("--jobs", type=_positive(int), default=None, help="100; --quick 10")
    ap.add_argument("--trials", type=_positive(int), default=8, help="trials per job")
    ap.add_argument(
        "--strategy",
        choices=("random", "evolutionary"),
        default="evolutionary",
        help="the jobs' search (default: the client's)",
    )
    ap.add_argument(
        "--priorities", type=_positive(int), default=10, help="priorities 0..N-1, at random"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs-timeout-s", type=_positive(float), default=3600.0)
    ap.add_argument("--target-rate", type=_positive(float), default=200.0)
    ap.add_argument("--target-p99-ms", type=_positive(float), default=20.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 20.0
    if args.jobs is None:
        args.jobs = 10 if args.quick else 100
    if args.lookup_rates is None:
        args.lookup_rates = list(args.rates)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    from autosched.client import Client
    from autosched.service.embedded import EmbeddedService
    from autosched.settings import Settings
    from bench.report import make_console, print_environment
    from bench.service import drop_databases, free_port, fresh_database

    console = make_console(160)
    # The children inherit the environment (EmbeddedService passes it on): the run's own
    # database and broker only, anonymous reads on, the rate limits raised.
    redis_server = _server_of(os.environ.get("REDIS_URL"), DEFAULT_REDIS, ("redis",))
    for name in ("DATABASE_URL", "REDIS_URL", "AUTOSCHED_DATABASE_URL", "AUTOSCHED_REDIS_URL"):
        os.environ.pop(name, None)
    os.environ["AUTOSCHED_ANONYMOUS_READS"] = "true"
    os.environ["AUTOSCHED_ANONYMOUS_RATE_LIMIT"] = BENCH_RATE_LIMIT
    os.environ["AUTOSCHED_SUBMIT_RATE_LIMIT"] = BENCH_RATE_LIMIT
    device_key = f"load-{uuid.uuid4().hex[:8]}"
    claim: RedisClaim | None = None
    fetch: list[RateResult] = []
    jobs: JobsResult | None = None
    with tempfile.TemporaryDirectory(prefix="autosched-load-") as tmp:
        data_dir = Path(tmp)
        svc = None
        try:
            if args.embedded:
                settings = Settings(data_dir=data_dir, api_port=free_port())
                mode = "embedded (SQLite, SQLite broker)"
            else:
                redis_url = args.redis_url
                if redis_url is None:
                    claim = RedisClaim(redis_server)
                    redis_url = claim.url
                database_url = fresh_database(args.postgres, data_dir.name)
                settings = Settings(
                    data_dir=data_dir,
                    api_port=free_port(),
                    database_url=database_url,
                    redis_url=redis_url,
                )
                mode = f"PostgreSQL ({urlsplit(database_url).path[1:]}) + Redis ({redis_url})"
            print_environment(console, environment(args, mode))
            console.print(f"starting the service ({args.workers} workers) ...")
            svc = EmbeddedService(settings, [device_key] * args.workers)
            svc.start()
            if args.api_workers > 1:
                use_api_workers(svc, args.api_workers)
            token = (data_dir / "token").read_text().strip()
            workdir = data_dir / "load"
            workdir.mkdir()
            with Client(svc.url, token=token) as client:
                if "get" in args.parts or "lookup" in args.parts:
                    fetch = fetch_part(args, svc, client, device_key, token, workdir)
                    console.print(fetch_table(fetch, args))
                if "jobs" in args.parts:
                    jobs = jobs_part(
                        args, svc, client, device_key, token, settings.resolved_database_url
                    )
                    console.print(jobs_table(jobs))
                    console.print(ORDER_RULE, highlight=False)
                    if jobs.inversions.unexplained:
                        shown = ", ".join(f"{a}<{b}" for a, b in jobs.inversions.unexplained[:10])
                        console.print(f"unexplained (overtaken<overtaker job ids): {shown}")
        finally:
            if svc is not None:
                svc.stop()
            if not args.embedded:
                drop_databases()
            if claim is not None:
                claim.release()
    print_verdicts(console, args, fetch, jobs)
    if args.json:
        doc = {
            "fetch": [asdict(r) for r in fetch],
            "jobs": None if jobs is None else asdict(jobs),
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
