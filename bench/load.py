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

This module's top level imports only the standard library: the locustfile imports its
scheduling arithmetic, and the test imports it without TVM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "bench" / "load_locustfile.py"
PARTS = ("get", "lookup", "jobs")
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
# Raised for the bench (defaults: 300/minute anonymous, 60/minute submissions): the load
# comes from one address and one token. The limiter still runs on every request.
BENCH_RATE_LIMIT = "10000000/minute"
REDIS_CLAIM_KEY = "autosched-bench-load:owner"
# A send more than this behind schedule counts as late (the load generator fell behind).
LATE_S = 0.005
# Locust spawns users this many times faster than ``users`` per second; the first request
# is due ``LEAD_S`` after the run starts, when every user is up.
SPAWN_FACTOR = 4
LEAD_S = 1.0
# A batch's request and its grant are stamped by different statements: grants this close
# after a request are not counted against the gate.
GATE_SLACK_S = 0.25


# --------------------------------------------------------------------------------------
# Open-loop schedule and latency statistics (pure; used by the locustfile and the test)
# --------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One request: its slot, how late it left and how long it took, both from when it was
    due (seconds), the HTTP status (0: no answer) and the error ("" when it was fine)."""

    slot: int
    lateness_s: float
    latency_s: float
    status: int
    error: str


def request_count(rate: float, seconds: float) -> int:
    """Requests in a run of ``seconds`` at ``rate`` per second (at least one)."""
    return max(1, round(rate * seconds))


def send_offset(slot: int, rate: float) -> float:
    """When request ``slot`` is due, in seconds after the first one."""
    return slot / rate


def users_for(rate: float, window_s: float, count: int) -> int:
    """Concurrency slots (locust users) for ``rate``: each user sends one request every
    ``users / rate`` seconds, so an answer slower than ``window_s`` makes its user late
    (counted, and added to the latency). Never more users than requests."""
    return max(1, min(count, math.ceil(rate * window_s)))


def user_slots(index: int, users: int, count: int) -> range:
    """The requests user ``index`` of ``users`` sends: every ``users``-th from ``index``."""
    return range(index, count, users)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, interpolated linearly between the
    closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class RateResult:
    mode: str
    rate: float  # asked, per second
    requests: int  # due in the run
    answered: int  # records received (the rest never left or never came back)
    achieved: float | None  # requests actually sent per second
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None
    errors: int
    error_kinds: dict[str, int]
    late: int  # sent more than LATE_S behind schedule
    target: str = "-"  # MET / MISSED where a target applies

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def summarize(mode: str, rate: float, count: int, records: Iterable[Record]) -> RateResult:
    """Latency percentiles over every answered request (failed ones too), errors over every
    request that was due (one that never came back is an error: "missing")."""
    recs = [Record(*r) for r in records]
    latencies = sorted(r.latency_s for r in recs)
    kinds: dict[str, int] = {}
    for r in recs:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    missing = count - len(recs)
    if missing > 0:
        kinds["missing"] = missing
    starts = sorted(send_offset(r.slot, rate) + r.lateness_s for r in recs)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    achieved = (len(starts) - 1) / span if span > 0 else None

    def pct(q: float) -> float | None:
        return percentile(latencies, q) if latencies else None

    return RateResult(
        mode=mode,
        rate=rate,
        requests=count,
        answered=len(recs),
        achieved=achieved,
        p50_s=pct(50),
        p90_s=pct(90),
        p99_s=pct(99),
        max_s=latencies[-1] if latencies else None,
        errors=sum(kinds.values()),
        error_kinds=kinds,
        late=sum(r.lateness_s > LATE_S for r in recs),
    )


def judge(result: RateResult, target_rate: float, target_p99_s: float) -> str:
    """MET / MISSED for the GET row at the target rate (p99 within the bound, no error)."""
    if result.mode != "get" or not math.isclose(result.rate, target_rate):
        return "-"
    ok = result.p99_s is not None and result.p99_s <= target_p99_s and result.errors == 0
    return "MET" if ok else "MISSED"


# --------------------------------------------------------------------------------------
# Completion order (pure)
# --------------------------------------------------------------------------------------

ORDER_RULE = f"""\
Order rule. Jobs rank by priority (higher first), then age (created earlier first; id breaks
ties). A pair is inverted when the lower-ranked job finished first. An inversion is allowed
when the job that finished first already had a batch on the device (its first trial
dispatched) before the higher-ranked job first asked for the device (its first trial row
written): the device gate reorders only batches that wait, never one on the device, and a
job lets others through while it proposes its next batch. Any other inversion is
unexplained. Gate check: every batch grant (a batch's first dispatch) is compared with the
batches of other jobs that were waiting at that moment (trials written more than
{GATE_SLACK_S:g} s before the grant, dispatched after it): none may outrank it.
MET: every job succeeded with its trials, no unexplained inversion, no gate inversion."""


@dataclass(frozen=True)
class JobTiming:
    id: int
    priority: int
    created: float  # seconds (any common origin)
    finished: float | None
    asked: float | None  # first trial written: the job first asked for the device
    on_device: float | None  # first trial dispatched


def rank_key(job: JobTiming) -> tuple[int, float, int]:
    return (-job.priority, job.created, job.id)


@dataclass
class Inversions:
    pairs: int  # ranked pairs compared
    total: int
    allowed: int
    unexplained: list[tuple[int, int]] = field(default_factory=list)  # (overtaken, overtaker)


def completion_inversions(jobs: Sequence[JobTiming]) -> Inversions:
    """Inverted pairs among the finished jobs (see ``ORDER_RULE``)."""
    done = sorted((j for j in jobs if j.finished is not None), key=rank_key)
    result = Inversions(pairs=len(done) * (len(done) - 1) // 2, total=0, allowed=0)
    for i, high in enumerate(done):
        for low in done[i + 1 :]:
            assert high.finished is not None and low.finished is not None
            if low.finished >= high.finished:
                continue
            result.total += 1
            was_running = (
                low.on_device is not None and high.asked is not None and low.on_device < high.asked
            )
            if was_running:
                result.allowed += 1
            else:
                result.unexplained.append((high.id, low.id))
    return result


@dataclass(frozen=True)
class Batch:
    job: JobTiming
    requested: float  # its first trial row written
    granted: float  # dispatched


def merge_chunks(dispatches: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """One job's batches from its dispatches, each ``(first trial written, dispatched)``.

    A batch goes out as one task per online worker, each stamped by its own update; a
    dispatch whose trials were all written before the previous one left is a chunk of that
    batch (the next batch is proposed only after the previous one's results). Returns
    ``(requested, granted)`` per batch: the earliest write and the first chunk's dispatch.
    """
    batches: list[tuple[float, float]] = []
    for requested, granted in sorted(dispatches, key=lambda d: d[1]):
        if batches and requested <= batches[-1][1]:
            batches[-1] = (min(batches[-1][0], requested), batches[-1][1])
        else:
            batches.append((requested, granted))
    return batches


def gate_inversions(batches: Sequence[Batch], slack_s: float = GATE_SLACK_S) -> list[tuple]:
    """Grants made while a batch of a higher-ranked job waited: ``(granted job id, waiting
    job id, grant time)`` for each (see ``ORDER_RULE``)."""
    found = []
    for x in batches:
        for y in batches:
            if y.job.id == x.job.id or rank_key(y.job) >= rank_key(x.job):
                continue
            if y.requested + slack_s < x.granted < y.granted:
                found.append((x.job.id, y.job.id, x.granted))
    return found


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Driving one rate with locust
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query string
    body: str | None = None


def drive(
    url: str,
    mode: str,
    requests: Sequence[Request],
    *,
    rate: float,
    seconds: float,
    headers: dict[str, str],
    expect: str,
    timeout_s: float,
    window_s: float,
    workdir: Path,
) -> RateResult:
    """One open-loop run of ``rate`` requests/s for ``seconds`` (cycling ``requests``)."""
    count = request_count(rate, seconds)
    users = users_for(rate, window_s, count)
    tag = f"{mode}-{rate:g}"
    spec_path, out_path, log_path = (workdir / f"{tag}.{x}" for x in ("spec.json", "out", "log"))
    spec = {
        "rate": rate,
        "count": count,
        "users": users,
        "requests": [asdict(r) for r in requests],
        "headers": headers,
        "expect": expect,
        "timeout_s": timeout_s,
        "lead_s": LEAD_S,
        "out": str(out_path),
    }
    spec_path.write_text(json.dumps(spec))
    run_time = math.ceil(LEAD_S + seconds + timeout_s + 10)
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users * SPAWN_FACTOR), "--run-time", f"{run_time}s",
        "--host", url, "--load-spec", str(spec_path), "--only-summary",
        "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        done = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, timeout=run_time + 60, check=False
        )
    if not out_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust exited {done.returncode} without results:\n{tail}")
    records = [Record(*r) for r in json.loads(out_path.read_text())]
    return summarize(mode, rate, count, records)


def settle(url: str, timeout_s: float = 60.0) -> None:
    """Wait until the API answers its health check quickly again (after an overload, the
    backlog of the previous rate drains before the next one starts)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=5.0) as http:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                if http.get("/healthz").status_code == 200 and time.perf_counter() - t < 0.05:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)


# --------------------------------------------------------------------------------------
# The service under test
# --------------------------------------------------------------------------------------


class RedisClaim:
    """An empty Redis database number, marked as this run's, flushed on release."""

    def __init__(self, server: str) -> None:
        import redis

        self.owner = uuid.uuid4().hex
        parts = urlsplit(server)
        for db in range(15, 0, -1):
            url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
            client = redis.Redis.from_url(url)
            if client.set(REDIS_CLAIM_KEY, self.owner, nx=True, ex=24 * 3600):
                if client.dbsize() == 1:
                    self.url, self.client = url, client
                    return
                client.delete(REDIS_CLAIM_KEY)
        raise RuntimeError(f"no empty Redis database (1-15) on {server}; pass --redis-url")

    def release(self) -> None:
        if (self.client.get(REDIS_CLAIM_KEY) or b"").decode() == self.owner:
            self.client.flushdb()


def use_api_workers(svc: Any, workers: int, timeout_s: float = 120.0) -> None:
    """Replace the embedded API child by ``uvicorn --workers N`` on the same port (the
    service itself has no setting for it: ``serve()`` runs one process)."""
    import httpx

    api = next(c for c in svc.children if c.name == "api")
    api.stop()
    api.argv = [
        sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
        "--host", svc.settings.api_host, "--port", str(svc.settings.api_port),
        "--workers", str(workers),
    ]  # fmt: skip
    api.start(svc._env())  # the same environment as the other children
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{svc.url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"uvicorn with {workers} workers not ready (log {api.log_path})")


def tiny_matmul(m: int, n: int, k: int) -> Any:
    """A workload that builds and runs in milliseconds; the shape makes its key."""
    from tvm import te

    from autosched.wire import Workload

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return Workload.from_tensors([a, b, c], f"load_matmul_{m}x{n}x{k}")


def _register(client: Any, workloads: Sequence[Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # The API builds templates in a pool of two sandboxes: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(client.register_workload, workloads))


# --------------------------------------------------------------------------------------
# The two parts
# --------------------------------------------------------------------------------------


def fetch_part(
    args: argparse.Namespace, svc: Any, client: Any, device_key: str, token: str, workdir: Path
) -> list[RateResult]:
    from bench.report import make_console

    console = make_console(140)
    # 16 x 16 x 16(i+1): shapes none of the jobs use.
    workloads = [tiny_matmul(16, 16, 16 * (i + 1)) for i in range(args.fetch_workloads)]
    _register(client, workloads)
    console.print(f"publishing best configs: one job, {len(workloads)} workloads x 2 trials")
    job = client.submit_job(
        [w.key for w in workloads], device_key=device_key, trials=2, strategy="random"
    )
    done = client.wait_for_job(job.id, poll_s=0.5, timeout=1800)
    if done.state != "succeeded" or not done.target_key:
        raise RuntimeError(f"seed job {job.id} ended {done.state}: {done.error}")
    target = done.target_key
    for w in workloads:  # every one must answer its tuned schedule
        if client.schedule(w.key, target=target).source != "tuned":
            raise RuntimeError(f"no tuned schedule published for {w.key}")
    auth = {"Authorization": f"Bearer {token}"} if args.auth == "token" else {}
    query = urlencode({"target": target})
    get = [Request("GET", f"/v1/schedules/{w.key}?{query}") for w in workloads]
    lookup = [
        Request(
            "POST", "/v1/schedules/lookup", json.dumps({"workload": w.to_json(), "target": target})
        )
        for w in workloads
    ]
    modes = {
        "get": (get, args.rates, auth),
        "lookup": (lookup, args.lookup_rates, {**auth, "Content-Type": "application/json"}),
    }
    results = []
    for mode, (requests, rates, headers) in modes.items():
        if mode not in args.parts:
            continue
        for rate in rates:
            settle(svc.url)
            console.print(f"{mode}: {rate:g} requests/s for {args.seconds:g} s ...")
            result = drive(
                svc.url,
                mode,
                requests,
                rate=rate,
                seconds=args.seconds,
                headers=headers,
                expect='"source":"tuned"',
                timeout_s=args.timeout_s,
                window_s=args.window_s,
                workdir=workdir,
            )
            result.target = judge(result, args.target_rate, args.target_p99_ms / 1e3)
            results.append(result)
    return results


@dataclass
class JobsResult:
    jobs: int
    trials: int
    workers: int
    succeeded: int
    with_all_trials: int
    wall_s: float
    jobs_per_min: float
    trials_per_min: float
    inversions: Inversions
    gate_batches: int
    gate_inversions: int
    states: dict[str, int]
    met: bool


def _seconds(t: datetime | None, origin: datetime) -> float | None:
    return None if t is None else (t - origin).total_seconds()


def job_timings(database_url: str, job_ids: Sequence[int]) -> tuple[list[JobTiming], list[Batch]]:
    """The jobs' ranks and times, and their batches, read from the service's database."""
    from sqlalchemy import select

    from autosched.db.models import Job, Trial
    from autosched.db.session import session_factory, session_scope

    with session_scope(session_factory(database_url)) as session:
        jobs = session.execute(
            select(Job.id, Job.priority, Job.created_at, Job.finished_at).where(Job.id.in_(job_ids))
        ).all()
        trials = session.execute(
            select(Trial.job_id, Trial.created_at, Trial.dispatched_at).where(
                Trial.job_id.in_(job_ids)
            )
        ).all()
    origin = min(j.created_at for j in jobs)
    asked: dict[int, float] = {}
    on_device: dict[int, float] = {}
    groups: dict[tuple[int, datetime], float] = {}  # (job, dispatch time) -> first written
    for t in trials:
        written = _seconds(t.created_at, origin)
        assert written is not None
        asked[t.job_id] = min(asked.get(t.job_id, math.inf), written)
        if t.dispatched_at is not None:
            sent = _seconds(t.dispatched_at, origin)
            assert sent is not None
            on_device[t.job_id] = min(on_device.get(t.job_id, math.inf), sent)
            key = (t.job_id, t.dispatched_at)
            groups[key] = min(groups.get(key, math.inf), written)
    timings = {
        j.id: JobTiming(
            j.id,
            j.priority,
            _seconds(j.created_at, origin) or 0.0,
            _seconds(j.finished_at, origin),
            asked.get(j.id),
            on_device.get(j.id),
        )
        for j in jobs
    }
    per_job: dict[int, list[tuple[float, float]]] = {}
    for (job_id, sent), requested in groups.items():
        per_job.setdefault(job_id, []).append((requested, _seconds(sent, origin) or 0.0))
    batches = [
        Batch(timings[job_id], requested, granted)
        for job_id, dispatches in per_job.items()
        for requested, granted in merge_chunks(dispatches)
    ]
    return list(timings.values()), batches


def jobs_part(
    args: argparse.Namespace,
    svc: Any,
    client: Any,
    device_key: str,
    token: str,
    database_url: str,
) -> JobsResult:
    import random

    import httpx

    from autosched.vocabulary import TERMINAL_JOB_STATES
    from bench.report import make_console

    console = make_console(140)
    # 8 x 16 x (8 + 4i): distinct keys, so no job reuses another's measurements.
    workloads = [tiny_matmul(8, 16, 8 + 4 * i) for i in range(args.jobs)]
    console.print(f"jobs: registering {len(workloads)} workloads ...")
    _register(client, workloads)
    rng = random.Random(args.seed)
    priorities = [rng.randrange(args.priorities) for _ in workloads]
    console.print(f"jobs: submitting {len(workloads)} jobs x {args.trials} trials ...")
    ids = [
        client.submit_job(
            [w.key], device_key=device_key, trials=args.trials, strategy=args.strategy, priority=p
        ).id
        for w, p in zip(workloads, priorities, strict=True)
    ]
    deadline = time.monotonic() + args.jobs_timeout_s
    wanted = set(ids)
    views: dict[int, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=svc.url, headers=headers, timeout=30.0) as http:
        while time.monotonic() < deadline:
            r = http.get("/v1/jobs", params={"limit": 1000})
            r.raise_for_status()
            views = {j["id"]: j for j in r.json() if j["id"] in wanted}
            if len(views) == len(wanted) and all(
                j["state"] in TERMINAL_JOB_STATES for j in views.values()
            ):
                break
            time.sleep(1.0)
    states: dict[str, int] = {}
    for j in views.values():
        states[j["state"]] = states.get(j["state"], 0) + 1
    succeeded = states.get("succeeded", 0)
    full = sum(
        j["state"] == "succeeded" and j["trials_done"] == args.trials for j in views.values()
    )
    timings, batches = job_timings(database_url, ids)
    finished = [t.finished for t in timings if t.finished is not None]
    wall = max(finished) if finished else args.jobs_timeout_s
    inversions = completion_inversions(timings)
    gate = gate_inversions(batches)
    met = full == len(ids) and not inversions.unexplained and not gate
    return JobsResult(
        jobs=len(ids),
        trials=args.trials,
        workers=args.workers,
        succeeded=succeeded,
        with_all_trials=full,
        wall_s=wall,
        jobs_per_min=len(finished) / wall * 60 if wall else 0.0,
        trials_per_min=sum(j["trials_done"] for j in views.values()) / wall * 60 if wall else 0.0,
        inversions=inversions,
        gate_batches=len(batches),
        gate_inversions=len(gate),
        states=states,
        met=met,
    )


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def fetch_table(results: Sequence[RateResult], args: argparse.Namespace) -> Any:
    from bench.report import table

    t = table(
        f"schedule fetch, open loop, {args.seconds:g} s per rate ({args.auth} reads)",
        [
            ("mode", "left"), ("rate/s", "right"), ("achieved/s", "right"),
            ("requests", "right"), ("p50 ms", "right"), ("p90 ms", "right"),
            ("p99 ms", "right"), ("max ms", "right"), ("errors", "right"),
            ("late sends", "right"), (f"p99 ≤ {args.target_p99_ms:g} ms, 0 errors", "left"),
        ],
    )  # fmt: skip
    for r in results:
        errors = f"{r.errors} ({r.error_rate:.1%})"
        if r.error_kinds:
            errors += " " + ", ".join(f"{k}: {v}" for k, v in sorted(r.error_kinds.items()))
        target = {"MET": "[green]MET[/]", "MISSED": "[red]MISSED[/]"}.get(r.target, r.target)
        t.add_row(
            "GET /v1/schedules/{key}" if r.mode == "get" else "POST /v1/schedules/lookup",
            f"{r.rate:g}",
            "-" if r.achieved is None else f"{r.achieved:.1f}",
            str(r.requests),
            _ms(r.p50_s),
            _ms(r.p90_s),
            _ms(r.p99_s),
            _ms(r.max_s),
            errors,
            str(r.late),
            target,
        )
    return t


def jobs_table(r: JobsResult) -> Any:
    from bench.report import table

    t = table(
        f"{r.jobs} jobs x {r.trials} trials on {r.workers} worker processes",
        [
            ("jobs", "right"), ("succeeded", "right"), (f"with {r.trials} trials", "right"),
            ("total s", "right"), ("jobs/min", "right"), ("trials/min", "right"),
            ("inversions (allowed)", "right"), ("unexplained", "right"),
            ("gate inversions / batches", "right"), ("order", "left"),
        ],
    )  # fmt: skip
    inv = r.inversions
    t.add_row(
        str(r.jobs),
        str(r.succeeded),
        str(r.with_all_trials),
        f"{r.wall_s:.1f}",
        f"{r.jobs_per_min:.1f}",
        f"{r.trials_per_min:.1f}",
        f"{inv.total} ({inv.allowed}) of {inv.pairs} pairs",
        str(len(inv.unexplained)),
        f"{r.gate_inversions} / {r.gate_batches}",
        "[green]MET[/]" if r.met else "[red]MISSED[/]",
    )
    return t


def environment(args: argparse.Namespace, mode: str) -> dict[str, str]:
    from importlib.metadata import version

    from autosched.hardware import cpu_model

    api = (
        "1 (services.api.app: one uvicorn process, as `autosched api` runs it)"
        if args.api_workers == 1
        else f"{args.api_workers} (uvicorn --workers, started by the bench)"
    )
    auth = (
        f"anonymous reads, anonymous rate limit raised to {BENCH_RATE_LIMIT}"
        if args.auth == "anonymous"
        else "admin token on every read (token lookup and last_used_at per request)"
    )
    return {
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "service": mode,
        "uvicorn workers": api,
        "worker processes": str(args.workers),
        "reads": auth,
        "submission rate limit": f"raised to {BENCH_RATE_LIMIT} (lookups count as submissions)",
        "load generator": f"locust {version('locust')} (FastHttpUser, open loop, users = rate "
        f"x {args.window_s:g} s, timeout {args.timeout_s:g} s), same machine",
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    sys.path.insert(0, str(ROOT))
    from autosched.client import Client
    from autosched.service.embedded import EmbeddedService
    from autosched.settings import Settings
    from bench.report import make_console, print_environment
    from bench.service import _drop_databases, _free_port, _fresh_database

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
                settings = Settings(data_dir=data_dir, api_port=_free_port())
                mode = "embedded (SQLite, SQLite broker)"
            else:
                redis_url = args.redis_url
                if redis_url is None:
                    claim = RedisClaim(redis_server)
                    redis_url = claim.url
                database_url = _fresh_database(args.postgres, data_dir.name)
                settings = Settings(
                    data_dir=data_dir,
                    api_port=_free_port(),
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
                _drop_databases()
            if claim is not None:
                claim.release()
    _verdicts(console, args, fetch, jobs)
    if args.json:
        doc = {
            "fetch": [asdict(r) for r in fetch],
            "jobs": None if jobs is None else asdict(jobs),
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0


def _verdicts(
    console: Any, args: argparse.Namespace, fetch: Sequence[RateResult], jobs: JobsResult | None
) -> None:
    target = [r for r in fetch if r.target != "-"]
    if target:
        verdict = "MET" if all(r.target == "MET" for r in target) else "MISSED"
        console.print(
            f"target: GET p99 ≤ {args.target_p99_ms:g} ms at {args.target_rate:g} requests/s "
            f"with no errors: {verdict}"
        )
    elif "get" in args.parts:
        console.print(f"target: not measured ({args.target_rate:g}/s not among --rates)")
    if jobs is not None:
        console.print(
            f"jobs: all {jobs.jobs} complete with {jobs.trials} trials in priority-then-age "
            f"order: {'MET' if jobs.met else 'MISSED'}"
        )


if __name__ == "__main__":
    sys.exit(main())
