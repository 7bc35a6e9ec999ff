"""``bench/load.py``'s jobs part: a burst of prioritised jobs, their completion order read
back from the service's database."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.load_order import (
    Batch,
    Inversions,
    JobTiming,
    completion_inversions,
    gate_inversions,
    merge_chunks,
)
from bench.load_service import register_workloads, tiny_matmul


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
    """Submit ``--jobs`` prioritised jobs in a burst, wait for all of them and judge their
    trials and completion order (``load_order.ORDER_RULE``)."""
    import random

    import httpx

    from autosched.vocabulary import TERMINAL_JOB_STATES
    from bench.report import make_console

    console = make_console(140)
    # 8 x 16 x (8 + 4i): distinct keys, so no job reuses another's measurements.
    workloads = [tiny_matmul(8, 16, 8 + 4 * i) for i in range(args.jobs)]
    console.print(f"jobs: registering {len(workloads)} workloads ...")
    register_workloads(client, workloads)
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
