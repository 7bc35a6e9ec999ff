"""Helpers of the dashboard tests: a job with trials of every kind, a worker and a cached best
schedule, written through the API where the API can (workload, worker, job) and straight into
the database where the scheduler and workers would (trials, results, best config)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from autosched.db import BestConfig, Job, JobWorkload, WorkloadRow
from autosched.db.models import utcnow
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import JobState, TrialState
from tests.api_support import add_trial, db, matmul, registration

BUILD_ERROR = (
    "Traceback (most recent call last):\n"
    '  File "build.py", line 3, in build\n'
    "RuntimeError: vectorize failed: <stage C> & extent 7"
)


@dataclass
class Seeded:
    job_id: int
    workload_key: str
    workload_name: str
    device_key: str
    target_key: str
    worker_id: str
    flops: float
    trace: list[Any]
    trial_ids: dict[str, int] = field(default_factory=dict)


def register_worker(client: Any, device_key: str, **headers: str) -> str:
    """A worker of ``device_key`` (test hardware: the server derives its target key)."""
    worker_id = f"dash-host:1:{device_key}"
    r = client.post(
        "/v1/workers/register", json=registration(device_key, worker_id), headers=headers
    )
    assert r.status_code == 200, r.text
    return worker_id


def seed_job(
    client: Any,
    db_url: str,
    target_key: str,
    *,
    trials: int = 8,
    headers: dict[str, str] | None = None,
    with_results: bool = True,
) -> Seeded:
    """A running job of one fresh workload: 3 good trials (3, 1.5, 1 ms), a build error and a
    run timeout done; one trial running, one queued; static 2 ms; the 1 ms one cached best."""
    headers = headers or {}
    name = f"dash_mm_{uuid.uuid4().hex[:6]}"
    doc, _ = matmul(name=name)
    device_key = f"test-dash-{uuid.uuid4().hex[:8]}"
    worker_id = register_worker(client, device_key, **headers)
    created = client.post(
        "/v1/jobs",
        json={"workloads": [doc], "device_key": device_key, "trials": trials},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    job = created.json()
    key = job["workloads"][0]["workload_key"]
    # A real trace to cache: the static schedule's, for the server's own target.
    static = client.get(f"/v1/schedules/{key}", params={"target": target_key}, headers=headers)
    assert static.status_code == 200, static.text
    trace = static.json()["trace"]
    seeded = Seeded(job["id"], key, name, device_key, target_key, worker_id, 0.0, trace)
    if not with_results:
        return seeded

    now = utcnow()
    with db(db_url) as session:
        row = session.get(Job, job["id"])
        row.state = JobState.RUNNING
        row.target_key = target_key
        row.started_at = now - timedelta(seconds=30)
        jw = session.query(JobWorkload).filter_by(job_id=row.id).one()
        jw.static_latency = 2e-3
        common = {"device_key": device_key, "target_key": target_key, "worker_id": worker_id}
        done = [
            ("ok", TrialStatus.OK, 3e-3, None),
            ("build_error", TrialStatus.BUILD_ERROR, None, BUILD_ERROR),
            ("ok2", TrialStatus.OK, 1.5e-3, None),
            ("run_timeout", TrialStatus.RUN_TIMEOUT, None, "run timed out after 10 s"),
            ("best", TrialStatus.OK, 1e-3, None),
        ]
        for i, (label, status, latency, error) in enumerate(done):
            trial = add_trial(
                session,
                row.id,
                key,
                status=status,
                latency=latency,
                finished_at=now - timedelta(seconds=20 - i),
                **common,
            )
            trial.error = error
            trial.build_secs, trial.run_secs = 0.5, 0.25
            seeded.trial_ids[label] = trial.id
        running = add_trial(session, row.id, key, state=TrialState.RUNNING, **common)
        queued = add_trial(session, row.id, key, state=TrialState.QUEUED, **common)
        seeded.trial_ids.update(running=running.id, queued=queued.id)
        seeded.flops = session.get(WorkloadRow, key).flops
        session.add(
            BestConfig(
                workload_key=key,
                target_key=target_key,
                trial_id=seeded.trial_ids["best"],
                config={"stages": {"C": {"tile_i": 8, "tile_j": 32, "unroll": 16}}},
                trace=trace,
                latency=1e-3,
                gflops=seeded.flops / 1e-3 / 1e9,
                worker_id=worker_id,
                device_key=device_key,
                tvm_version="0.27.0",
            )
        )
    return seeded
