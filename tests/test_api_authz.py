"""Who may do what: every route of the OpenAPI schema x {no token, wrong scope, revoked
token, another owner / device, right scope}, from one table of rules keyed by (method, path
template). A route without a rule fails the test, so no route ships without one.

Also the behaviours behind the table: worker tokens bound to device keys and to their own
workers, reported hardware validated and pinned, jobs owned, quotas, bounded fields (no
database error on PostgreSQL), and redacted anonymous reads. Real PostgreSQL, migrated.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from autosched.db import Base, Job, Worker, WorkloadRow, engine_for
from autosched.db.models import Device
from autosched.hardware import HardwareParams
from autosched.service.tokens import create_token, revoke_token
from autosched.wire import Workload
from tests.api_support import (
    HASWELL,
    add_trial,
    api_client,
    db,
    known_device,
    matmul,
    registration,
    unique_device,
)

SKYLAKE = HardwareParams(4, 512, 32768, 1048576, 8388608, "skylake-avx512")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class World:
    """Tokens, devices, a worker, a workload and a job, made through the API where it can."""

    db_url: str
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)
    dev_a: str = ""
    dev_b: str = ""
    worker_a: str = ""
    key: str = ""
    doc: dict[str, Any] = field(default_factory=dict)

    def token(self, name: str, scopes: list[str], device_keys: list[str] | None = None) -> str:
        with db(self.db_url) as session:
            made = create_token(session, f"authz-{name}", scopes, device_keys or [])
        self.tokens[name], self.token_ids[name] = made.token, made.id
        return made.token

    def job(self, owner: str = "submit_a") -> int:
        r = self.client.post(
            "/v1/jobs",
            json={"workload_keys": [self.key], "device_key": self.dev_a, "trials": 4},
            headers=_auth(self.tokens[owner]),
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def spare_token_id(self) -> int:
        with db(self.db_url) as session:
            return create_token(session, "authz-spare", ["submit"]).id


@pytest.fixture
def world(pg_url, tmp_path) -> Iterator[World]:
    with api_client(pg_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        w = World(pg_url, client)
        w.dev_a, w.dev_b = unique_device(), unique_device()
        w.token("admin", ["admin"])
        w.token("submit_a", ["submit"])
        w.token("submit_b", ["submit"])
        w.token("worker_a", ["worker"], [w.dev_a])
        w.token("worker_b", ["worker"], [w.dev_b])
        w.token("reader", [])
        w.token("revoked", ["admin"])
        with db(pg_url) as session:
            revoke_token(session, w.token_ids["revoked"])
        w.worker_a = f"host-a:1:{uuid.uuid4().hex[:8]}"
        for token, device, worker in (
            ("worker_a", w.dev_a, w.worker_a),
            ("worker_b", w.dev_b, f"host-b:1:{uuid.uuid4().hex[:8]}"),
        ):
            r = client.post(
                "/v1/workers/register",
                json=registration(device, worker),
                headers=_auth(w.tokens[token]),
            )
            assert r.status_code == 200, r.text
        w.doc, _ = matmul()
        r = client.post("/v1/workloads", json=w.doc, headers=_auth(w.tokens["submit_a"]))
        assert r.status_code == 201, r.text
        w.key = r.json()["key"]
        yield w


# ---- the table ------------------------------------------------------------------------

Request = Callable[[World], tuple[str, Any]]  # -> (path, json body or None)


@dataclass(frozen=True)
class Rule:
    """``access``: public (no token ever), read (any valid token), or the scope needed.
    ``ok``: the statuses of a request the rule admits. ``other``: the token that is refused
    as another owner or another device's (403), where the route has owners."""

    access: str
    request: Request
    ok: tuple[int, ...] = (200,)
    other: str | None = None


def _static(path: str, body: Any = None) -> Request:
    return lambda w: (path, body)


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule("public", _static("/healthz")),
    ("GET", "/readyz"): Rule("public", _static("/readyz")),
    ("GET", "/metrics"): Rule("read", _static("/metrics")),
    ("POST", "/v1/workloads"): Rule("submit", lambda w: ("/v1/workloads", w.doc), ok=(200, 201)),
    ("GET", "/v1/workloads/{key}"): Rule("read", lambda w: (f"/v1/workloads/{w.key}", None)),
    ("POST", "/v1/jobs"): Rule(
        "submit",
        lambda w: ("/v1/jobs", {"workload_keys": [w.key], "device_key": w.dev_a, "trials": 4}),
        ok=(201,),
    ),
    ("GET", "/v1/jobs"): Rule("read", _static("/v1/jobs")),
    ("GET", "/v1/jobs/{job_id}"): Rule("read", lambda w: (f"/v1/jobs/{w.job()}", None)),
    ("POST", "/v1/jobs/{job_id}/cancel"): Rule(
        "submit", lambda w: (f"/v1/jobs/{w.job()}/cancel", None), other="submit_b"
    ),
    ("GET", "/v1/jobs/{job_id}/trials"): Rule(
        "read", lambda w: (f"/v1/jobs/{w.job()}/trials", None)
    ),
    ("POST", "/v1/schedules/lookup"): Rule(
        "read", lambda w: ("/v1/schedules/lookup", {"workload": w.doc})
    ),
    ("GET", "/v1/schedules/{workload_key}"): Rule(
        "read", lambda w: (f"/v1/schedules/{w.key}", None)
    ),
    ("GET", "/v1/schedules"): Rule("read", _static("/v1/schedules")),
    ("POST", "/v1/workers/register"): Rule(
        "worker",
        lambda w: ("/v1/workers/register", registration(w.dev_a)),
        other="worker_b",  # granted dev_b only
    ),
    ("POST", "/v1/workers/{worker_id}/heartbeat"): Rule(
        "worker", lambda w: (f"/v1/workers/{w.worker_a}/heartbeat", None), other="worker_b"
    ),
    ("GET", "/v1/workers"): Rule("read", _static("/v1/workers")),
    ("POST", "/v1/tokens"): Rule(
        "admin", _static("/v1/tokens", {"name": "authz-new", "scopes": ["submit"]}), ok=(201,)
    ),
    ("DELETE", "/v1/tokens/{token_id}"): Rule(
        "admin", lambda w: (f"/v1/tokens/{w.spare_token_id()}", None), ok=(204,)
    ),
}

#: The token of the right scope, and one with a wrong scope, per access class.
RIGHT = {"read": "reader", "submit": "submit_a", "worker": "worker_a", "admin": "admin"}
WRONG = {"submit": "worker_a", "worker": "submit_a", "admin": "submit_a"}


def _expected(rule: Rule, principal: str) -> tuple[int, ...]:
    if rule.access == "public":
        return rule.ok
    if principal in ("none", "revoked", "bogus"):
        return (401,)
    if principal == "wrong":
        return (403,) if rule.access in WRONG else rule.ok
    if principal == "other":
        return (403,)
    return rule.ok


def _call(w: World, method: str, rule: Rule, token: str | None) -> int:
    path, body = rule.request(w)
    return w.client.request(method, path, json=body, headers=_auth(token)).status_code


def test_every_route_has_a_rule_and_follows_it(world):
    schema = world.client.app.openapi()["paths"]
    routes = {(m.upper(), p) for p, ops in schema.items() for m in ops}
    assert not routes - RULES.keys(), f"routes without an access rule: {routes - RULES.keys()}"
    assert not RULES.keys() - routes, f"rules for routes that are gone: {RULES.keys() - routes}"

    failures = []
    for (method, path), rule in sorted(RULES.items()):
        principals: dict[str, str | None] = {
            "none": None,
            "bogus": "as_not-a-token",
            "revoked": world.tokens["revoked"],
        }
        if rule.access in WRONG:
            principals["wrong"] = world.tokens[WRONG[rule.access]]
        if rule.other:
            principals["other"] = world.tokens[rule.other]
        principals["right"] = world.tokens[RIGHT.get(rule.access, "admin")]
        for principal, token in principals.items():
            got = _call(world, method, rule, token)
            if got not in _expected(rule, principal):
                failures.append(f"{method} {path} as {principal}: {got}")
    assert not failures, "\n".join(failures)


# ---- worker tokens ----------------------------------------------------------------------


def _register(w: World, token: str, body: dict[str, Any]) -> Any:
    return w.client.post("/v1/workers/register", json=body, headers=_auth(w.tokens[token]))


def _workers_of(db_url: str, device: str) -> list[Worker]:
    with db(db_url) as session:
        return list(session.scalars(select(Worker).where(Worker.device_key == device)))


def test_worker_tokens_serve_only_their_devices_and_workers(world):
    # Another token's worker id: no takeover, whatever device key is claimed.
    for device in (world.dev_b, world.dev_a):
        taken = _register(world, "worker_b", registration(device, world.worker_a))
        assert taken.status_code == 403, taken.text
    with db(world.db_url) as session:
        row = session.get(Worker, world.worker_a)
        assert row.device_key == world.dev_a and row.token_id == world.token_ids["worker_a"]

    # A device key not granted, or a worker token granted none: refused, nothing stored.
    stranger = unique_device()
    refused = _register(world, "worker_a", registration(stranger))
    assert refused.status_code == 403 and stranger in refused.json()["detail"]
    world.token("unbound", ["worker"])
    assert _register(world, "unbound", registration(world.dev_a)).status_code == 403
    assert _workers_of(world.db_url, stranger) == []
    with db(world.db_url) as session:
        assert session.get(Device, stranger) is None

    # Its own worker again (a restart under the same id) and an admin: fine.
    again = _register(world, "worker_a", registration(world.dev_a, world.worker_a))
    assert again.status_code == 200, again.text
    admin = _register(world, "admin", registration(world.dev_a, world.worker_a))
    assert admin.status_code == 200
    with db(world.db_url) as session:
        assert session.get(Worker, world.worker_a).token_id == world.token_ids["admin"]


def test_token_device_keys_are_set_at_creation(world):
    made = world.client.post(
        "/v1/tokens",
        json={"name": "farm-a", "scopes": ["worker"], "device_keys": [world.dev_a]},
        headers=_auth(world.tokens["admin"]),
    )
    assert made.status_code == 201 and made.json()["device_keys"] == [world.dev_a]
    body = registration(world.dev_a)
    ok = world.client.post("/v1/workers/register", json=body, headers=_auth(made.json()["token"]))
    assert ok.status_code == 200, ok.text
    # Device keys bind worker tokens only.
    submit = world.client.post(
        "/v1/tokens",
        json={"name": "x", "scopes": ["submit"], "device_keys": [world.dev_a]},
        headers=_auth(world.tokens["admin"]),
    )
    assert submit.status_code == 422


# ---- hardware ---------------------------------------------------------------------------


def test_hardware_is_pinned_by_the_first_registration(world):
    with db(world.db_url) as session:
        pinned = session.get(Device, world.dev_a)
        assert pinned.hardware == HASWELL.to_json()
        assert pinned.target_key == "llvm/haswell/2c/256b"
        assert pinned.pinned_by_token_id == world.token_ids["worker_a"]

    other = _register(world, "worker_a", registration(world.dev_a, hw=SKYLAKE))
    assert other.status_code == 409 and "pinned" in other.json()["detail"]
    assert {w.target_key for w in _workers_of(world.db_url, world.dev_a)} == {
        "llvm/haswell/2c/256b"
    }

    repin = _register(world, "admin", registration(world.dev_a, hw=SKYLAKE))
    assert repin.status_code == 200, repin.text
    assert repin.json()["target_key"] == "llvm/skylake-avx512/4c/512b"
    with db(world.db_url) as session:
        pinned = session.get(Device, world.dev_a)
        assert pinned.hardware == SKYLAKE.to_json()
        assert pinned.pinned_by_token_id == world.token_ids["admin"]
    # The worker token now matches the new pin only.
    assert _register(world, "worker_a", registration(world.dev_a)).status_code == 409
    assert _register(world, "worker_a", registration(world.dev_a, hw=SKYLAKE)).status_code == 200


def _with_hardware(device: str, **changes: Any) -> dict[str, Any]:
    body = registration(device)
    body["hardware"] = {**body["hardware"], **changes}
    return body


BAD_REGISTRATIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "empty hardware": lambda d: {**registration(d), "hardware": {}},
    "unknown cpu": lambda d: _with_hardware(d, mcpu="testcpu"),
    "mcpu with options": lambda d: _with_hardware(d, mcpu="haswell -mattr=+avx512f"),
    "mcpu not a string": lambda d: _with_hardware(d, mcpu=["haswell"]),
    "vector bits": lambda d: _with_hardware(d, vector_bits=1024),
    "zero cores": lambda d: _with_hardware(d, num_cores=0),
    "huge cores": lambda d: _with_hardware(d, num_cores=2**40),
    "bool cores": lambda d: _with_hardware(d, num_cores=True),
    "tiny l1": lambda d: _with_hardware(d, l1_bytes=16),
    "huge l3": lambda d: _with_hardware(d, l3_bytes=2**50),
    "kind": lambda d: _with_hardware(d, kind="c"),
    "extra field": lambda d: _with_hardware(d, shell="rm -rf /"),
    "long cpu model": lambda d: _with_hardware(d, cpu_model="x" * 10_000),
    "cpu model control chars": lambda d: _with_hardware(d, cpu_model="a\nb"),
    "cuda devices": lambda d: _with_hardware(d, cuda_devices=[{"index": 0}]),
    "many cuda devices": lambda d: _with_hardware(d, cuda_devices=list(range(100))),
    "many fields": lambda d: {**registration(d), "hardware": {str(i): i for i in range(100)}},
    "target key mismatch": lambda d: registration(d, target_key="llvm/znver3/64c/512b"),
    "target mismatch": lambda d: registration(d, target={"kind": "llvm", "mcpu": "znver3"}),
    "long worker id": lambda d: registration(d, "w" * 500),
    "worker id with slash": lambda d: registration(d, "../../etc"),
    "long hostname": lambda d: {**registration(d), "hostname": "h" * 500},
    "long device key": lambda d: registration("d" * 500),
}


@pytest.mark.parametrize("case", sorted(BAD_REGISTRATIONS))
def test_bad_registrations_are_422_and_store_nothing(world, case):
    device = unique_device()
    world.token("case", ["worker"], [device])
    body = BAD_REGISTRATIONS[case](device)
    r = _register(world, "case", body)
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert _workers_of(world.db_url, device) == []
    with db(world.db_url) as session:
        assert session.get(Device, device) is None


# ---- jobs: owners and quotas --------------------------------------------------------------


def test_jobs_have_owners(world):
    job_id = world.job("submit_a")
    with db(world.db_url) as session:
        assert session.get(Job, job_id).owner_token_id == world.token_ids["submit_a"]
    cancel = f"/v1/jobs/{job_id}/cancel"
    other = world.client.post(cancel, headers=_auth(world.tokens["submit_b"]))
    assert other.status_code == 403 and "another token" in other.json()["detail"]
    with db(world.db_url) as session:
        assert session.get(Job, job_id).state == "queued"
    assert world.client.post(cancel, headers=_auth(world.tokens["submit_a"])).status_code == 200


def test_auth_off_jobs_have_no_owner(pg_url, tmp_path):
    with api_client(pg_url, tmp_path) as client:
        device = known_device(pg_url)
        r = client.post("/v1/jobs", json={"workloads": [matmul()[0]], "device_key": device})
        assert r.status_code == 201, r.text
        with db(pg_url) as session:
            assert session.get(Job, r.json()["id"]).owner_token_id is None
        assert client.post(f"/v1/jobs/{r.json()['id']}/cancel").status_code == 200


def _count_jobs(db_url: str, token_id: int) -> int:
    with db(db_url) as session:
        return session.scalar(select(func.count()).where(Job.owner_token_id == token_id))


def test_quotas_are_429_and_store_nothing(pg_url, tmp_path):
    quotas = {"quota_active_jobs": 2, "quota_workloads_per_job": 2, "quota_trials_per_job": 100}
    with api_client(pg_url, tmp_path, auth_required=True, **quotas) as client:
        w = World(pg_url, client)
        submit = w.token("quota", ["submit"])
        admin = w.token("quota-admin", ["admin"])
        device = known_device(pg_url)
        docs = [matmul()[0] for _ in range(3)]

        def post(body: dict[str, Any], token: str = submit) -> Any:
            return client.post(
                "/v1/jobs", json={"device_key": device, **body}, headers=_auth(token)
            )

        too_many = post({"workloads": docs, "trials": 4})
        assert too_many.status_code == 429 and "at most 2 workloads" in too_many.json()["detail"]
        too_long = post({"workloads": docs[:2], "trials": 51})  # 102 trials
        assert too_long.status_code == 429 and "100 trials" in too_long.json()["detail"]
        assert _count_jobs(pg_url, w.token_ids["quota"]) == 0
        with db(pg_url) as session:  # the refused documents were not stored either
            for doc in docs:
                assert session.get(WorkloadRow, Workload.from_json(doc).key) is None

        first = post({"workloads": docs[:1], "trials": 4})
        assert first.status_code == 201
        assert post({"workloads": docs[1:2], "strategy": "static"}).status_code == 201
        third = post({"workloads": docs[2:], "trials": 4})
        assert third.status_code == 429 and "quota is 2" in third.json()["detail"]
        assert _count_jobs(pg_url, w.token_ids["quota"]) == 2
        # A finished (here: cancelled) job frees its slot.
        cancel = f"/v1/jobs/{first.json()['id']}/cancel"
        assert client.post(cancel, headers=_auth(submit)).status_code == 200
        assert post({"workloads": docs[2:], "trials": 4}).status_code == 201
        # Admins have no quota.
        assert post({"workloads": docs, "trials": 50}, token=admin).status_code == 201


# ---- bounded fields -------------------------------------------------------------------------


def test_oversize_fields_are_422_not_database_errors(world):
    admin = _auth(world.tokens["admin"])
    job = {"workload_keys": [world.key], "device_key": world.dev_a}
    bodies = [
        {**job, "seed": 2**40},
        {**job, "seed": -1},
        {**job, "priority": 2**40},
        {**job, "trials": 2**63},
        {**job, "device_key": "d" * 500},
        {**job, "device_key": "a b"},
        {**job, "workload_keys": ["k" * 500]},
        {**job, "workload_keys": [world.key] * 1001},
        {"workload_keys": [world.key], "target": "t" * 500},
        {"workload_keys": [world.key], "target": "llvm -mcpu=x"},
    ]
    for body in bodies:
        r = world.client.post("/v1/jobs", json=body, headers=admin)
        assert r.status_code == 422, (str(body)[:80], r.status_code, r.text[:200])
    tokens = [
        {"name": "n" * 500, "scopes": ["submit"]},
        {"name": "a\x00b", "scopes": ["submit"]},
        {"name": "w", "scopes": ["worker"], "device_keys": ["d" * 500]},
        {"name": "w", "scopes": ["worker"], "device_keys": [f"d{i}" for i in range(100)]},
    ]
    for body in tokens:
        assert world.client.post("/v1/tokens", json=body, headers=admin).status_code == 422
    for method, path in [
        ("GET", f"/v1/jobs/{2**63}"),
        ("GET", f"/v1/jobs/{2**40}"),
        ("GET", "/v1/jobs/0"),
        ("POST", f"/v1/jobs/{2**40}/cancel"),
        ("GET", f"/v1/jobs/{2**40}/trials"),
        ("DELETE", f"/v1/tokens/{2**40}"),
        ("POST", f"/v1/workers/{'w' * 500}/heartbeat"),
        ("GET", f"/v1/schedules?workload_key={'k' * 500}"),
        ("GET", "/v1/schedules?target=%00"),
    ]:
        r = world.client.request(method, path, headers=admin)
        assert r.status_code == 422, (method, path[:60], r.status_code, r.text[:200])
    # In range but absent: a plain 404.
    assert world.client.get(f"/v1/jobs/{2**31 - 1}", headers=admin).status_code == 404


# ---- redaction ------------------------------------------------------------------------------


def test_anonymous_reads_are_redacted(pg_url, tmp_path):
    secret = "Traceback: /home/builder/secret-path/build.py failed"
    with api_client(pg_url, tmp_path, auth_required=True, anonymous_reads=True) as client:
        w = World(pg_url, client)
        device = unique_device()
        w.dev_a = device
        worker = w.token("w", ["worker"], [device])
        w.token("submit_a", ["submit"])
        worker_id = f"secret-host-7:99:{uuid.uuid4().hex[:8]}"
        body = {**registration(device, worker_id), "hostname": "secret-host-7"}
        assert (
            client.post("/v1/workers/register", json=body, headers=_auth(worker)).status_code == 200
        )
        w.doc, _ = matmul()
        w.key = client.post(
            "/v1/workloads", json=w.doc, headers=_auth(w.tokens["submit_a"])
        ).json()["key"]
        job_id = w.job()
        with db(pg_url) as session:
            session.get(Job, job_id).error = secret
            trial = add_trial(
                session, job_id, w.key, status="build_error", worker_id=worker_id, device_key=device
            )
            trial.error = secret

        anonymous = [
            client.get("/v1/workers"),
            client.get(f"/v1/jobs/{job_id}"),
            client.get("/v1/jobs"),
            client.get(f"/v1/jobs/{job_id}/trials"),
        ]
        for r in anonymous:
            assert r.status_code == 200
            assert "secret-host-7" not in r.text and "secret-path" not in r.text, r.url
        mine = [x for x in anonymous[0].json() if x["device_key"] == device]
        assert mine[0]["hostname"] is None and mine[0]["id"].startswith("w-")
        assert anonymous[1].json()["state"] == "queued" and anonymous[1].json()["error"] is None
        trials = anonymous[3].json()["trials"]
        assert trials[0]["status"] == "build_error" and trials[0]["error"] is None
        assert trials[0]["worker_id"] == mine[0]["id"]  # one pseudonym everywhere

        token = _auth(w.tokens["submit_a"])  # any valid token sees everything
        listed = [
            x for x in client.get("/v1/workers", headers=token).json() if x["device_key"] == device
        ]
        assert listed[0]["hostname"] == "secret-host-7" and listed[0]["id"] == worker_id
        assert client.get(f"/v1/jobs/{job_id}", headers=token).json()["error"] == secret
        full = client.get(f"/v1/jobs/{job_id}/trials", headers=token).json()["trials"]
        assert full[0]["error"] == secret and full[0]["worker_id"] == worker_id
        # The readiness probe is anonymous too: failures by kind, no messages.
        assert set(client.get("/readyz").json()["checks"].values()) == {"ok"}


# ---- the schema ----------------------------------------------------------------------------


def test_models_match_the_migrations(pg_url):
    with engine_for(pg_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
