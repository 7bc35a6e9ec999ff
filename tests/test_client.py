"""The Python client and the service CLI commands, against a mocked HTTP transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from autosched import cli
from autosched.cli import client_commands
from autosched.client import Client, format_trace
from autosched.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from autosched.fetched_schedule import apply_schedule, build_schedule
from autosched.schemas import (
    BestSchedule,
    JobDetail,
    JobView,
    ScheduleView,
    TokenCreated,
    TrialPage,
    WorkerRegister,
    WorkerView,
    WorkloadView,
)
from autosched.settings import Settings
from tests import farm_support

URL = "http://api.test"
KEY = "v1-0123456789abcdef"  # a well-formed workload key (the schemas check the shape)
NOW = datetime.now(UTC)
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings that ignore the environment's token and point data_dir at tmp_path."""
    s = Settings(api_url=URL, api_token=None, data_dir=tmp_path)
    monkeypatch.setattr("autosched.client.get_settings", lambda: s)
    return s


def make(handler: Handler, token: str | None = "t0k", retries: int = 3) -> Client:
    client = Client(URL, token, retries=retries, transport=httpx.MockTransport(handler))
    client.sleeps = []  # type: ignore[attr-defined]
    client.sleep = client.sleeps.append  # type: ignore[attr-defined]
    return client


def job_doc(state: str = "running", done: int = 8, **extra: Any) -> dict[str, Any]:
    # Ages are shown relative to the clock when the table is printed: read it now, not at
    # import (a long test session would make the job look older than 5 minutes).
    now = datetime.now(UTC)
    return {
        "id": 42,
        "state": state,
        "device_key": "dev-a",
        "target_key": "llvm/znver3/8c/256b",
        "strategy": "evolutionary",
        "priority": 0,
        "trials_total": 16,
        "trials_done": done,
        "best_latency": 1e-4,
        "best_gflops": 5.24,
        "errors": {"build_error": 1},
        "workloads": [
            {
                "workload_key": "k" * 16,
                "name": "mm",
                "trials_done": done,
                "best_latency": 1e-4,
                "best_gflops": 5.24,
                "static_latency": 2e-4,
                "speedup_over_static": 2.0,
            }
        ],
        "error": None,
        "created_at": (now - timedelta(minutes=5)).isoformat(),
        "started_at": now.isoformat(),
        "finished_at": None,
        **extra,
    }


def detail_doc(state: str = "running", done: int = 8) -> dict[str, Any]:
    curve = [
        {
            "trial": 1,
            "workload_key": "k" * 16,
            "status": "ok",
            "latency": 1e-4,
            "gflops": 5.24,
            "best_gflops": 5.24,
        }
    ]
    return job_doc(state, done, curve=curve)


WORKER = {
    "id": "w1",
    "device_key": "dev-a",
    "target_key": "llvm/znver3/8c/256b",
    "hardware": {"num_cores": 8},
    "hostname": "box",
    "state": "online",
    "registered_at": NOW.isoformat(),
    "last_heartbeat": NOW.isoformat(),
    "queue_depth": 3,
    "trials_done": 10,
    "errors": 1,
}
WORKLOAD_VIEW = {
    "key": "abc",
    "name": "mm",
    "flops": 524288.0,
    "stages": [
        {
            "name": "C",
            "meta_template": "complex_reduction",
            "reason": "r",
            "iter_kinds": "SSR",
            "extents": [64, 64, 64],
        }
    ],
    "template": {"workload_key": "abc", "stages": []},
    "target_key": "llvm/x86-64/2c/256b",
    "created": True,
}
TOKEN = {"id": 3, "name": "ci", "scopes": ["submit", "worker"], "token": "secret-value"}
TRIALS = {
    "total": 2,
    "trials": [
        {
            "id": 7,
            "number": 1,
            "workload_key": "k" * 16,
            "state": "done",
            "status": "build_error",
            "latency": None,
            "gflops": None,
            "error": "RuntimeError: vectorize failed",
            "worker_id": "w1",
            "build_secs": 0.5,
            "run_secs": None,
            "dispatch_count": 1,
            "dispatched_at": NOW.isoformat(),
            "finished_at": NOW.isoformat(),
        }
    ],
}
BEST = {
    "workload_key": KEY,
    "workload_name": "mm",
    "target_key": "llvm/znver3/8c/256b",
    "latency": 1e-4,
    "gflops": 5.24,
    "worker_id": "w1",
    "device_key": "dev-a",
    "tvm_version": "0.27.0",
    "updated_at": NOW.isoformat(),
    "trial_id": 7,
    "job_id": 42,
}


# The small te matmul every local-build test uses.


@pytest.fixture(scope="module")
def matmul():
    return farm_support.matmul(64, 64, 64, "mm")


@pytest.fixture(scope="module")
def static_view(matmul) -> ScheduleView:
    """What the server answers for a workload nothing has tuned: the static config."""
    from autosched.hardware import detect_hardware
    from autosched.schedule import apply_config, build_template, static_config, trace_json

    hw = detect_hardware()
    func = matmul.prim_func
    config = static_config(func, hw)
    return ScheduleView(
        workload_key=matmul.key,
        target_key=hw.target_key,
        source="static",
        config=config.to_json(),
        template=build_template(func, hw).to_json(),
        hardware=hw.to_json(),
        trace=trace_json(apply_config(func, config, hw)),
        latency=None,
        gflops=None,
        worker_id=None,
        device_key=None,
        tvm_version="0.27.0",
        updated_at=None,
    )


# Typed responses and request bodies


def test_every_endpoint_parses_into_its_schema(static_view):
    seen: list[httpx.Request] = []
    routes: dict[tuple[str, str], Any] = {
        ("POST", "/v1/workloads"): WORKLOAD_VIEW,
        ("GET", "/v1/workloads/abc"): WORKLOAD_VIEW,
        ("POST", "/v1/jobs"): job_doc("queued", 0),
        ("GET", "/v1/jobs"): [job_doc(), job_doc("succeeded", 16)],
        ("GET", "/v1/jobs/42"): detail_doc(),
        ("POST", "/v1/jobs/42/cancel"): job_doc("cancelled"),
        ("GET", "/v1/jobs/42/trials"): TRIALS,
        ("GET", "/v1/schedules"): [BEST],
        ("GET", "/v1/schedules/abc"): static_view.model_dump(mode="json"),
        ("POST", "/v1/schedules/lookup"): static_view.model_dump(mode="json"),
        ("POST", "/v1/workers/register"): WORKER,
        ("POST", "/v1/workers/w1/heartbeat"): WORKER,
        ("GET", "/v1/workers"): [WORKER],
        ("POST", "/v1/tokens"): TOKEN,
        ("GET", "/healthz"): {"status": "ok"},
        ("GET", "/readyz"): {"database": "ok", "broker": "ok"},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=routes[(request.method, request.url.path)])

    def body(index: int = -1) -> Any:
        return json.loads(seen[index].content)

    doc = {"format_version": 1, "name": "x"}
    with make(handler) as client:
        assert isinstance(client.register_workload(doc), WorkloadView)
        assert body() == doc
        assert client.workload("abc").stages[0].extents == [64, 64, 64]

        job = client.submit_job(
            [KEY, doc], target="llvm/x86-64/2c/256b", trials=8, priority=5, seed=1
        )
        assert isinstance(job, JobView) and job.state == "queued"
        sent = body()
        assert sent["workload_keys"] == [KEY] and sent["workloads"] == [doc]
        assert (sent["target"], sent["device_key"], sent["trials"]) == (
            "llvm/x86-64/2c/256b",
            None,
            8,
        )
        assert (sent["strategy"], sent["priority"], sent["seed"]) == ("evolutionary", 5, 1)

        listed = client.jobs(state="running")
        assert [j.state for j in listed] == ["running", "succeeded"]
        assert seen[-1].url.params["state"] == "running"
        detail = client.job(42)
        assert isinstance(detail, JobDetail) and detail.curve[0].gflops == 5.24
        assert client.cancel_job(42).state == "cancelled"
        page = client.job_trials(42, limit=1)
        assert isinstance(page, TrialPage) and page.total == 2
        assert page.trials[0].status == "build_error" and seen[-1].url.params["limit"] == "1"
        client.job_trials(42)
        assert not seen[-1].url.params  # no limit: all of them

        view = client.schedule("abc", target="llvm/x86-64/2c/256b")
        assert (
            isinstance(view, ScheduleView)
            and seen[-1].url.params["target"] == "llvm/x86-64/2c/256b"
        )
        assert client.lookup_schedule(doc, target="llvm/x86-64/2c/256b").source == "static"
        assert body() == {"workload": doc, "target": "llvm/x86-64/2c/256b"}
        best = client.best_schedules(workload_key=KEY)
        assert isinstance(best[0], BestSchedule) and best[0].job_id == 42
        assert dict(seen[-1].url.params) == {"workload_key": KEY}  # what is None is left out
        client.best_schedules(target="llvm/x86-64/2c/256b", limit=5)
        assert dict(seen[-1].url.params) == {"target": "llvm/x86-64/2c/256b", "limit": "5"}

        reg = WorkerRegister(
            worker_id="w1",
            device_key="dev-a",
            target_key="llvm/x86-64/2c/256b",
            target={"kind": "llvm"},
            hardware={"num_cores": 8},
            hostname="box",
        )
        assert isinstance(client.register_worker(reg), WorkerView)
        assert body()["worker_id"] == "w1"
        assert client.heartbeat("w1").queue_depth == 3
        assert [w.id for w in client.workers()] == ["w1"]

        created = client.create_token("ci", ["submit", "worker"])
        assert isinstance(created, TokenCreated) and created.token == "secret-value"
        assert body() == {"name": "ci", "scopes": ["submit", "worker"], "device_keys": []}
        client.create_token("w", ["worker"], device_keys=["dev-a"])
        assert body()["device_keys"] == ["dev-a"]
        with pytest.raises(InvalidRequestError):  # refused before sending: no such key shape
            client.create_token("w", ["worker"], device_keys=["dev a/.."])
        assert client.healthz() is True
        assert client.readyz() == {"database": "ok", "broker": "ok"}


def test_job_speedup_over_static_is_computed_from_its_workloads():
    """Summed static latencies over summed best ones, None until every workload has both
    (and a best above zero): one definition, whatever the server sent."""
    second = {**job_doc()["workloads"][0], "workload_key": "j" * 16, "static_latency": 6e-4}
    job = JobView.model_validate(job_doc(workloads=[job_doc()["workloads"][0], second]))
    assert [w.speedup_over_static for w in job.workloads] == pytest.approx([2.0, 6.0])
    assert job.static_latency == pytest.approx(8e-4)
    assert job.speedup_over_static == pytest.approx(8e-4 / 2e-4)
    assert job.model_dump(mode="json")["speedup_over_static"] == pytest.approx(4.0)
    for change in ({"static_latency": None}, {"best_latency": None}, {"best_latency": 0.0}):
        pending = JobView.model_validate(
            job_doc(workloads=[job_doc()["workloads"][0], {**second, **change}])
        )
        assert pending.workloads[1].speedup_over_static is None
        assert pending.speedup_over_static is None
    no_workloads = JobView.model_validate(job_doc(workloads=[]))
    assert no_workloads.static_latency is None and no_workloads.speedup_over_static is None


def test_submit_needs_a_target_before_sending():
    with make(lambda r: pytest.fail("sent")) as client, pytest.raises(InvalidRequestError) as e:
        client.submit_job([KEY])
    assert "give device_key or target" in str(e.value)


# Errors


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, NotFoundError),
        (409, ConflictError),
        (422, InvalidRequestError),
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (429, QuotaExceededError),
        (500, ApiError),
    ],
)
def test_error_status_and_server_detail(status, kind):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": "no job with id 7"})

    with make(handler) as client, pytest.raises(kind) as caught:
        client.job(7)
    assert isinstance(caught.value, ApiError)
    assert caught.value.status_code == status
    assert caught.value.detail == "no job with id 7"


def test_fastapi_validation_list_becomes_a_readable_message():
    detail = [
        {"type": "less_than_equal", "loc": ["body", "trials"], "msg": "Input should be <= 100000"},
        {"type": "missing", "loc": ["body", "workloads", 0, "stages"], "msg": "Field required"},
        {"type": "value_error", "loc": ["body"], "msg": "Value error, give workload_keys"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": detail})

    with make(handler) as client, pytest.raises(InvalidRequestError) as caught:
        client.submit_job([KEY], target="llvm/x86-64/2c/256b")
    assert caught.value.detail == (
        "trials: Input should be <= 100000; workloads[0].stages: Field required; give workload_keys"
    )


def test_wire_format_path_and_non_json_bodies():
    answers = iter(
        [
            httpx.Response(422, json={"detail": "unknown op", "path": "stages[1].body"}),
            httpx.Response(500, text="<html>Internal Server Error</html>"),
        ]
    )
    with make(lambda r: next(answers)) as client:
        with pytest.raises(InvalidRequestError, match=r"stages\[1\]\.body: unknown op"):
            client.register_workload({})
        with pytest.raises(ApiError) as caught:
            client.workload("abc")
    assert caught.value.status_code == 500 and "Internal Server Error" in caught.value.detail


# Retries


def counting(answer: Callable[[httpx.Request], httpx.Response]) -> tuple[Handler, list[str]]:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return answer(request)

    return handler, calls


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_connect_errors_are_retried_with_backoff_then_reported():
    handler, calls = counting(refuse)
    with make(handler, retries=3) as client, pytest.raises(ApiError) as caught:
        client.jobs()
    assert len(calls) == 4  # the first attempt and 3 retries
    assert caught.value.status_code is None and "cannot reach the API" in str(caught.value)
    assert len(client.sleeps) == 3  # type: ignore[attr-defined]
    assert all(0 <= s <= 10 for s in client.sleeps)  # type: ignore[attr-defined]


def test_a_flaky_server_is_retried_until_it_answers():
    answers = iter(
        [
            httpx.Response(503, json={"detail": "starting"}),
            httpx.Response(502, text="bad gateway"),
            httpx.Response(200, json=[WORKER]),
        ]
    )
    handler, calls = counting(lambda r: next(answers))
    with make(handler) as client:
        assert client.workers()[0].id == "w1"
    assert len(calls) == 3 and len(client.sleeps) == 2  # type: ignore[attr-defined]


def test_503_forever_stops_after_the_retries_with_the_servers_message():
    handler, calls = counting(lambda r: httpx.Response(503, json={"detail": "db down"}))
    with make(handler, retries=2) as client, pytest.raises(ApiError) as caught:
        client.job(1)
    assert len(calls) == 3
    assert (caught.value.status_code, caught.value.detail) == (503, "db down")


def test_read_errors_are_retried_for_idempotent_requests():
    answers = iter([httpx.ReadError("reset"), httpx.RemoteProtocolError("eof")])

    def answer(request: httpx.Request) -> httpx.Response:
        err = next(answers, None)
        if err is not None:
            raise err
        return httpx.Response(200, json=WORKLOAD_VIEW)

    handler, calls = counting(answer)
    with make(handler) as client:
        assert client.register_workload({}).key == "abc"
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429])
def test_4xx_is_never_retried(status):
    handler, calls = counting(lambda r: httpx.Response(status, json={"detail": "no"}))
    with make(handler) as client, pytest.raises(ApiError):
        client.register_workload({})
    assert len(calls) == 1 and client.sleeps == []  # type: ignore[attr-defined]


def test_job_submission_is_not_retried_once_it_may_have_arrived():
    def read_error(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    for answer in (read_error, lambda r: httpx.Response(503, json={"detail": "busy"})):
        handler, calls = counting(answer)
        with make(handler) as client, pytest.raises(ApiError):
            client.submit_job([KEY], target="llvm/x86-64/2c/256b")
        assert calls == ["POST /v1/jobs"]


def test_job_submission_is_retried_when_no_connection_was_made():
    answers = iter([refuse, refuse, lambda r: httpx.Response(201, json=job_doc("queued", 0))])
    handler, calls = counting(lambda r: next(answers)(r))
    with make(handler) as client:
        assert client.submit_job([KEY], device_key="dev-a").id == 42
    assert len(calls) == 3


def test_health_probes_answer_at_once():
    handler, calls = counting(refuse)
    with make(handler) as client:
        assert client.healthz() is False
    assert len(calls) == 1
    not_ready = {"database": "ok", "broker": "down"}
    with make(lambda r: httpx.Response(503, json=not_ready)) as client:
        assert client.readyz() == not_ready


# Tokens


def test_bearer_token_is_sent_and_absent_without_one():
    headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return httpx.Response(200, json=[])

    with make(handler, token="abc") as client:
        client.jobs()
    with make(handler, token=None) as client:
        client.jobs()
    assert headers == ["Bearer abc", None]


def test_token_comes_from_settings_then_data_dir(settings, monkeypatch):
    (settings.data_dir / "token").write_text("from-file\n")
    assert make(lambda r: httpx.Response(200)).token == "t0k"  # explicit wins
    assert make(lambda r: httpx.Response(200), token=None).token == "from-file"
    with_env = settings.model_copy(update={"api_token": SecretStr("from-env")})
    monkeypatch.setattr("autosched.client.get_settings", lambda: with_env)
    assert make(lambda r: httpx.Response(200), token=None).token == "from-env"


# Waiting for a job


def test_wait_for_job_polls_until_terminal_and_reports_each_poll():
    states = iter([("queued", 0), ("running", 8), ("succeeded", 16)])
    seen: list[str] = []
    with make(lambda r: httpx.Response(200, json=detail_doc(*next(states)))) as client:
        final = client.wait_for_job(42, poll_s=0.5, on_update=lambda d: seen.append(d.state))
    assert final.state == "succeeded" and final.trials_done == 16
    assert seen == ["queued", "running", "succeeded"]
    assert client.sleeps == [0.5, 0.5]  # type: ignore[attr-defined]


def test_wait_for_job_times_out():
    with (
        make(lambda r: httpx.Response(200, json=detail_doc())) as client,
        pytest.raises(TimeoutError, match="still running"),
    ):
        client.wait_for_job(42, timeout=0)


# Using a fetched schedule locally


def test_apply_and_build_a_fetched_schedule_matches_numpy(matmul, static_view):
    import tvm

    sch = apply_schedule(matmul, static_view)
    assert "T.parallel" in sch.mod.script()
    executable = build_schedule(matmul, static_view)
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(-1, 1, (64, 64)).astype("float32") for _ in range(2))
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((64, 64), "float32"), dev)
    executable.mod["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_a_schedule_for_another_workload_is_refused(matmul, static_view):
    other = static_view.model_copy(update={"workload_key": "0" * 16})
    with pytest.raises(ConfigError, match="not " + matmul.key):
        apply_schedule(matmul, other)


def test_trace_prints_one_readable_line_per_instruction(static_view):
    trace = static_view.trace
    lines = format_trace(trace)
    assert lines == format_trace({"insts": trace[0], "decisions": trace[1]})
    assert len(lines) == len(trace[0])
    assert lines[0] == "b0 = sch.get_sblock('C', 'main')"
    assert any(line.startswith("sch.parallel(") for line in lines)
    assert any("sch.split(" in line and "True, False" in line for line in lines)
    assert all("nodes" not in line for line in lines)  # serialized IndexMaps are abbreviated
    decided = [["SamplePerfectTile", ["l0"], [2, 64], ["v1", "v2"]]], [[0, [4, 16]]]
    assert format_trace(list(decided)) == [
        "v1, v2 = sch.sample_perfect_tile(l0, 2, 64)  # decision: [4, 16]"
    ]


# The CLI, with its client's transport mocked


class FakeApi:
    """Answers the routes the CLI uses; records the requests it got."""

    def __init__(self, view: ScheduleView | None = None, final: str = "succeeded") -> None:
        self.requests: list[httpx.Request] = []
        self.view = view
        self.polls = iter([("running", 4), ("running", 8), (final, 16)])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = (request.method, request.url.path)
        if route == ("POST", "/v1/jobs"):
            return httpx.Response(201, json=job_doc("queued", 0))
        if route == ("GET", "/v1/jobs"):
            return httpx.Response(200, json=[job_doc()])
        if route == ("GET", "/v1/jobs/42"):
            return httpx.Response(200, json=detail_doc(*next(self.polls)))
        if route == ("POST", "/v1/schedules/lookup") and self.view is not None:
            return httpx.Response(200, json=self.view.model_dump(mode="json"))
        if route == ("GET", "/v1/workers"):
            return httpx.Response(200, json=[WORKER])
        if route == ("POST", "/v1/tokens"):
            return httpx.Response(201, json=TOKEN)
        return httpx.Response(404, json={"detail": f"no route {route}"})

    def body(self) -> Any:
        return json.loads(self.requests[-1].content)


@pytest.fixture
def run_cli(monkeypatch) -> Callable[..., Any]:
    def run(api: Handler, *args: str):
        def factory(url: str | None = None, token: str | None = None) -> Client:
            client = Client(url, token, transport=httpx.MockTransport(api))
            client.sleep = lambda s: None
            return client

        monkeypatch.setattr(client_commands, "make_client", factory)
        return CliRunner().invoke(cli.app, list(args))

    return run


@pytest.fixture
def workload_file(tmp_path, matmul):
    path = tmp_path / "mm.json"
    path.write_text(json.dumps(matmul.to_json()))
    return path


def test_cli_submit_prints_the_job_id(run_cli, workload_file, matmul):
    api = FakeApi()
    result = run_cli(
        api,
        "--token",
        "abc",
        "submit",
        str(workload_file),
        "--trials",
        "8",
        "--target",
        "llvm/x86-64/2c/256b",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "42\n"
    assert api.requests[0].headers["authorization"] == "Bearer abc"
    sent = api.body()
    assert (sent["trials"], sent["target"], sent["workloads"]) == (
        8,
        "llvm/x86-64/2c/256b",
        [matmul.to_json()],
    )


def test_cli_submit_defaults_to_this_machines_target(run_cli, workload_file):
    from autosched.hardware import detect_hardware

    api = FakeApi()
    assert run_cli(api, "submit", str(workload_file)).exit_code == 0
    assert api.body()["target"] == detect_hardware().target_key
    refused = run_cli(api, "submit", str(workload_file), "--target", "t", "--device-key", "d")
    assert refused.exit_code == 2


@pytest.mark.parametrize(("final", "code"), [("succeeded", 0), ("failed", 1)])
def test_cli_submit_watch_follows_the_job_to_its_end(run_cli, workload_file, final, code):
    result = run_cli(FakeApi(final=final), "submit", str(workload_file), "--watch")
    assert result.exit_code == code, result.output
    assert result.stdout.startswith("42\n")
    assert f"job 42 {final}: 16/16 trials" in result.stdout
    assert "speedup over static 2.00x" in result.stdout


def test_cli_watch_prints_a_summary(run_cli):
    result = run_cli(FakeApi(), "watch", "42")
    assert result.exit_code == 0, result.output
    assert "best 5.2 GFLOP/s" in result.stdout and "build_error 1" in result.stdout
    assert "0.2000 ms" in result.stdout  # the workload's static latency


def test_cli_jobs_table(run_cli):
    result = run_cli(FakeApi(), "jobs", "--state", "running")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if " 42 " in line)
    for cell in ("running", "mm", "dev-a", "8/16", "5.2", "2.00", "5m"):
        assert cell in row


def test_cli_workers_table(run_cli):
    result = run_cli(FakeApi(), "workers")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if " w1 " in line)
    for cell in ("dev-a", "online", "box", "3", "10"):
        assert cell in row


def test_cli_fetch_prints_and_builds(run_cli, workload_file, static_view, tmp_path):
    out = tmp_path / "mm.so"
    result = run_cli(
        FakeApi(static_view),
        "fetch",
        str(workload_file),
        "--target",
        "llvm/x86-64/2c/256b",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "source static" in result.stdout
    assert "C: " in result.stdout  # the config, one line per stage
    assert "b0 = sch.get_sblock('C', 'main')" in result.stdout
    assert out.stat().st_size > 0


def test_cli_token_create_prints_the_token_once(run_cli):
    api = FakeApi()
    result = run_cli(api, "--token", "adm", "token", "create", "ci", "--scope", "submit")
    assert result.exit_code == 0, result.output
    assert result.stdout == "secret-value\n"
    assert api.body() == {"name": "ci", "scopes": ["submit"], "device_keys": []}

    worker = run_cli(
        api, "--token", "adm", "token", "create", "w", "--scope", "worker", "--device-key", "cpu-a"
    )
    assert worker.exit_code == 0, worker.output
    assert api.body() == {"name": "w", "scopes": ["worker"], "device_keys": ["cpu-a"]}


def test_cli_errors_are_one_red_line(run_cli, workload_file):
    def invalid(request: httpx.Request) -> httpx.Response:
        detail = [{"loc": ["body", "trials"], "msg": "Input should be <= 100000"}]
        return httpx.Response(422, json={"detail": detail})

    for api, expected in (
        (FakeApi(), "no route ('POST', '/v1/schedules/lookup')"),
        (invalid, "trials: Input should be <= 100000"),
        (refuse, "cannot reach the API at http://api.test"),
    ):
        result = run_cli(api, "fetch", str(workload_file))
        assert result.exit_code == 1
        assert "error:" in result.stdout and expected in result.stdout
        assert result.exception is None or isinstance(result.exception, SystemExit)
