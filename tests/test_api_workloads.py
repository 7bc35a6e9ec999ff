"""POST/GET /v1/workloads, body limits, health probes: PostgreSQL and SQLite."""

from __future__ import annotations

import copy
import json
import time

from sqlalchemy import func, select

from autosched.db import TemplateRow, WorkloadRow
from autosched.settings import get_settings
from autosched.wire import Workload
from tests.api_support import api_client, db, host_hardware, matmul
from tests.kernels import chain


def test_submit_workload_stores_once(db_url, tmp_path):
    doc, _ = matmul()
    key = Workload.from_json(doc).key
    with api_client(db_url, tmp_path) as client:
        first = client.post("/v1/workloads", json=doc)
        assert first.status_code == 201, first.text
        view = first.json()
        assert view["key"] == key and view["created"] is True
        assert [s["meta_template"] for s in view["stages"]] == ["complex_reduction"]
        assert view["stages"][0]["iter_kinds"] == "SSR"
        assert view["flops"] >= 2 * 64**3
        assert view["target_key"] == host_hardware(client).target_key
        assert [s["stage"] for s in view["template"]["stages"]] == ["C"]

        again = client.post("/v1/workloads", json=doc)
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["key"] == key

        got = client.get(f"/v1/workloads/{key}")
        assert got.status_code == 200
        assert got.json()["template"] == view["template"]
    with db(db_url) as session:
        assert session.scalar(select(func.count()).where(WorkloadRow.key == key)) == 1
        assert session.scalar(select(func.count()).where(TemplateRow.workload_key == key)) == 1


def test_unknown_workload_is_404(db_url, tmp_path):
    with api_client(db_url, tmp_path) as client:
        response = client.get("/v1/workloads/v1-0000000000000000")
        assert response.status_code == 404
        assert "v1-0000000000000000" in response.json()["detail"]


def test_invalid_documents_are_422_with_message_and_path(db_url, tmp_path):
    doc, _ = matmul()
    bad_dtype = copy.deepcopy(doc)
    bad_dtype["placeholders"][0]["dtype"] = "complex128"
    bad_ref = copy.deepcopy(doc)
    bad_ref["stages"][0]["body"]["source"]["a"]["a"]["tensor"] = "nope"
    with api_client(db_url, tmp_path) as client:
        for bad in (bad_dtype, bad_ref, {"format_version": 1}):
            response = client.post("/v1/workloads", json=bad)
            assert response.status_code == 422, response.text
            body = response.json()
            assert isinstance(body["detail"], str) and body["detail"]
            assert "path" in body
        dtype_error = client.post("/v1/workloads", json=bad_dtype).json()
        assert "placeholders[0]" in dtype_error["path"]
        ref_error = client.post("/v1/workloads", json=bad_ref).json()
        assert ref_error["path"].startswith("stages[0].body") and "nope" in ref_error["detail"]

        malformed = client.post(
            "/v1/workloads", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422
        not_an_object = client.post("/v1/workloads", json=[1, 2])
        assert not_an_object.status_code == 422
    with db(db_url) as session:
        assert session.get(WorkloadRow, Workload.from_json(doc).key) is None


def test_oversized_bodies_are_413_before_parsing(sqlite_url, tmp_path):
    doc, _ = matmul()
    body = json.dumps(doc).encode()
    with api_client(sqlite_url, tmp_path, max_json_bytes=len(body) - 1) as client:
        declared = client.post(
            "/v1/workloads", content=body, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert "max_json_bytes" in declared.json()["detail"]

        def chunks():  # no Content-Length: the limit counts the streamed bytes
            for i in range(0, len(body), 100):
                yield body[i : i + 100]

        streamed = client.post(
            "/v1/workloads", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["detail"]
        # Over the limit yet not even JSON: refused for its size, never parsed.
        junk = client.post(
            "/v1/workloads",
            content=b"x" * (len(body) + 10),
            headers={"content-type": "application/json"},
        )
        assert junk.status_code == 413
    with api_client(sqlite_url, tmp_path, max_json_bytes=len(body)) as client:
        at_limit = client.post(
            "/v1/workloads", content=body, headers={"content-type": "application/json"}
        )
        assert at_limit.status_code == 201, at_limit.text


def test_health_and_readiness(db_url, tmp_path, redis_url):
    with api_client(db_url, tmp_path) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")  # embedded broker: a SQLite file under data_dir
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    with api_client(db_url, tmp_path, redis_url=redis_url) as client:
        assert client.get("/readyz").status_code == 200
    with api_client(db_url, tmp_path, redis_url="redis://127.0.0.1:1/0") as client:
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["database"] == "ok"
        assert down.json()["checks"]["broker"].startswith("error")
        assert "broker" in down.json()["detail"]


def test_openapi_lists_the_v1_routes(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        paths = client.get("/openapi.json").json()["paths"]
        for path in (
            "/v1/workloads",
            "/v1/jobs",
            "/v1/jobs/{job_id}/cancel",
            "/v1/schedules/{workload_key}",
            "/v1/schedules/lookup",
            "/v1/workers/register",
            "/v1/tokens",
        ):
            assert path in paths
        assert client.get("/docs").status_code == 200


def test_declaration_too_slow_to_analyse_is_422_and_not_stored(db_url, tmp_path, monkeypatch):
    slow = chain(200)  # valid, but ~0.5 s of analysis: ten times the limit set below
    with api_client(db_url, tmp_path) as client:
        client.post("/v1/schedules/lookup", json={"workload": matmul()[0]})  # sandbox started
        with db(db_url) as session:
            before = session.scalar(select(func.count()).select_from(WorkloadRow))
        # The service reads the global settings (as every API process does).
        monkeypatch.setenv("AUTOSCHED_TEMPLATE_TIMEOUT_S", "0.05")
        get_settings.cache_clear()
        try:
            start = time.monotonic()
            for route, body in (
                ("/v1/workloads", slow),
                ("/v1/schedules/lookup", {"workload": slow}),
            ):
                response = client.post(route, json=body)
                assert response.status_code == 422, response.text[:500]
                assert "longer than template_timeout_s=0.05" in response.json()["detail"]
            assert time.monotonic() - start < 5.0
        finally:
            monkeypatch.delenv("AUTOSCHED_TEMPLATE_TIMEOUT_S")
            get_settings.cache_clear()
        # The sandbox that was killed is replaced: the next declaration is analysed.
        assert client.post("/v1/workloads", json=matmul()[0]).status_code == 201
    with db(db_url) as session:
        assert session.scalar(select(func.count()).select_from(WorkloadRow)) == before + 1
