"""``bench/load.py``'s fetch part: schedules published, then open-loop runs with locust.

Each rate is one headless locust process (``bench/load_locustfile.py``) that reads its run
spec from a file and writes one ``Record`` per request back.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.load_service import register_workloads, tiny_matmul
from bench.load_stats import RateResult, Record, judge, request_count, summarize, users_for

LOCUSTFILE = Path(__file__).resolve().with_name("load_locustfile.py")
# Locust spawns users this many times faster than ``users`` per second; the first request
# is due ``LEAD_S`` after the run starts, when every user is up.
SPAWN_FACTOR = 4
LEAD_S = 1.0


@dataclass(frozen=True)
class Request:
    """One request a run cycles through, as the locustfile sends it."""

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


def fetch_part(
    args: argparse.Namespace, svc: Any, client: Any, device_key: str, token: str, workdir: Path
) -> list[RateResult]:
    """Publish tuned schedules for ``--fetch-workloads`` tiny matmuls, then drive each asked
    mode (GET, lookup) at each of its rates: one result per run, judged against the target."""
    from bench.report import make_console

    console = make_console(140)
    # 16 x 16 x 16(i+1): shapes none of the jobs use.
    workloads = [tiny_matmul(16, 16, 16 * (i + 1)) for i in range(args.fetch_workloads)]
    register_workloads(client, workloads)
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
