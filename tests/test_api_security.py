"""Browser safety and rate limits (services/api/security.py, services/api/ratelimit.py):
security headers on every answer, state-changing requests refused from other sites, and
429s for anonymous floods, submission floods and made-up tokens, in memory and in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from limits import parse
from sqlalchemy import func, select

from autosched.db import Job, WorkloadRow
from autosched.service.tokens import create_token
from autosched.settings import Settings
from autosched.vocabulary import JobState
from services.api import create_app
from services.api.dashboard.routes import POLL_MS
from services.api.security import CONTENT_SECURITY_POLICY, parse_origin
from tests.api_support import api_client, db, matmul, settings_for
from tests.dashboard_support import register_worker

OWN = "http://testserver"  # TestClient's base URL: the API's own origin in these tests


@contextmanager
def client_at(db_url: str, tmp_path: Any, address: str, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient whose requests come from ``address`` (each test its own bucket)."""
    app = create_app(settings_for(db_url, tmp_path, **overrides))
    with TestClient(app, client=(address, 40000)) as client:
        yield client


def _address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


# --- headers ---------------------------------------------------------------------------


def test_security_headers_on_every_answer(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path, max_json_bytes=1000) as client:
        answers = {
            "json": client.get("/v1/jobs"),
            "page": client.get("/"),
            "static": client.get("/static/dashboard.css"),
            "docs": client.get("/docs"),
            "not found": client.get("/v1/jobs/999999"),
            "too large": client.post("/v1/workloads", content=b"x" * 2000),
            "health": client.get("/healthz"),
        }
        for what, r in answers.items():
            assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, what
            assert r.headers["x-frame-options"] == "DENY", what
            assert r.headers["x-content-type-options"] == "nosniff", what
            assert r.headers["referrer-policy"] == "no-referrer", what
        assert answers["too large"].status_code == 413
        for what in ("json", "not found", "too large", "page"):
            assert answers[what].headers["cache-control"] == "no-store", what
        assert "no-store" not in answers["static"].headers.get("cache-control", "")
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_docs_start_without_inline_script(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        page = client.get("/docs").text
        assert "<script>" not in page and "SwaggerUIBundle(" not in page
        assert 'data-openapi-url="/openapi.json"' in page
        init = client.get("/static/swagger-init.js")
        assert init.status_code == 200 and "SwaggerUIBundle(" in init.text


# --- origin check ----------------------------------------------------------------------


def test_parse_origin():
    assert parse_origin("http://Example.com") == ("http", "example.com", 80)
    assert parse_origin("https://a.b:8443/") == ("https", "a.b", 8443)
    for bad in ("null", "", "file:///etc", "http://", "http://x:99999", "javascript:x"):
        assert parse_origin(bad) is None, bad


def _queued_jobs(client: TestClient, n: int) -> list[int]:
    """``n`` queued jobs of one fresh workload on a device with a registered worker."""
    device = f"test-sec-{uuid.uuid4().hex[:8]}"
    register_worker(client, device)
    doc, _ = matmul(name="sec_mm")
    key = client.post("/v1/workloads", json=doc).json()["key"]
    body = {"workload_keys": [key], "device_key": device}
    return [client.post("/v1/jobs", json=body).json()["id"] for _ in range(n)]


def _state(db_url: str, job_id: int) -> str:
    with db(db_url) as session:
        return session.get(Job, job_id).state


def test_cross_site_writes_are_refused(pg_url, tmp_path):
    """Auth off (a single-user machine): a hostile page's form post must not cancel a job."""
    extra = "https://ops.example.org"
    settings = {"api_url": "http://api.internal:8000", "allowed_origins": [extra]}
    with api_client(pg_url, tmp_path, **settings) as client:
        job_id, *others = _queued_jobs(client, 5)
        cancel = f"/v1/jobs/{job_id}/cancel"
        refused = [
            {"Origin": "https://evil.example"},
            {"Origin": "null"},  # sandboxed frames, file: pages
            {"Origin": "http://testserver:8080"},  # another port is another origin
            {"Origin": "https://testserver"},  # and another scheme
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": OWN, "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in refused:
            r = client.post(cancel, headers=headers)
            assert r.status_code == 403, (headers, r.text)
            assert "cross-" in r.json()["detail"], r.text
            assert _state(pg_url, job_id) == JobState.QUEUED
        # The same for a submission: nothing is stored.
        doc, _ = matmul(name="cross_site")
        before = _workload_count(pg_url)
        r = client.post("/v1/workloads", json=doc, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert _workload_count(pg_url) == before
        # Reads are not state-changing: a foreign Origin may GET.
        assert client.get("/v1/jobs", headers={"Origin": "https://evil.example"}).is_success
        # The API's own origins pass: the request's own, api_url's, allowed_origins.
        own = (OWN, "http://testserver:80", "http://API.internal:8000", extra)
        for origin, other in zip(own, others, strict=True):
            headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"}
            r = client.post(f"/v1/jobs/{other}/cancel", headers=headers)
            assert r.status_code == 200, (origin, r.text)
        # No Origin at all: the CLI, curl, the Python client.
        assert client.post(cancel).status_code == 200
        assert _state(pg_url, job_id) == JobState.CANCELLED


# --- rate limits -----------------------------------------------------------------------


def _assert_429(r: Any, what: str) -> None:
    assert r.status_code == 429, r.text
    assert what in r.json()["detail"], r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def _token(url: str) -> str:
    with db(url) as session:
        return create_token(session, f"sec-{uuid.uuid4().hex[:6]}", ["submit"]).token


def _workload_count(url: str) -> int:
    with db(url) as session:
        return session.scalar(select(func.count()).select_from(WorkloadRow))


def test_anonymous_reads_are_limited_per_address(sqlite_url, tmp_path):
    bearer = {"Authorization": f"Bearer {_token(sqlite_url)}"}
    with client_at(sqlite_url, tmp_path, _address(), anonymous_rate_limit="3/minute") as a:
        for _ in range(3):
            assert a.get("/v1/jobs").status_code == 200
        _assert_429(a.get("/v1/jobs"), "anonymous requests")
        _assert_429(a.get("/"), "anonymous requests")  # the dashboard is a read too
        assert a.get("/healthz").status_code == 200  # probes are exempt
        assert a.get("/readyz").status_code in (200, 503)
        # A token's requests are not anonymous.
        assert a.get("/v1/jobs", headers=bearer).status_code == 200
        # Another address has its own bucket (same app, same storage).
        b = TestClient(a.app, client=(_address(), 1))
        assert b.get("/v1/jobs").status_code == 200


def test_submissions_are_limited_per_token(pg_url, tmp_path):
    first = {"Authorization": f"Bearer {_token(pg_url)}"}
    second = {"Authorization": f"Bearer {_token(pg_url)}"}
    limits = {"auth_required": True, "submit_rate_limit": "2/minute"}
    with client_at(pg_url, tmp_path, _address(), **limits) as client:
        for _ in range(2):
            doc, _ = matmul(name="limited")
            assert client.post("/v1/workloads", json=doc, headers=first).status_code == 201
        before = _workload_count(pg_url)
        doc, _ = matmul(name="limited")
        _assert_429(client.post("/v1/workloads", json=doc, headers=first), "submissions")
        lookup = {"workload": doc}
        _assert_429(client.post("/v1/schedules/lookup", json=lookup, headers=first), "submiss")
        _assert_429(client.post("/v1/jobs", json={}, headers=first), "submissions")
        assert _workload_count(pg_url) == before  # nothing stored from a refused request
        # Reads with the same token, and the other token's submissions, go on.
        assert client.get("/v1/jobs", headers=first).status_code == 200
        assert client.post("/v1/workloads", json=doc, headers=second).status_code == 201


def test_made_up_tokens_are_limited(sqlite_url, tmp_path):
    """Sending any bearer must not escape the anonymous limit: failed authentications from an
    address are counted, and once over the limit even a valid token is refused there."""
    valid = {"Authorization": f"Bearer {_token(sqlite_url)}"}
    overrides = {
        "auth_required": True,
        "anonymous_reads": False,
        "anonymous_rate_limit": "3/minute",
    }
    with client_at(sqlite_url, tmp_path, _address(), **overrides) as client:
        assert client.get("/v1/jobs", headers=valid).status_code == 200
        for i in range(3):
            r = client.get("/v1/jobs", headers={"Authorization": f"Bearer as_nope{i}"})
            assert r.status_code == 401
        bogus = {"Authorization": "Bearer as_nope"}
        _assert_429(client.get("/v1/jobs", headers=bogus), "failed authentications")
        _assert_429(client.get("/v1/jobs", headers=valid), "failed authentications")


def test_limits_are_shared_through_redis(sqlite_url, tmp_path, redis_url):
    """Two API processes (two apps here) on one Redis count into the same buckets."""
    address = _address()  # Redis outlives the test: a fresh address, a fresh bucket
    overrides = {"redis_url": redis_url, "anonymous_rate_limit": "4/minute"}
    with (
        client_at(sqlite_url, tmp_path, address, **overrides) as a,
        client_at(sqlite_url, tmp_path, address, **overrides) as b,
    ):
        assert [a.get("/v1/jobs").status_code for _ in range(2)] == [200, 200]
        assert [b.get("/v1/jobs").status_code for _ in range(2)] == [200, 200]
        _assert_429(a.get("/v1/jobs"), "anonymous requests")
        _assert_429(b.get("/v1/jobs"), "anonymous requests")


def test_redis_down_lets_requests_through(sqlite_url, tmp_path):
    overrides = {"redis_url": "redis://127.0.0.1:1/0", "anonymous_rate_limit": "1/minute"}
    with client_at(sqlite_url, tmp_path, _address(), **overrides) as client:
        assert [client.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]


def test_default_limits_fit_the_dashboard():
    """A few dashboard tabs (each polls its JSON route and, when it changed, the partial)
    stay under the default anonymous limit; the defaults are what operators get."""
    defaults = Settings.model_fields
    per_minute = parse(defaults["anonymous_rate_limit"].default)
    assert per_minute.get_expiry() == 60
    tabs, requests_per_poll = 3, 2
    assert tabs * requests_per_poll * 60_000 / POLL_MS <= per_minute.amount
    assert parse(defaults["submit_rate_limit"].default).amount >= 10
