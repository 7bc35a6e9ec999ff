"""``bench/load.py``'s tables, environment and verdicts."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence
from typing import Any

from bench.load_jobs import JobsResult
from bench.load_service import BENCH_RATE_LIMIT
from bench.load_stats import RateResult


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

    from autosched.host_description import cpu_model

    api = (
        "1 (services.api.app: one uvicorn process, as `autosched api` runs it)"
        if args.api_workers == 1
        else f"{args.api_workers} (uvicorn --workers, started by the bench)"
    )
    auth = (
        f"anonymous reads, anonymous rate limit raised to {BENCH_RATE_LIMIT}"
        if args.auth == "anonymous"
        else "admin token on every read (token lookup per request; last_used_at once a minute)"
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


def print_verdicts(
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
