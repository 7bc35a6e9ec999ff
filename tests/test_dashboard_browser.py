"""The dashboard in a real browser (Playwright driving Debian's chromium) against a real
server: uvicorn in a thread on SQLite, with the test playing the scheduler and the workers
(trials written into the database as they would be); the last test runs a real tuning job on
the embedded service (API, scheduler and a worker as processes).

No browser is downloaded: chromium must be installed (``apt-get install chromium``); without
it these tests fail. Screenshots of each page go to the test's tmp_path and to
``/tmp/autosched-screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from autosched.db import Job, upgrade_database
from autosched.db.models import utcnow
from autosched.service.tokens import create_token
from autosched.settings import Settings
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import TERMINAL_JOB_STATES, JobState
from services.api import create_app
from tests.api_support import add_trial, db, matmul
from tests.dashboard_support import register_worker, seed_job
from tests.fault_support import free_port

CHROMIUM = os.environ.get("AUTOSCHED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path("/tmp/autosched-screenshots")
EXPECTED_CONSOLE = re.compile(r"Failed to load resource: .* status of 40[13] ")
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: the dashboard's browser tests need Debian's chromium "
            "(apt-get install chromium) or AUTOSCHED_CHROMIUM pointing at one; "
            "`playwright install` is not used"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    # Console errors: a Content-Security-Policy violation is reported there ("Refused to
    # apply inline style ..."), as is a failed asset. Refusals the tests provoke on purpose
    # (401/403 from the API) are the only ones expected.
    page.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and not EXPECTED_CONSOLE.search(msg.text)
            and errors.append(f"console: {msg.text}")
        ),
    )
    # Every page must be served under the policy, or the check above could never fail.
    unprotected: list[str] = []

    def check_policy(response: Any) -> None:
        if response.request.resource_type == "document":
            policy = response.headers.get("content-security-policy", "")
            if "script-src 'self'" not in policy or "unsafe-inline" in policy:
                unprotected.append(f"{response.url}: {policy!r}")

    page.on("response", check_policy)
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel button's confirm()
    page.set_default_timeout(TIMEOUT_MS)
    # Nothing may leave the machine: a request to any other host fails the test. (Watched,
    # not routed: a routed request waits for Python, and the tests sleep between checks.)
    outside: list[str] = []

    def watch(request: Any) -> None:
        if not request.url.startswith(("http://127.0.0.1:", "data:")):
            outside.append(request.url)

    page.on("request", watch)
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"
    assert not unprotected, f"pages without the Content-Security-Policy: {unprotected}"
    assert not outside, f"requests to other hosts: {outside}"


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


class LiveServer:
    """The API app under uvicorn in a thread (the real HTTP server the browser talks to)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=settings.api_port,
                log_level="warning",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.api_port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[LiveServer, str, str]]:
    """A server requiring tokens for writes, anonymous reads on; its SQLite URL; a token."""
    data = tmp_path_factory.mktemp("dash-live")
    url = f"sqlite:///{data / 'autosched.db'}"
    upgrade_database(url)
    with db(url) as session:
        token = create_token(session, "dash-admin", ["admin"]).token
    settings = Settings(
        database_url=url, data_dir=data, api_port=free_port(), auth_required=True,
        anonymous_reads=True,
    )  # fmt: skip
    with LiveServer(settings) as server:
        yield server, url, token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _trials_done(page: Any) -> int:
    return int(page.locator("#trials-done").inner_text())


def _chart_points(page: Any) -> int:
    return page.evaluate(
        "() => { const c = window.autosched.chart();"
        " return c ? c.data.datasets.reduce((n, d) => n + d.data.length, 0) : 0; }"
    )


def _painted_pixels(page: Any) -> int:
    """Pixels of the curve's canvas that are not blank (a drawn chart has thousands)."""
    return page.evaluate(
        """() => {
            const c = document.getElementById('curve');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
            return n;
        }"""
    )


def test_jobs_live_progress_curve_and_cancel(live, page, tmp_path):
    server, db_url, token = live
    with httpx.Client(base_url=server.url, headers=_bearer(token), timeout=30) as api:
        # The jobs page is open before the job exists: the job appears without a reload.
        page.goto(server.url + "/")
        page.evaluate("window.__notReloaded = true")
        device = f"test-dash-{uuid.uuid4().hex[:8]}"
        worker = register_worker(api, device)
        doc, _ = matmul(name="browser_mm")
        created = api.post("/v1/jobs", json={"workloads": [doc], "device_key": device, "trials": 6})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        key = created.json()["workloads"][0]["workload_key"]
        row = page.locator(f'tr[data-job="{job_id}"]')
        row.wait_for()
        assert "queued" in row.inner_text() and "browser_mm" in row.inner_text()
        assert "0 / 6" in row.locator(".trial-count").inner_text()

        # The scheduler starts it; trials finish one at a time, the list follows.
        target = "llvm/dash/4c/256b"
        with db(db_url) as session:
            job = session.get(Job, job_id)
            job.state, job.target_key, job.started_at = JobState.RUNNING, target, utcnow()
        page.locator(f'tr[data-job="{job_id}"] .badge.st-running').wait_for()
        latencies = [4e-3, None, 2e-3]
        common = {"device_key": device, "target_key": target, "worker_id": worker}

        def finish(i: int) -> None:
            with db(db_url) as session:
                latency = latencies[i % len(latencies)]
                trial = add_trial(
                    session, job_id, key,
                    status=TrialStatus.OK if latency else TrialStatus.BUILD_ERROR,
                    latency=latency, finished_at=utcnow() + timedelta(milliseconds=i), **common,
                )  # fmt: skip
                if latency is None:
                    trial.error = "RuntimeError: cannot vectorize"

        finish(0)
        page.locator(f'tr[data-job="{job_id}"] .trial-count .done', has_text="1").wait_for()
        _shot(page, tmp_path, "jobs")

        # The job page: trials_done grows on the page while "tuning", without a reload.
        row.locator("a.job-link").click()
        page.wait_for_url(f"**/jobs/{job_id}")
        page.evaluate("window.__notReloaded = true")
        assert _trials_done(page) == 1
        seen = [1]
        for i in range(1, 4):
            finish(i)
            page.wait_for_function(
                "n => +document.getElementById('trials-done').textContent >= n", arg=i + 1
            )
            seen.append(_trials_done(page))
        assert seen == [1, 2, 3, 4]
        assert page.evaluate("window.__notReloaded") is True
        # The curve: best-so-far line, trial points and the failure marker, painted.
        page.wait_for_function("() => window.autosched.chart() !== null")
        assert _chart_points(page) >= 4 + 1  # 3 good trials, the line, a build error
        assert _painted_pixels(page) > 2000
        legend = page.evaluate("() => window.autosched.chart().data.datasets.map(d => d.label)")
        assert "best so far" in legend and "build error (1)" in legend
        # Anonymous: the failure's kind shows, its error text (sandbox output) only with a token.
        trials = page.locator('[data-live="trials"]')
        assert "build error" in trials.inner_text()
        assert "RuntimeError: cannot vectorize" not in trials.inner_text()

        # Cancel: refused without a token (the server's message shows), then with a token
        # that lacks the scope, then done with the right one.
        cancel = page.locator("#cancel-btn")
        cancel.click()
        msg = page.locator("#action-msg")
        msg.filter(has_text="401").wait_for()
        assert "a bearer token is required" in msg.inner_text()
        with db(db_url) as session:
            worker_token = create_token(session, "dash-worker", ["worker"]).token
        page.fill("#token-input", worker_token)
        page.click("#token-form button[type=submit]")
        cancel.click()
        msg.filter(has_text="403").wait_for()
        assert "lacks the 'submit' scope" in msg.inner_text()
        page.fill("#token-input", token)
        page.click("#token-form button[type=submit]")
        assert page.evaluate("localStorage.getItem('autosched.token')") == token
        page.locator('[data-live="trials"]', has_text="RuntimeError: cannot vectorize").wait_for()
        cancel.click()
        msg.filter(has_text="Cancel requested").wait_for()
        with db(db_url) as session:
            assert session.get(Job, job_id).cancel_requested
            # The scheduler stops the job after its batch.
            job = session.get(Job, job_id)
            job.state, job.finished_at = JobState.CANCELLED, utcnow()
        page.locator('[data-live="head"] .badge.st-cancelled').wait_for()
        assert page.locator("#cancel-btn").count() == 0
        page.locator("#live-text", has_text="final").wait_for()  # polling stopped
        assert page.evaluate("window.__notReloaded") is True
        _shot(page, tmp_path, "job")

        # A queued job is cancelled at once, from its page, with the saved token.
        queued = api.post("/v1/jobs", json={"workload_keys": [key], "device_key": device}).json()
        page.goto(f"{server.url}/jobs/{queued['id']}")
        page.locator("#cancel-btn").click()
        msg.filter(has_text="Job cancelled").wait_for()
        page.locator('[data-live="head"] .badge.st-cancelled').wait_for()
        with db(db_url) as session:
            assert session.get(Job, queued["id"]).state == JobState.CANCELLED


def test_farm_and_schedules_pages(live, page, tmp_path):
    server, db_url, token = live
    with httpx.Client(base_url=server.url, headers=_bearer(token), timeout=60) as api:
        s = seed_job(api, db_url, _host_target(api), headers=_bearer(token))

        page.goto(server.url + "/farm")
        device = page.locator(f'section[data-device="{s.device_key}"]')
        device.wait_for()
        assert "queue 2" in device.inner_text() and "40.0%" in device.inner_text()
        _shot(page, tmp_path, "farm")

        page.goto(server.url + "/schedules")
        block = page.locator(f'.schedule[data-workload="{s.workload_key}"]')
        block.wait_for()
        assert f"--target {s.target_key}" in block.inner_text()
        # The filter hides other workloads; the trace opens.
        page.fill("#filter", s.workload_name)
        assert block.is_visible()
        page.fill("#filter", "no-such-workload")
        assert not block.is_visible()
        page.fill("#filter", "")
        block.locator("summary").click()
        assert "sch.get_sblock" in block.locator("pre.code").inner_text()
        _shot(page, tmp_path, "schedules")

        # The seeded job's page: stages, best schedule, trials with errors.
        page.goto(f"{server.url}/jobs/{s.job_id}")
        page.wait_for_function("() => window.autosched.chart() !== null")
        assert "complex_reduction" in page.locator('[data-live="stages"]').inner_text()
        assert _painted_pixels(page) > 2000
        _shot(page, tmp_path, "job-seeded")


def test_token_unlocks_reads(page, tmp_path):
    """Anonymous reads off: the page loads as a shell saying so, the poll's 401 shows, and
    saving a token in the page loads the data (without a reload)."""
    url = f"sqlite:///{tmp_path / 'autosched.db'}"
    upgrade_database(url)
    device = f"test-dash-{uuid.uuid4().hex[:8]}"
    with db(url) as session:
        token = create_token(session, "dash-reader", ["submit"]).token
        worker = create_token(session, "dash-worker", ["worker"], [device]).token
    settings = Settings(
        database_url=url, data_dir=tmp_path, api_port=free_port(), auth_required=True,
        anonymous_reads=False,
    )  # fmt: skip
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        register_worker(api, device, **_bearer(worker))  # jobs name a registered device
        doc, _ = matmul(name="locked_mm")
        job = api.post(
            "/v1/jobs", json={"workloads": [doc], "device_key": device}, headers=_bearer(token)
        )
        assert job.status_code == 201, job.text
        page.goto(server.url + "/")
        page.evaluate("window.__notReloaded = true")
        assert "anonymous reads are off" in page.locator('[data-live="jobs"]').inner_text()
        page.locator("#banner", has_text="401").wait_for()
        assert "a bearer token is required" in page.locator("#banner").inner_text()
        page.fill("#token-input", token)
        page.click("#token-form button[type=submit]")
        page.locator(f'tr[data-job="{job.json()["id"]}"]').wait_for()
        assert page.locator("#banner").is_hidden()
        assert page.evaluate("window.__notReloaded") is True
        page.click("#token-forget")  # forgotten: the next poll is refused again
        page.locator("#banner", has_text="401").wait_for()


def test_docs_under_the_policy(live, page, tmp_path):
    """Swagger UI renders every operation under the API's CSP (its start-up is a file, not an
    inline script); the page fixture fails the test on any violation."""
    server, _, _ = live
    page.goto(server.url + "/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() >= 10
    assert "/v1/jobs" in page.locator(".swagger-ui").inner_text()
    _shot(page, tmp_path, "docs")


def test_policy_is_enforced(live, browser):
    """The check the other tests rely on: what the policy forbids is blocked in the browser and
    reported on the console (an inline style, an inline script, a foreign script)."""
    server, _, _ = live
    context = browser.new_context()
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and console.append(msg.text))
    page.goto(server.url + "/")
    page.evaluate(
        """() => {
            const html = '<p id="styled" style="color: red">x</p>';
            document.body.insertAdjacentHTML('beforeend', html);
            const s = document.createElement('script');
            s.textContent = 'window.__inline = true';
            document.body.appendChild(s);
        }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.__inline") is None  # the inline script did not run
    color = page.evaluate("getComputedStyle(document.getElementById('styled')).color")
    assert color != "rgb(255, 0, 0)"
    violations = [m for m in console if "Content Security Policy" in m]
    assert len(violations) >= 2, console
    context.close()


def _host_target(api: httpx.Client) -> str:
    """The server's own target key (the one a static schedule is computed for)."""
    doc, _ = matmul(name="probe")
    made = api.post("/v1/workloads", json=doc)
    assert made.status_code in (200, 201), made.text
    return made.json()["target_key"]


def test_real_tuning_job(page, tmp_path, device_key):
    """The whole service as processes (API, scheduler, a Celery worker; SQLite, no Redis): a
    job submitted through the API shows up in the list, and its page follows the tuning."""
    from autosched.service.embedded import EmbeddedService

    data = tmp_path / "service"
    svc = EmbeddedService(Settings(data_dir=data, api_port=free_port()), [device_key])
    svc.start()
    try:
        token = (data / "token").read_text().strip()
        page.goto(svc.url + "/")
        page.evaluate("window.__notReloaded = true")
        doc, _ = matmul(48, name="e2e_dash_mm")
        with httpx.Client(base_url=svc.url, headers=_bearer(token), timeout=60) as api:
            created = api.post(
                "/v1/jobs",
                json={"workloads": [doc], "device_key": device_key, "trials": 24, "seed": 1},
            )
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            page.locator(f'tr[data-job="{job_id}"]').wait_for()
            assert page.evaluate("window.__notReloaded") is True

            page.goto(f"{svc.url}/jobs/{job_id}")
            # Record every value the page shows, as the live updates swap it in.
            page.evaluate(
                """() => { window.__seen = [];
                setInterval(() => { const el = document.getElementById('trials-done');
                  if (el) window.__seen.push(+el.textContent); }, 100); }"""
            )
            deadline = time.monotonic() + 300
            while True:
                job = api.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in TERMINAL_JOB_STATES:
                    break
                assert time.monotonic() < deadline, f"job still {job['state']}"
                page.wait_for_timeout(500)
            assert job["state"] == "succeeded", job["error"]
            page.locator('[data-live="head"] .badge.st-succeeded').wait_for()
            page.locator("#live-text", has_text="final").wait_for()
            seen = page.evaluate("window.__seen")
            assert _trials_done(page) == 24
            # Progress advanced on the page while tuning, never backwards, without a reload.
            grown = sorted({v for v in seen if 0 < v < 24})
            assert grown, f"no intermediate progress shown: {seen}"
            assert seen == sorted(seen)
            assert page.evaluate("window.__notReloaded") is None  # it was a navigation
            assert _chart_points(page) >= 24
            assert _painted_pixels(page) > 2000
            assert "complex_reduction" in page.locator('[data-live="stages"]').inner_text()
            assert "sch." in page.locator('[data-live="best"] pre.code').inner_text()
            _shot(page, tmp_path, "job-e2e")
            page.goto(svc.url + "/farm")
            page.locator(f'section[data-device="{device_key}"] .badge.st-online').wait_for()
            _shot(page, tmp_path, "farm-e2e")
    finally:
        # Leave the live page first: its next poll of a stopped server would be a console
        # error (connection refused) that the fixture rightly counts.
        page.goto("about:blank")
        svc.stop()
