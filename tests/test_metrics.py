"""/metrics: fleet numbers read from the database at scrape time (jobs, trials, queues,
workers), the API's request-latency histogram by route template, and who may read it.
Values are checked by parsing the exposition with prometheus_client's own parser."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autosched.db import Job, session_factory, session_scope
from autosched.db.models import utcnow
from autosched.schemas import WorkerRegister
from autosched.service import farm
from autosched.service.metrics import RATE_WINDOW_S, FleetCollector
from autosched.service.tokens import Caller, create_token
from autosched.vocabulary import TrialState, WorkerState
from tests.api_support import add_trial, api_client, hardware_doc, unique_device
from tests.farm_support import salted_matmul, store

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape(client, **headers: str) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _parse(r.text)


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _worker(session, worker_id: str, device: str, state: str, heartbeat_age_s: float) -> None:
    reg = WorkerRegister(
        worker_id=worker_id, device_key=device, hardware=hardware_doc(), hostname="metrics-test"
    )
    worker = farm.register_worker(session, reg, caller=Caller.trusted())
    worker.state = state
    worker.last_heartbeat = utcnow() - timedelta(seconds=heartbeat_age_s)


def test_fleet_numbers_come_from_the_database(db_url, tmp_path):
    """Deltas between two scrapes (the PostgreSQL database is shared by the session), and
    exact values for this test's own device keys and worker ids."""
    device, idle_device = unique_device(), unique_device()
    factory = session_factory(db_url)
    (key,) = store(factory, salted_matmul("metrics_mm"))
    with api_client(db_url, tmp_path) as client:
        before = _scrape(client)
        assert _value(before, "autosched_database_up") == 1
        now = utcnow()
        with session_scope(factory) as session:
            jobs = {}
            for state in ("queued", "running", "running", "failed"):
                job = Job(device_key=device, strategy="random", trials_per_workload=8)
                job.state = state
                session.add(job)
                session.flush()
                jobs.setdefault(state, job.id)
            job_id = jobs["running"]
            recent, old = now - timedelta(seconds=5), now - timedelta(minutes=10)
            for status, finished in [
                ("ok", recent),
                ("ok", recent),
                ("ok", recent),
                ("build_error", old),
                ("build_error", old),
                ("run_timeout", recent),
            ]:
                add_trial(
                    session, job_id, key, status=status, finished_at=finished, device_key=device
                )
            for state in (TrialState.QUEUED, TrialState.QUEUED, TrialState.RUNNING):
                add_trial(session, job_id, key, state=state, device_key=device)
            add_trial(session, job_id, key, state=TrialState.CANCELLED, device_key=device)

            _worker(session, f"w1:{device}", device, WorkerState.ONLINE, 7)
            _worker(session, f"w2:{device}", device, WorkerState.OFFLINE, 100)
            _worker(session, f"w3:{device}", device, WorkerState.OFFLINE, 7200)  # long gone
            _worker(session, f"w4:{idle_device}", idle_device, WorkerState.ONLINE, 1)
        after = _scrape(client)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert {s: delta("autosched_jobs", state=s) for s in ("queued", "running", "failed")} == {
        "queued": 1,
        "running": 2,
        "failed": 1,
    }
    assert delta("autosched_jobs", state="succeeded") == 0
    trials = {
        s: delta("autosched_trials_total", status=s)
        for s in ("ok", "build_error", "run_timeout", "run_error", "cancelled")
    }
    assert trials == {"ok": 3, "build_error": 2, "run_timeout": 1, "run_error": 0, "cancelled": 1}
    errors = {
        k: delta("autosched_trial_errors_total", kind=k) for k in ("build_error", "run_timeout")
    }
    assert errors == {"build_error": 2, "run_timeout": 1}
    assert ("autosched_trial_errors_total", frozenset({("kind", "ok")})) not in after
    # Four of the new trials finished within the window (the build errors long before).
    if db_url.startswith("sqlite"):  # a database of its own: nothing else in the window
        assert _value(after, "autosched_trials_per_second") * RATE_WINDOW_S == pytest.approx(4)
    else:  # shared: earlier tests' trials may have left the window between the scrapes
        assert delta("autosched_trials_per_second") * RATE_WINDOW_S <= 4 + 1e-9
        assert _value(after, "autosched_trials_per_second") * RATE_WINDOW_S >= 4 - 1e-9

    assert _value(after, "autosched_queue_depth", device_key=device) == 3
    assert ("autosched_queue_depth", frozenset({("device_key", idle_device)})) in after

    assert delta("autosched_workers", state="online") == 2
    assert delta("autosched_workers", state="offline") == 2
    age = "autosched_worker_heartbeat_age_seconds"
    w1, w2, w3 = (farm.public_worker_id(f"{w}:{device}") for w in ("w1", "w2", "w3"))
    online = _value(after, age, worker_id=w1, device_key=device, state="online")
    offline = _value(after, age, worker_id=w2, device_key=device, state="offline")
    assert 7 <= online < 60 and 100 <= offline < 160
    gone = [labels for name, labels in after if name == age and ("worker_id", w3) in labels]
    assert gone == []  # offline for two hours: its series is dropped


def test_request_latency_is_labelled_by_route_template(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        for job_id in (101, 102, 103):
            assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert client.get("/healthz").status_code == 200
        assert client.get("/no/such/path/42").status_code == 404
        samples = _scrape(client)
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})

    count = "autosched_http_request_duration_seconds_count"
    assert _value(samples, count, method="GET", route="/v1/jobs/{job_id}", status="404") == 3
    assert _value(samples, count, method="GET", route="/healthz", status="200") == 1
    assert _value(samples, count, method="GET", route="<unmatched>", status="404") == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == count}
    assert routes == {"/v1/jobs/{job_id}", "/healthz", "<unmatched>"}  # never a raw path
    bucket = "autosched_http_request_duration_seconds_bucket"
    inf = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404", "le": "+Inf"}
    assert _value(samples, bucket, **inf) == 3
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_anonymous_reads_or_a_token(sqlite_url, tmp_path):
    with session_scope(session_factory(sqlite_url)) as session:
        token = create_token(session, "metrics-reader", ["worker"]).token
    bearer = {"Authorization": f"Bearer {token}"}
    with api_client(sqlite_url, tmp_path, auth_required=True, anonymous_reads=True) as client:
        assert client.get("/metrics").status_code == 200
    with api_client(sqlite_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        missing = client.get("/metrics")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/metrics", headers={"Authorization": "Bearer as_not-a-token"})
        assert wrong.status_code == 401
        assert "autosched_jobs" in client.get("/metrics", headers=bearer).text


def test_a_database_outage_is_reported_not_raised(tmp_path):
    """A scrape still answers: ``autosched_database_up 0`` and no fleet families."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(session_factory(f"sqlite:///{tmp_path}/missing/db.sqlite")))
    samples = _parse(generate_latest(registry).decode())
    assert samples == {("autosched_database_up", frozenset()): 0.0}


def test_apps_have_registries_of_their_own(sqlite_url, tmp_path):
    """Two apps in one process (the tests build many) neither clash nor share counts."""
    with api_client(sqlite_url, tmp_path) as first, api_client(sqlite_url, tmp_path) as second:
        first.get("/healthz")
        count = "autosched_http_request_duration_seconds_count"
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        assert _value(_scrape(first), count, **labels) == 1
        assert _value(_scrape(second), count, **labels) == 0
