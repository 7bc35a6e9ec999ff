"""/v1/jobs: create, list, detail (numbers from trial rows), cancel. PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from autosched.db import Job, Trial, WorkloadRow
from autosched.hardware import HardwareParams
from autosched.vocabulary import JobState, TrialState
from autosched.wire import Workload
from tests.api_support import (
    add_trial,
    api_client,
    db,
    job_workloads,
    known_device,
    matmul,
    registration,
    unique_device,
)


def test_create_list_get(db_url, tmp_path):
    doc, _ = matmul()
    device = known_device(db_url)
    with api_client(db_url, tmp_path) as client:
        created = client.post(
            "/v1/jobs",
            json={"workloads": [doc], "device_key": device, "trials": 8, "priority": 3},
        )
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] == "queued" and job["device_key"] == device
        assert job["strategy"] == "evolutionary" and job["priority"] == 3
        assert job["trials_total"] == 8 and job["trials_done"] == 0
        assert job["best_latency"] is None and job["errors"] == {}
        key = Workload.from_json(doc).key
        assert [w["workload_key"] for w in job["workloads"]] == [key]

        # By key this time (stored by the first job); static: one trial per workload.
        second = client.post(
            "/v1/jobs", json={"workload_keys": [key], "device_key": device, "strategy": "static"}
        ).json()
        assert second["trials_total"] == 1

        listed = [j["id"] for j in client.get("/v1/jobs").json()]
        assert listed.index(second["id"]) < listed.index(job["id"])  # newest first
        queued = [j["id"] for j in client.get("/v1/jobs", params={"state": "queued"}).json()]
        assert job["id"] in queued
        assert job["id"] not in [
            j["id"] for j in client.get("/v1/jobs", params={"state": "running"}).json()
        ]
        assert client.get("/v1/jobs", params={"state": "bogus"}).status_code == 422

        detail = client.get(f"/v1/jobs/{job['id']}").json()
        assert detail["id"] == job["id"] and detail["curve"] == []
    with db(db_url) as session:
        row = session.get(Job, job["id"])
        assert row.trials_per_workload == 8 and row.seed == 0
        assert [w.workload_key for w in row.workloads] == [key]


def test_unknown_job_is_404(db_url, tmp_path):
    with api_client(db_url, tmp_path) as client:
        assert client.get("/v1/jobs/987654321").status_code == 404
        assert client.post("/v1/jobs/987654321/cancel").status_code == 404


def test_invalid_job_requests_are_422(db_url, tmp_path):
    doc, _ = matmul()
    bad = dict(doc, placeholders=[])
    device = known_device(db_url)
    with api_client(db_url, tmp_path) as client:
        unknown_key = client.post(
            "/v1/jobs", json={"workload_keys": ["v1-ffffffffffffffff"], "device_key": device}
        )
        assert unknown_key.status_code == 422
        assert "v1-ffffffffffffffff" in unknown_key.json()["detail"]

        no_worker = client.post(
            "/v1/jobs", json={"workloads": [doc], "target": "llvm/nowhere/1c/128b"}
        )
        assert no_worker.status_code == 422
        assert "no online worker serves target" in no_worker.json()["detail"]

        bad_doc = client.post("/v1/jobs", json={"workloads": [bad], "device_key": device})
        assert bad_doc.status_code == 422 and "path" in bad_doc.json()

        nothing = client.post("/v1/jobs", json={"device_key": device})
        assert nothing.status_code == 422  # the schema's own validation

        never_registered = unique_device()
        unknown_device = client.post(
            "/v1/jobs", json={"workloads": [doc], "device_key": never_registered}
        )
        assert unknown_device.status_code == 422
        assert "no worker has ever registered it" in unknown_device.json()["detail"]
    with db(db_url) as session:  # a refused job leaves nothing behind
        assert session.scalar(select(func.count()).where(Job.device_key == device)) == 0
        assert session.get(WorkloadRow, Workload.from_json(doc).key) is None


def test_target_resolves_to_an_online_workers_device(db_url, tmp_path):
    doc, _ = matmul()
    device = unique_device()
    # A target no other test's worker serves: cores the session's other tests never use.
    hw = HardwareParams(1000 + int(device[-3:], 16) % 24, 256, 32768, 524288, 8388608, "haswell")
    target = hw.target_key
    with api_client(db_url, tmp_path) as client:
        registered = client.post("/v1/workers/register", json=registration(device, hw=hw))
        assert registered.status_code == 200, registered.text
        job = client.post("/v1/jobs", json={"workloads": [doc], "target": target})
        assert job.status_code == 201, job.text
        assert job.json()["device_key"] == device
        assert job.json()["target_key"] == target


def _queued_job(client, db_url) -> tuple[int, str]:
    """A job of one fresh workload on a known device: its id and the workload's key."""
    doc, _ = matmul()
    job = client.post("/v1/jobs", json={"workloads": [doc], "device_key": known_device(db_url)})
    assert job.status_code == 201, job.text
    return job.json()["id"], job.json()["workloads"][0]["workload_key"]


def test_cancel_queued_job(db_url, tmp_path):
    with api_client(db_url, tmp_path) as client:
        job_id, key = _queued_job(client, db_url)
        with db(db_url) as session:
            queued = add_trial(session, job_id, key, state=TrialState.QUEUED).id
            done = add_trial(session, job_id, key, status="ok", latency=1e-3).id

        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["finished_at"] is not None

        again = client.post(f"/v1/jobs/{job_id}/cancel")
        assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    with db(db_url) as session:
        assert session.get(Trial, queued).state == TrialState.CANCELLED
        assert session.get(Trial, done).state == TrialState.DONE


def test_cancel_running_job_asks_its_scheduler(db_url, tmp_path):
    with api_client(db_url, tmp_path) as client:
        job_id, key = _queued_job(client, db_url)
        with db(db_url) as session:
            session.get(Job, job_id).state = JobState.RUNNING
            queued = add_trial(session, job_id, key, state=TrialState.QUEUED).id
            running = add_trial(session, job_id, key, state=TrialState.RUNNING).id

        response = client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200 and response.json()["state"] == "running"
    with db(db_url) as session:
        assert session.get(Job, job_id).cancel_requested is True
        assert session.get(Trial, queued).state == TrialState.CANCELLED
        assert session.get(Trial, running).state == TrialState.RUNNING  # the worker finishes it
        session.get(Job, job_id).state = JobState.SUCCEEDED
    with api_client(db_url, tmp_path) as client:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_job_numbers_come_from_its_trials(db_url, tmp_path):
    (doc1, _), (doc2, _) = matmul(name="one"), matmul(name="two")
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    with api_client(db_url, tmp_path) as client:
        job = client.post(
            "/v1/jobs",
            json={"workloads": [doc1, doc2], "device_key": known_device(db_url), "trials": 4},
        ).json()
        job_id = job["id"]
        k1, k2 = (w["workload_key"] for w in job["workloads"])
        flops = {
            w["key"]: w["flops"]
            for w in (client.get(f"/v1/workloads/{k}").json() for k in (k1, k2))
        }
        with db(db_url) as session:
            job_workloads(session, job_id)[0].static_latency = 4e-3
            # Inserted out of order: the curve goes by finished_at, then id.
            for key, status, latency, minute in [
                (k2, "ok", 5e-3, 4),
                (k1, "ok", 2e-3, 1),
                (k1, "wrong_answer", None, 2),
                (k2, "build_error", None, 3),
                (k1, "ok", 1e-3, 5),
                (k2, "run_timeout", None, 6),
                (k1, "ok", 3e-3, 7),  # slower than the best so far
            ]:
                add_trial(
                    session,
                    job_id,
                    key,
                    status=status,
                    latency=latency,
                    finished_at=t0 + timedelta(minutes=minute),
                )
            add_trial(session, job_id, k1, state=TrialState.QUEUED)  # not done: not counted
            add_trial(session, job_id, k2, state=TrialState.RUNNING)

        view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["trials_total"] == 8
    assert view["trials_done"] == 7
    assert view["errors"] == {"wrong_answer": 1, "build_error": 1, "run_timeout": 1}
    w1, w2 = view["workloads"]
    assert (w1["workload_key"], w2["workload_key"]) == (k1, k2)
    assert w1["trials_done"] == 4 and w2["trials_done"] == 3
    assert w1["best_latency"] == pytest.approx(1e-3)
    assert w1["best_gflops"] == pytest.approx(flops[k1] / 1e-3 / 1e9)
    assert w1["static_latency"] == pytest.approx(4e-3)
    assert w1["speedup_over_static"] == pytest.approx(4.0)
    assert w2["best_latency"] == pytest.approx(5e-3) and w2["speedup_over_static"] is None
    assert view["best_latency"] == pytest.approx(6e-3)
    # The job's speedup needs every workload's static latency: w2 has none.
    assert view["static_latency"] is None and view["speedup_over_static"] is None
    assert view["best_gflops"] == pytest.approx((flops[k1] + flops[k2]) / 6e-3 / 1e9)

    curve = view["curve"]
    assert [p["trial"] for p in curve] == list(range(1, 8))
    assert [(p["workload_key"], p["status"]) for p in curve] == [
        (k1, "ok"),
        (k1, "wrong_answer"),
        (k2, "build_error"),
        (k2, "ok"),
        (k1, "ok"),
        (k2, "run_timeout"),
        (k1, "ok"),
    ]
    g = lambda key, latency: flops[key] / latency / 1e9  # noqa: E731
    assert curve[1]["gflops"] is None and curve[1]["latency"] is None
    assert [p["best_gflops"] for p in curve] == pytest.approx(
        [g(k1, 2e-3), g(k1, 2e-3), None, g(k2, 5e-3), g(k1, 1e-3), g(k2, 5e-3), g(k1, 1e-3)]
    )

    # The list view carries the same numbers (without the curve).
    with api_client(db_url, tmp_path) as client:
        listed = next(j for j in client.get("/v1/jobs").json() if j["id"] == job_id)
    assert "curve" not in listed
    assert listed["best_latency"] == pytest.approx(6e-3) and listed["trials_done"] == 7


def test_job_best_waits_for_every_workload(db_url, tmp_path):
    (doc1, _), (doc2, _) = matmul(), matmul()
    with api_client(db_url, tmp_path) as client:
        job = client.post(
            "/v1/jobs", json={"workloads": [doc1, doc2], "device_key": known_device(db_url)}
        ).json()
        k1, k2 = (w["workload_key"] for w in job["workloads"])
        with db(db_url) as session:
            add_trial(session, job["id"], k1, status="ok", latency=1e-3)
            add_trial(session, job["id"], k2, status="run_error", latency=None)
        view = client.get(f"/v1/jobs/{job['id']}").json()
    assert view["workloads"][0]["best_latency"] == pytest.approx(1e-3)
    assert view["workloads"][1]["best_latency"] is None
    assert view["best_latency"] is None and view["best_gflops"] is None
    assert view["errors"] == {"run_error": 1}
