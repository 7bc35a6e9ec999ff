"""/v1/workers: register, heartbeat, list; silent workers go offline and their claimed
trials go back to the queue. PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from autosched.db import Trial, Worker
from autosched.db.models import utcnow
from autosched.vocabulary import TrialState, WorkerState
from tests.api_support import add_trial, api_client, db, matmul, registration, unique_device


def _registration(device: str, worker_id: str) -> dict:
    return registration(
        device,
        worker_id,
        target_key="llvm/haswell/2c/256b",
        target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2},
    )


def test_register_heartbeat_list(db_url, tmp_path):
    device = unique_device()
    worker_id = f"bench-1:42:{device}"
    with api_client(db_url, tmp_path) as client:
        registered = client.post("/v1/workers/register", json=_registration(device, worker_id))
        assert registered.status_code == 200, registered.text
        view = registered.json()
        assert view["id"] == worker_id and view["state"] == "online"
        assert view["queue_depth"] == 0 and view["trials_done"] == 0

        job = client.post(
            "/v1/jobs", json={"workloads": [matmul()[0]], "device_key": device}
        ).json()
        key = job["workloads"][0]["workload_key"]
        with db(db_url) as session:
            add_trial(session, job["id"], key, state=TrialState.QUEUED, device_key=device)
            for status in ("ok", "ok", "run_error"):
                add_trial(session, job["id"], key, status=status, worker_id=worker_id)

        beat = client.post(f"/v1/workers/{worker_id}/heartbeat")
        assert beat.status_code == 200
        beat_at = datetime.fromisoformat(beat.json()["last_heartbeat"])
        assert beat_at >= datetime.fromisoformat(view["last_heartbeat"])
        assert beat.json()["queue_depth"] == 1
        assert (beat.json()["trials_done"], beat.json()["errors"]) == (3, 1)

        listed = [w for w in client.get("/v1/workers").json() if w["device_key"] == device]
        assert [w["id"] for w in listed] == [worker_id]
        assert {k: listed[0][k] for k in ("queue_depth", "trials_done", "errors")} == {
            k: beat.json()[k] for k in ("queue_depth", "trials_done", "errors")
        }

        missing = client.post("/v1/workers/nobody:1:x/heartbeat")
        assert missing.status_code == 404
        bad = client.post("/v1/workers/register", json={"worker_id": "x"})
        assert bad.status_code == 422


def test_silent_worker_goes_offline_and_its_trials_requeue(db_url, tmp_path):
    device = unique_device()
    silent, alive = f"a:1:{device}", f"b:2:{device}"
    with api_client(db_url, tmp_path, heartbeat_timeout_s=30) as client:
        for worker_id in (silent, alive):
            client.post("/v1/workers/register", json=_registration(device, worker_id))
        job = client.post(
            "/v1/jobs", json={"workloads": [matmul()[0]], "device_key": device}
        ).json()
        key = job["workloads"][0]["workload_key"]
        with db(db_url) as session:
            session.get(Worker, silent).last_heartbeat = utcnow() - timedelta(seconds=60)
            claimed = add_trial(
                session, job["id"], key, state=TrialState.RUNNING, worker_id=silent
            ).id
            other = add_trial(session, job["id"], key, state=TrialState.RUNNING, worker_id=alive).id

        states = {
            w["id"]: w["state"]
            for w in client.get("/v1/workers").json()
            if w["device_key"] == device
        }
        assert states == {silent: WorkerState.OFFLINE, alive: WorkerState.ONLINE}
    with db(db_url) as session:
        requeued = session.get(Trial, claimed)
        assert requeued.state == TrialState.QUEUED and requeued.worker_id is None
        assert session.get(Trial, other).state == TrialState.RUNNING

    # A heartbeat brings it back online.
    with api_client(db_url, tmp_path) as client:
        assert client.post(f"/v1/workers/{silent}/heartbeat").json()["state"] == "online"


def test_a_gpu_worker_registers_and_its_target_serves_cuda_schedules(db_url, tmp_path):
    """A GPU worker's report (card parameters beside its host's) is validated like a CPU's;
    the server derives the ``cuda/...`` key, the farm page shows the card, and a schedule
    lookup for that key is a static CUDA schedule (threads bound) before anything is tuned."""
    from autosched.gpu_hardware import detect_gpu_hardware

    gpu = detect_gpu_hardware(tag="nvidia/nvidia-h100")
    device = unique_device()
    body = registration(device, f"gpu-1:7:{device}", hw=gpu)
    with api_client(db_url, tmp_path) as client:
        registered = client.post("/v1/workers/register", json=body)
        assert registered.status_code == 200, registered.text
        assert registered.json()["target_key"] == "cuda/sm_90/132sm/48k"
        assert "sm_90" in client.get("/farm").text

        lying = registration(device, f"gpu-2:7:{device}", hw=gpu, target={"arch": "sm_80"})
        assert client.post("/v1/workers/register", json=lying).status_code == 422
        broken = {**body, "hardware": {**body["hardware"], "gpu": None}}
        assert client.post("/v1/workers/register", json=broken).status_code == 422

        doc, _ = matmul()
        view = client.post("/v1/schedules/lookup", json={"workload": doc, "target": gpu.target_key})
        assert view.status_code == 200, view.text
        schedule = view.json()
        assert schedule["source"] == "static" and schedule["target_key"] == gpu.target_key
        assert "threadIdx" in json.dumps(schedule["trace"])
