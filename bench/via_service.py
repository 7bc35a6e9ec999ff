"""Tune zoo kernels through a running autosched service, as any client would.

Every kernel goes over the REST API (Python client) as its own job on the first online
worker's device key; a live table follows the jobs; then each tuned schedule is fetched by
workload key and target. What comes back is the config, rebuilt and re-checked by the caller.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from autosched import zoo
from autosched.client import Client
from autosched.space import Config
from autosched.vocabulary import TERMINAL_JOB_STATES
from autosched.wire import Workload


def _table(jobs: dict[str, Any]) -> Table:
    t = Table(title="tuning through the service")
    for col in ("kernel", "job", "state", "trials", "best GFLOP/s", "vs static", "errors"):
        t.add_column(col, justify="right" if col not in ("kernel", "state") else "left")
    for name, job in jobs.items():
        wl = job.workloads[0] if job.workloads else None
        speedup = wl.speedup_over_static if wl else None
        t.add_row(
            name,
            str(job.id),
            job.state,
            f"{job.trials_done}/{job.trials_total}",
            "-" if not job.best_gflops else f"{job.best_gflops:.1f}",
            "-" if speedup is None else f"{speedup:.2f}×",
            str(sum(job.errors.values())),
        )
    return t


def tune_through_service(
    url: str, names: list[str], trials: int, console: Console, poll_s: float = 1.0
) -> dict[str, tuple[Config | None, float | None]]:
    """kernel name → (best verified config fetched from the service, tuning wall seconds)."""
    with Client(url) as client:
        workers = [w for w in client.workers() if w.state == "online"]
        if not workers:
            raise RuntimeError(f"no online worker at {url}: start one (autosched worker)")
        device_key = workers[0].device_key
        submitted: dict[str, Any] = {}
        t0 = time.perf_counter()
        for name in names:
            workload = Workload.from_tensors(zoo.tensors(name), name)
            submitted[name] = client.submit_job([workload], device_key=device_key, trials=trials)
        console.print(
            f"submitted {len(names)} jobs ({trials} trials each) to device {device_key} at {url}"
        )
        finished_at: dict[str, float] = {}
        jobs = dict(submitted)
        with Live(_table(jobs), console=console, refresh_per_second=2) as live:
            while len(finished_at) < len(jobs):
                for name, job in jobs.items():
                    if name not in finished_at:
                        jobs[name] = client.job(job.id)
                        if jobs[name].state in TERMINAL_JOB_STATES:
                            finished_at[name] = time.perf_counter() - t0
                live.update(_table(jobs))
                time.sleep(poll_s)
        console.print()  # the live table leaves the cursor at its last line
        out: dict[str, tuple[Config | None, float | None]] = {}
        for name, job in jobs.items():
            key = job.workloads[0].workload_key
            view = client.schedule(key, target=job.target_key)
            config = Config.from_json(view.config) if view.source == "tuned" else None
            out[name] = (config, finished_at[name])
            console.print(
                f"{name}: job {job.id} {job.state}, fetched {view.source} schedule "
                f"({'-' if view.latency is None else f'{view.latency * 1e3:.3f} ms'})",
                highlight=False,
            )
        return out
