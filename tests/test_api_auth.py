"""Bearer tokens and scopes: submit, worker, admin (implies all); anonymous reads on or off;
tokens stored only as SHA-256. PostgreSQL and SQLite."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from autosched.db import ApiToken
from autosched.errors import AuthenticationError, PermissionDeniedError
from autosched.service.tokens import (
    authenticate,
    create_token,
    hash_token,
    revoke_token,
    touch_last_used,
)
from autosched.wire import Workload
from tests.api_support import api_client, db, known_device, matmul

MINUTE = 60.0  # the default interval between last_used_at writes


def _token(db_url: str, *scopes: str) -> str:
    with db(db_url) as session:
        return create_token(session, f"test-{'-'.join(scopes) or 'read'}", list(scopes)).token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_scopes(db_url, tmp_path):
    submit, worker, admin = (_token(db_url, s) for s in ("submit", "worker", "admin"))
    doc, _ = matmul()
    with api_client(db_url, tmp_path, auth_required=True) as client:
        missing = client.post("/v1/workloads", json=doc)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/v1/workloads", json=doc, headers=_auth(worker))
        assert wrong.status_code == 403 and "submit" in wrong.json()["detail"]
        bogus = client.post("/v1/workloads", json=doc, headers=_auth("as_not-a-token"))
        assert bogus.status_code == 401
        right = client.post("/v1/workloads", json=doc, headers=_auth(submit))
        assert right.status_code == 201, right.text

        key = right.json()["key"]
        job = {"workload_keys": [key], "device_key": known_device(db_url)}
        assert client.post("/v1/jobs", json=job, headers=_auth(worker)).status_code == 403
        created = client.post("/v1/jobs", json=job, headers=_auth(admin))  # admin: every scope
        assert created.status_code == 201
        job_id = created.json()["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 401
        # Admin's job: a submit token may not cancel it; admin may.
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=_auth(submit)).status_code == 403
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=_auth(admin)).status_code == 200

        beat = "/v1/workers/nobody:0:0/heartbeat"
        assert client.post(beat, headers=_auth(submit)).status_code == 403
        assert client.post(beat, headers=_auth(worker)).status_code == 404  # past auth

        new = {"name": "ci", "scopes": ["submit"]}
        assert client.post("/v1/tokens", json=new).status_code == 401
        assert client.post("/v1/tokens", json=new, headers=_auth(submit)).status_code == 403
        made = client.post("/v1/tokens", json=new, headers=_auth(admin))
        assert made.status_code == 201
        assert made.json()["token"].startswith("as_") and made.json()["scopes"] == ["submit"]
        assert made.json()["device_keys"] == []
        fresh = made.json()["token"]
        assert client.post("/v1/workloads", json=doc, headers=_auth(fresh)).status_code == 200

        revoked = client.delete(f"/v1/tokens/{made.json()['id']}", headers=_auth(admin))
        assert revoked.status_code == 204
        assert client.post("/v1/workloads", json=doc, headers=_auth(fresh)).status_code == 401
        bad_scope = {"name": "x", "scopes": ["root"]}
        assert client.post("/v1/tokens", json=bad_scope, headers=_auth(admin)).status_code == 422

    with db(db_url) as session:
        row = session.scalars(select(ApiToken).where(ApiToken.id == made.json()["id"])).one()
        assert row.revoked and row.last_used_at is not None
        assert row.token_hash == hashlib.sha256(fresh.encode()).hexdigest()
        # The plaintext is nowhere in the table.
        for token in (fresh, submit, worker, admin):
            for r in session.scalars(select(ApiToken)):
                assert token not in (r.name, r.token_hash, *map(str, r.scopes))


def test_anonymous_reads(db_url, tmp_path):
    worker = _token(db_url, "worker")
    read_only = _token(db_url)
    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=True) as client:
        for path in ("/v1/jobs", "/v1/workers", "/v1/schedules/v1-0000000000000000"):
            assert client.get(path).status_code in (200, 404)
        lookup = client.post("/v1/schedules/lookup", json={"workload": matmul()[0]})
        assert lookup.status_code == 200
        # A token sent anyway must be valid.
        assert client.get("/v1/jobs", headers=_auth("as_wrong")).status_code == 401
        assert client.get("/v1/jobs", headers=_auth(read_only)).status_code == 200

    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        for path in ("/v1/jobs", "/v1/workers", "/v1/jobs/1"):
            response = client.get(path)
            assert response.status_code == 401, path
        lookup = client.post("/v1/schedules/lookup", json={"workload": matmul()[0]})
        assert lookup.status_code == 401
        # Any valid token reads, whatever its scopes.
        assert client.get("/v1/jobs", headers=_auth(worker)).status_code == 200
        assert client.get("/v1/workers", headers=_auth(read_only)).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes never need a token


def test_auth_off_needs_no_token(db_url, tmp_path):
    with api_client(db_url, tmp_path, auth_required=False, anonymous_reads=False) as client:
        assert client.post("/v1/workloads", json=matmul()[0]).status_code == 201
        assert client.get("/v1/jobs").status_code == 200
        made = client.post("/v1/tokens", json={"name": "local", "scopes": ["admin"]})
        assert made.status_code == 201


def test_token_service(db_url):
    with db(db_url) as session:
        created = create_token(session, "svc", ["worker", "worker"])
        assert created.scopes == ["worker"]
        row = authenticate(session, created.token, "worker", touch_interval_s=MINUTE)
        assert row.id == created.id and row.last_used_at is not None
        assert authenticate(session, created.token, None, touch_interval_s=MINUTE).id == created.id
        with pytest.raises(PermissionDeniedError):
            authenticate(session, created.token, "submit", touch_interval_s=MINUTE)
        with pytest.raises(AuthenticationError):
            authenticate(session, None, "worker", touch_interval_s=MINUTE)
        revoke_token(session, created.id)
        with pytest.raises(AuthenticationError):
            authenticate(session, created.token, "worker", touch_interval_s=MINUTE)


def _last_used(db_url: str, token: str) -> datetime | None:
    with db(db_url) as session:
        query = select(ApiToken.last_used_at).where(ApiToken.token_hash == hash_token(token))
        return session.scalars(query).one()


def test_last_used_at_is_written_once_per_interval(db_url, tmp_path):
    token = _token(db_url)
    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        assert client.get("/v1/jobs", headers=_auth(token)).status_code == 200
        first = _last_used(db_url, token)
        assert first is not None
        for _ in range(3):  # reads within the interval write nothing
            assert client.get("/v1/jobs", headers=_auth(token)).status_code == 200
        assert _last_used(db_url, token) == first
        with db(db_url) as session:
            row = session.scalars(select(ApiToken).where(ApiToken.last_used_at == first)).one()
            row.last_used_at = first - timedelta(minutes=2)
        assert client.get("/v1/jobs", headers=_auth(token)).status_code == 200
        assert _last_used(db_url, token) > first


def test_last_used_at_is_written_by_the_first_of_racing_processes(db_url):
    """Two processes that both read the token as stale: only the first one writes."""
    token = _token(db_url)
    with db(db_url) as late:
        row = late.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        assert row.last_used_at is None
        with db(db_url) as early:
            authenticate(early, token, None, touch_interval_s=MINUTE)
        written = _last_used(db_url, token)
        touch_last_used(late, row, MINUTE)  # read stale, but the UPDATE's WHERE sees it fresh
    assert _last_used(db_url, token) == written


def test_kept_schedules_still_need_a_token(db_url, tmp_path):
    """A kept answer is served only past the route's authentication."""
    submit, reader = _token(db_url, "submit"), _token(db_url)
    doc, _ = matmul()
    path = f"/v1/schedules/{Workload.from_json(doc).key}"
    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        assert client.post("/v1/workloads", json=doc, headers=_auth(submit)).status_code == 201
        kept = client.get(path, headers=_auth(reader))
        assert kept.status_code == 200
        etag = {"If-None-Match": kept.headers["etag"]}
        assert client.get(path).status_code == 401
        assert client.get(path, headers=etag).status_code == 401
        assert client.get(path, headers={**etag, **_auth("as_wrong")}).status_code == 401
        assert client.get(path, headers={**etag, **_auth(reader)}).status_code == 304
