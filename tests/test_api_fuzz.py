"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis).

Every operation, with requests generated from the schema (valid and invalid), is sent to the
ASGI app on a fresh PostgreSQL database with migrations applied, once with a valid token of
each scope. For every answer: no 5xx, none slower than 2 s, the status code, content type,
headers and body as the schema documents them, and a rejected request (4xx) stored nothing:
a digest of every table's rows is the same before and after it (stronger than row counts:
an update counts too). The only column left out is ``api_tokens.last_used_at``, which
authentication stamps in its own transaction by design.

The rate limits are set far out of reach, so that a 429 never hides a bug.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, create_engine, text

from autosched.db import ApiToken, upgrade_database
from autosched.db.models import Base
from autosched.service.tokens import create_token
from services.api import create_app
from tests.api_support import db, matmul, settings_for
from tests.conftest import PG_ADMIN_URL
from tests.dashboard_support import register_worker

SCOPES = ("submit", "worker", "admin")
EXAMPLES = int(os.environ.get("AUTOSCHED_FUZZ_EXAMPLES", "12"))  # per operation, mode, scope
MIN_CASES = 1000
DEVICE = "fuzz-device"  # the worker token's device key
MAX_SECONDS = 2.0
#: Written by authentication on every request, in its own transaction (deps._check).
VOLATILE = {"api_tokens": ("last_used_at",)}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Fuzzed:
    app: FastAPI
    engine: Engine
    tokens: dict[str, str]
    cases: dict[str, int] = field(default_factory=dict)

    def digest(self) -> dict[str, str]:
        """An md5 of each table's rows (as JSON, sorted), volatile columns left out."""
        parts = []
        for table in Base.metadata.sorted_tables:
            row = "to_jsonb(t)" + "".join(f" - '{c}'" for c in VOLATILE.get(table.name, ()))
            parts.append(
                f"SELECT '{table.name}' AS name, md5(coalesce(string_agg(r, E'\\n' ORDER BY r),"
                f" '')) AS digest FROM (SELECT ({row})::text AS r FROM \"{table.name}\" t) s"
            )
        with self.engine.connect() as conn:
            return dict(conn.execute(text(" UNION ALL ".join(parts))).all())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    """The app on its own database (the digests stay small and no other test's rows move),
    tokens of each scope, and a little data for the generated ids to land on."""
    name = f"autosched_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_ADMIN_URL}/{name}"
    try:
        upgrade_database(url)
        tokens: dict[str, str] = {}
        with db(url) as session:
            for scope in SCOPES:
                keys = [DEVICE] if scope == "worker" else []
                tokens[scope] = create_token(session, f"fuzz-{scope}", [scope], keys).token
                # Ids no generated DELETE /v1/tokens/{id} will hit: the fuzz must not revoke
                # its own tokens (hypothesis favours small numbers and boundaries).
                row = session.query(ApiToken).filter_by(name=f"fuzz-{scope}").one()
                row.id = random.randrange(10**8, 2**30)
        unlimited = "1000000/minute"
        app = create_app(
            settings_for(
                url,
                tmp_path_factory.mktemp("fuzz"),
                auth_required=True,
                anonymous_rate_limit=unlimited,
                submit_rate_limit=unlimited,
                redis_url=None,
            )
        )
        with TestClient(app) as client:
            _seed(client, tokens)
        engine = create_engine(url)
        fuzz = Fuzzed(app, engine, tokens)
        yield fuzz
        engine.dispose()
    finally:
        from autosched.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _seed(client: TestClient, tokens: dict[str, str]) -> None:
    """A worker, a workload and two jobs (ids 1 and 2: numbers the fuzz tries first)."""
    worker = {"Authorization": f"Bearer {tokens['worker']}"}
    submit = {"Authorization": f"Bearer {tokens['submit']}"}
    register_worker(client, DEVICE, **worker)
    doc, _ = matmul(16, name="fuzz_mm")
    made = client.post("/v1/workloads", json=doc, headers=submit)
    assert made.status_code == 201, made.text
    body = {"workload_keys": [made.json()["key"]], "device_key": DEVICE}
    for _ in range(2):
        assert client.post("/v1/jobs", json=body, headers=submit).status_code == 201


@pytest.fixture(scope="module")
def api_schema(fuzzed: Fuzzed) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app)


def _check(case: Any, scope: str, fuzzed: Fuzzed) -> None:
    """Send ``case`` with ``scope``'s token; fail on any of the properties above."""
    before = fuzzed.digest()
    start = time.perf_counter()
    # On the case itself: a generated Authorization header (negative data) is replaced too.
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzzed.tokens[scope]}"}
    response = case.call()
    elapsed = time.perf_counter() - start
    fuzzed.cases[scope] = fuzzed.cases.get(scope, 0) + 1
    request = f"{case.method} {case.formatted_path} ({scope} token)"
    assert "rate limit" not in response.text, f"{request}: a rate limit hid the answer"
    assert elapsed <= MAX_SECONDS, f"{request}: {elapsed:.2f} s"
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        after = fuzzed.digest()
        changed = sorted(t for t in before if before[t] != after[t])
        assert not changed, (
            f"{request} answered {response.status_code} {response.text[:300]} but changed "
            f"{changed}; {case.as_curl_command()}"
        )


def test_digest_sees_every_write(fuzzed: Fuzzed) -> None:
    """The stored-on-reject check is only as good as the digest: any changed column of any
    table changes it, except authentication's timestamp."""
    before = fuzzed.digest()
    with fuzzed.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET last_used_at = now()"))
    assert fuzzed.digest() == before
    with fuzzed.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET priority = priority + 1 WHERE id = 1"))
    changed = fuzzed.digest()
    assert [t for t in before if before[t] != changed[t]] == ["jobs"]
    with fuzzed.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET priority = priority - 1 WHERE id = 1"))
    assert fuzzed.digest() == before


@pytest.mark.slow
@pytest.mark.parametrize("scope", SCOPES)
def test_api_fuzz(scope: str, fuzzed: Fuzzed, api_schema: Any) -> None:
    """Every operation, data that fits its schema and data that does not. The findings of
    all operations are gathered (each shrunk by hypothesis) and reported together.

    (Hypothesis runs here directly on schemathesis' strategies: schemathesis' own pytest
    plugin does not run under pytest 9.)"""
    findings: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                _check(case, scope, fuzzed)

            try:
                fuzz()
            except Unsatisfiable:
                # No input to break (GET /healthz): no negative case exists.
                assert mode == GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as err:
                findings.append(f"{operation.label} ({mode}, {scope} token): {err}")
    assert not findings, f"{len(findings)} operations fail:\n\n" + "\n\n".join(findings)
    cases = fuzzed.cases.get(scope, 0)
    print(f"fuzz: {cases} cases with the {scope} token")  # pytest -s
    assert cases * len(SCOPES) >= MIN_CASES, f"only {cases} cases with the {scope} token"
