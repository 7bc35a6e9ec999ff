"""/v1/schedules: static until tuned, then the best verified config; a fetched config
applied on the client builds and computes the right answer. PostgreSQL and SQLite."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tvm

from autosched.db import BestConfig, WorkloadRow
from autosched.hardware import HardwareParams, cpu_target
from autosched.schedule import apply_config, trace_json
from autosched.service import workload_sandbox
from autosched.space import Config, Template
from autosched.wire import Workload
from tests.api_support import (
    add_trial,
    api_client,
    db,
    host_hardware,
    known_device,
    matmul,
    unique_device,
)
from tests.schedule_support import publish_best


def test_static_until_tuned(db_url, tmp_path):
    doc, _ = matmul()
    key = Workload.from_json(doc).key
    with api_client(db_url, tmp_path) as client:
        host_target = host_hardware(client).target_key
        assert client.get(f"/v1/schedules/{key}").status_code == 404  # not stored yet
        client.post("/v1/workloads", json=doc)

        static = client.get(f"/v1/schedules/{key}")
        assert static.status_code == 200, static.text
        view = static.json()
        assert view["source"] == "static" and view["target_key"] == host_target
        assert view["latency"] is None and view["worker_id"] is None
        assert view["tvm_version"] == tvm.__version__
        assert view["hardware"] == host_hardware(client).to_json()
        Template.from_json(view["template"]).validate(Config.from_json(view["config"]))
        assert view["trace"]  # the TVM trace of the static schedule
        assert client.get(f"/v1/schedules/{key}", params={"target": host_target}).json() == view

        unknown = client.get(f"/v1/schedules/{key}", params={"target": "llvm/nowhere/1c/128b"})
        assert unknown.status_code == 404 and "unknown target" in unknown.json()["detail"]

        # A worker's target: the static schedule for that worker's hardware.
        device = unique_device()
        worker_hw = HardwareParams(2, 256, 32768, 524288, 8388608, "haswell")
        client.post(
            "/v1/workers/register",
            json={
                "worker_id": f"w:{device}",
                "device_key": device,
                "target_key": worker_hw.target_key,
                "target": {"kind": "llvm"},
                "hardware": worker_hw.to_json(),
                "hostname": "w",
            },
        )
        remote = client.get(f"/v1/schedules/{key}", params={"target": worker_hw.target_key})
        assert remote.status_code == 200, remote.text
        assert remote.json()["hardware"] == worker_hw.to_json()
        assert remote.json()["source"] == "static"

        # A tuner records a best config (its own, sampled from the template).
        template = Template.from_json(view["template"])
        tuned = template.sample(random.Random(3))
        workload = Workload.from_json(doc)
        sch = apply_config(workload.prim_func, tuned, host_hardware(client), template=template)
        job = client.post("/v1/jobs", json={"workload_keys": [key], "device_key": device})
        with db(db_url) as session:
            trial = add_trial(session, job.json()["id"], key, status="ok", latency=2.5e-5)
            session.add(
                BestConfig(
                    workload_key=key,
                    target_key=host_target,
                    trial_id=trial.id,
                    config=tuned.to_json(),
                    trace=trace_json(sch),
                    latency=2.5e-5,
                    gflops=21.0,
                    worker_id="w:1",
                    device_key=device,
                    tvm_version="0.27.0",
                )
            )
        after = client.get(f"/v1/schedules/{key}").json()
    assert after["source"] == "tuned"
    assert after["latency"] == pytest.approx(2.5e-5) and after["gflops"] == pytest.approx(21.0)
    assert after["config"] == tuned.to_json()
    assert after["worker_id"] == "w:1" and after["device_key"] == device
    assert after["template"] == view["template"] and after["hardware"] == view["hardware"]
    assert after["updated_at"] is not None


def test_lookup_computes_the_key_and_applies_on_the_client(db_url, tmp_path):
    doc, salt = matmul()
    workload = Workload.from_json(doc)
    with api_client(db_url, tmp_path) as client:
        response = client.post("/v1/schedules/lookup", json={"workload": doc})
        assert response.status_code == 200, response.text
        view = response.json()
        # A lookup stores nothing (anonymous readers cannot fill the database)...
        with db(db_url) as session:
            assert session.get(WorkloadRow, workload.key) is None
        assert client.get(f"/v1/schedules/{workload.key}").status_code == 404
        assert client.post("/v1/schedules/lookup", json={"workload": doc}).json() == view
        # ...and once the workload is submitted, a fetch by key gives the same schedule.
        assert client.post("/v1/workloads", json=doc).status_code == 201
        assert client.get(f"/v1/schedules/{workload.key}").json() == view
        assert client.post("/v1/schedules/lookup", json={"workload": doc}).json() == view
        bad = client.post("/v1/schedules/lookup", json={"workload": {"format_version": 1}})
        assert bad.status_code == 422 and "path" in bad.json()
        for target in ("x" * 10_000, "../../etc/passwd", "llvm/a b/2c/256b"):
            bad_target = client.post(
                "/v1/schedules/lookup", json={"workload": doc, "target": target}
            )
            assert bad_target.status_code == 422, target
    assert view["workload_key"] == workload.key and view["source"] == "static"

    # What a client does with the answer: apply it to its own PrimFunc, build, compare.
    hw = HardwareParams.from_json(view["hardware"])
    sch = apply_config(workload.prim_func, Config.from_json(view["config"]), hw)
    lib = tvm.compile(sch.mod, target=cpu_target(hw))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64), dtype=np.float32)
    b = rng.standard_normal((64, 64), dtype=np.float32)
    c = tvm.runtime.tensor(np.zeros((64, 64), np.float32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), (a @ b) * np.float32(salt), rtol=1e-4, atol=1e-4)


def test_keys_and_targets_are_bounded(sqlite_url, tmp_path):
    """Malformed or oversized keys and targets are 422 before any query (404 if well formed)."""
    with api_client(sqlite_url, tmp_path) as client:
        assert client.get("/v1/schedules/v1-0000000000000000").status_code == 404
        for key in ("v1-" + "0" * 5000, "nope", "v1-000000000000000G", "'; drop table x"):
            assert client.get(f"/v1/schedules/{key}").status_code == 422, key
            assert client.get(f"/v1/workloads/{key}").status_code == 422, key
        for target in ("x" * 5000, "llvm/a b/2c/256b", "llvm/znver3/2c", "../../etc/passwd"):
            response = client.get("/v1/schedules/v1-0000000000000000", params={"target": target})
            assert response.status_code == 422, target
        ok_target = {"target": "llvm/znver3/2c/256b"}
        assert client.get("/v1/schedules/v1-0000000000000000", params=ok_target).status_code == 404


def test_answers_are_kept_until_a_new_best_is_published(db_url, tmp_path, monkeypatch):
    """Two apps on one database (two API processes): each keeps its answers, revalidates
    them by ETag, and both serve a newly published best config at once."""
    doc, _ = matmul()
    key = Workload.from_json(doc).key
    with api_client(db_url, tmp_path) as a, api_client(db_url, tmp_path) as b:
        a.post("/v1/workloads", json=doc)
        target = host_hardware(a).target_key
        static = a.get(f"/v1/schedules/{key}")
        assert static.status_code == 200 and static.json()["source"] == "static"
        assert static.headers["cache-control"] == "private, no-cache"
        etag = static.headers["etag"]
        assert b.get(f"/v1/schedules/{key}").headers["etag"] == etag  # same answer in b

        # Kept: the static trace is not replayed in the sandbox again.
        def replayed(*_args: object) -> None:
            raise AssertionError("the static schedule was built again")

        monkeypatch.setattr(workload_sandbox, "static_trace", replayed)
        again = a.get(f"/v1/schedules/{key}")
        assert again.content == static.content and again.headers["etag"] == etag
        for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            unchanged = a.get(f"/v1/schedules/{key}", headers={"If-None-Match": sent})
            assert unchanged.status_code == 304 and unchanged.content == b"", sent
            assert unchanged.headers["etag"] == etag
        other = a.get(f"/v1/schedules/{key}", headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == static.content

        job = a.post("/v1/jobs", json={"workload_keys": [key], "device_key": known_device(db_url)})
        seen: set[str] = {etag}
        for latency in (3e-5, 2e-5):  # first tuned, then a faster one replaces it
            publish_best(db_url, job.json()["id"], key, target, latency)
            for client in (a, b):
                fresh = client.get(f"/v1/schedules/{key}", headers={"If-None-Match": etag})
                assert fresh.status_code == 200, fresh.text
                assert fresh.json()["source"] == "tuned"
                assert fresh.json()["latency"] == pytest.approx(latency)
                assert fresh.headers["etag"] not in seen
            etag = fresh.headers["etag"]
            seen.add(etag)
            assert a.get(f"/v1/schedules/{key}").headers["etag"] == etag

        # Kept per target: the host target's answer is not served for another one.
        assert a.get(f"/v1/schedules/{key}", params={"target": "llvm/x/1c/128b"}).status_code == 404


def test_no_answers_kept_when_the_cache_is_off(sqlite_url, tmp_path, monkeypatch):
    doc, _ = matmul()
    key = Workload.from_json(doc).key
    with api_client(sqlite_url, tmp_path, schedule_cache_entries=0) as client:
        client.post("/v1/workloads", json=doc)
        first = client.get(f"/v1/schedules/{key}")
        calls: list[str] = []
        real = workload_sandbox.static_trace

        def counted(*args: object) -> object:
            calls.append("replayed")
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(workload_sandbox, "static_trace", counted)
        second = client.get(f"/v1/schedules/{key}")
        assert second.json() == first.json() and calls == ["replayed"]
