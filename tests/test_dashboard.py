"""The dashboard's pages and JSON views, rendered by the app on both databases: each page
shows the rows in the database; reads follow the API's auth rules; static files are served
and nothing points at an outside host. (Browser tests: test_dashboard_browser.py.)"""

from __future__ import annotations

import html
import json
import re

import pytest

from autosched import vocabulary
from autosched.client import format_trace
from autosched.service.tokens import create_token
from services.api.dashboard.routes import FAILURES, OTHER_FAILURE, STATIC_DIR, TEMPLATES_DIR
from tests.api_support import HASWELL, api_client, db, host_hardware
from tests.dashboard_support import seed_job


def _text(page: str) -> str:
    """Visible text, roughly: tags dropped, entities decoded, whitespace squeezed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _block(page: str, pattern: str) -> str:
    """The first match of ``pattern`` (across lines) in ``page``; the test fails without one."""
    match = re.search(pattern, page, re.S)
    assert match, pattern
    return match.group(0)


@pytest.fixture
def client_and_seed(db_url, tmp_path):
    with api_client(db_url, tmp_path) as client:
        seeded = seed_job(client, db_url, host_hardware(client).target_key)
        yield client, seeded


def test_jobs_page(client_and_seed):
    client, s = client_and_seed
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    row = _block(r.text, rf'<tr data-job="{s.job_id}".*?</tr>')  # the job is listed
    text = _text(row)
    assert f"#{s.job_id}" in text and "running" in text
    assert s.workload_name in text and s.workload_key[:12] in text and s.device_key in text
    assert "5 / 8" in text and "2 failed" in text  # done / total, failures
    assert '<progress class="progress" max="8" value="5">62.5%</progress>' in row
    assert f"{s.flops / 1e-3 / 1e9:,.1f}" in text  # best GFLOP/s
    assert "2.00×" in text  # static 2 ms over best 1 ms
    assert re.search(r'<time datetime="[^"]+" data-rel>', row)  # age

    running = client.get("/", params={"state": "running"}).text
    assert f'data-job="{s.job_id}"' in running
    assert f'data-job="{s.job_id}"' not in client.get("/", params={"state": "queued"}).text
    assert client.get("/", params={"state": "bogus"}).status_code == 422

    partial = client.get("/", params={"partial": 1})
    assert partial.status_code == 200 and "<html" not in partial.text
    assert 'data-live="jobs"' in partial.text and f'data-job="{s.job_id}"' in partial.text


def test_job_page(client_and_seed):
    client, s = client_and_seed
    r = client.get(f"/jobs/{s.job_id}")
    assert r.status_code == 200
    page, text = r.text, _text(r.text)
    assert f"Job #{s.job_id}" in text and s.device_key in text and s.target_key in text
    assert 'id="cancel-btn"' in page  # running: cancellable
    # Summary cards and the workload table.
    assert re.search(r'id="trials-done">5</span>', page)
    assert "2.00×" in text and "1.000 ms" in text and "2.000 ms" in text
    # The stages with their meta-template.
    assert "complex_reduction" in text and "<code>C</code>" in page
    # The best config and its trace as Python lines.
    assert "tile_j" in text and "0.27.0" in text and s.worker_id in text
    lines = format_trace(s.trace)
    assert lines and all(line in html.unescape(page) for line in lines)
    # The trial table: numbers as on the curve, errors by kind with their message.
    assert "build error" in text and "run timeout" in text
    assert "RuntimeError: vectorize failed: <stage C> & extent 7" in text  # last line, escaped
    assert "<stage C>" not in page  # escaped, not markup
    assert "run timed out after 10 s" in text
    assert f'data-trial="{s.trial_ids["running"]}"' in page
    # The curve's data rides along for the chart, and the chart library is local.
    assert '<script type="application/json" id="job-data">' in page
    assert '"best_gflops"' in page and "/static/vendor/chart.umd.min.js" in page

    partial = client.get(f"/jobs/{s.job_id}", params={"partial": 1}).text
    for region in ("head", "summary", "workloads", "stages", "best", "trials"):
        assert f'data-live="{region}"' in partial
    assert "<html" not in partial and "chart.umd" not in partial

    missing = client.get("/jobs/987654321")
    assert missing.status_code == 404 and "no job with id 987654321" in missing.text
    assert client.get("/jobs/987654321", params={"partial": 1}).status_code == 404


def test_farm_page(client_and_seed):
    client, s = client_and_seed
    r = client.get("/farm")
    assert r.status_code == 200
    text = _text(
        _block(r.text, rf'<section class="panel device" data-device="{s.device_key}".*?</section>')
    )
    assert "1 / 1 online" in text and "queue 2" in text  # one running, one queued
    # The worker's own target key, derived from the hardware it reported.
    assert "dash-host" in text and HASWELL.target_key in text and "online" in text
    assert "2 cores" in text and "256-bit SIMD" in text and "L2 512 KiB" in text
    # Trials, trials/min (a worker younger than the window: over its first minute), errors, rate.
    assert "5 5.0 2 40.0%" in text
    assert "<html" not in client.get("/farm", params={"partial": 1}).text


def test_schedules_page(client_and_seed):
    client, s = client_and_seed
    r = client.get("/schedules")
    assert r.status_code == 200
    block = _block(r.text, rf'<div class="schedule" data-workload="{s.workload_key}".*?</details>')
    text = _text(block)
    assert s.target_key in text and "1.000 ms" in text
    assert s.worker_id in text and s.device_key in text and "TVM 0.27.0" in text
    assert f"job #{s.job_id}" in text
    base = "http://testserver"
    assert f"autosched --url {base} fetch {s.workload_name}.json --target {s.target_key}" in text
    assert f"curl -s '{base}/v1/schedules/{s.workload_key}?target={s.target_key}'" in text
    assert "\n".join(format_trace(s.trace)) in html.unescape(block)
    assert s.workload_name in _text(r.text)


def test_trials_and_schedules_json(client_and_seed):
    client, s = client_and_seed
    page = client.get(f"/v1/jobs/{s.job_id}/trials").json()
    assert page["total"] == 7
    trials = page["trials"]
    assert [t["number"] for t in trials] == [1, 2, 3, 4, 5, None, None]
    assert [t["state"] for t in trials[-2:]] == ["running", "queued"]
    by_id = {t["id"]: t for t in trials}
    failed = by_id[s.trial_ids["build_error"]]
    assert failed["status"] == "build_error" and "vectorize failed" in failed["error"]
    assert failed["gflops"] is None and failed["worker_id"] == s.worker_id
    best = by_id[s.trial_ids["best"]]
    assert best["gflops"] == pytest.approx(s.flops / 1e-3 / 1e9)
    # Numbered as the curve: same order, same count.
    job = client.get(f"/v1/jobs/{s.job_id}").json()
    assert [p["status"] for p in job["curve"]] == [t["status"] for t in trials[:5]]
    # The speedup the pages show is the job's own field: static 2 ms over best 1 ms.
    assert job["static_latency"] == pytest.approx(2e-3)
    assert job["speedup_over_static"] == pytest.approx(2.0)
    newest = client.get(f"/v1/jobs/{s.job_id}/trials", params={"limit": 2}).json()
    assert newest["total"] == 7 and [t["state"] for t in newest["trials"]] == ["running", "queued"]
    assert client.get("/v1/jobs/987654321/trials").status_code == 404
    assert client.get(f"/v1/jobs/{s.job_id}/trials", params={"limit": 0}).status_code == 422

    listed = client.get("/v1/schedules", params={"workload_key": s.workload_key}).json()
    assert len(listed) == 1
    one = listed[0]
    assert one["target_key"] == s.target_key and one["latency"] == pytest.approx(1e-3)
    assert one["job_id"] == s.job_id and one["trial_id"] == s.trial_ids["best"]
    assert one["workload_name"] == s.workload_name and one["tvm_version"] == "0.27.0"
    assert s.workload_key in [x["workload_key"] for x in client.get("/v1/schedules").json()]
    params = {"workload_key": s.workload_key, "target": "llvm/other/1c/128b"}
    other = client.get("/v1/schedules", params=params)
    assert other.json() == []


def test_reads_follow_auth_rules(db_url, tmp_path):
    with db(db_url) as session:
        admin = create_token(session, "dash-admin", ["admin"]).token
    auth = {"Authorization": f"Bearer {admin}"}
    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=False) as client:
        s = seed_job(client, db_url, host_hardware(client).target_key, headers=auth)
        for path in ("/", f"/jobs/{s.job_id}", "/farm", "/schedules"):
            shell = client.get(path)
            # A shell: it renders, shows no data, and says a token is needed.
            assert shell.status_code == 200, path
            assert "anonymous reads are off" in shell.text
            assert s.workload_name not in shell.text and s.device_key not in shell.text
            refused = client.get(path, params={"partial": 1})
            assert refused.status_code == 401 and "token" in refused.json()["detail"]
            bad = client.get(path, params={"partial": 1}, headers={"Authorization": "Bearer x"})
            assert bad.status_code == 401
            full = client.get(path, params={"partial": 1}, headers=auth)
            assert full.status_code == 200 and s.device_key in full.text, path
        assert client.get(f"/v1/jobs/{s.job_id}/trials").status_code == 401
        assert client.get("/v1/schedules").status_code == 401
        assert client.get("/v1/schedules", headers=auth).status_code == 200
        schedules = client.get("/schedules", params={"partial": 1}, headers=auth).text
        assert "Authorization: Bearer $AUTOSCHED_API_TOKEN" in html.unescape(schedules)
    with api_client(db_url, tmp_path, auth_required=True, anonymous_reads=True) as client:
        page = client.get(f"/jobs/{s.job_id}")
        assert page.status_code == 200 and s.device_key in page.text
        assert "anonymous reads are off" not in page.text
        # Anonymous readers get the API's redacted views: no worker ids (they name hosts)
        # nor host names, no error texts; statuses stay. A token shows them.
        for path in (f"/jobs/{s.job_id}", "/farm", "/schedules"):
            anonymous = client.get(path).text
            assert s.worker_id not in anonymous and "dash-host" not in anonymous, path
            assert s.worker_id in client.get(path, headers=auth).text, path
        assert "vectorize failed" not in page.text and "build error" in page.text
        assert "vectorize failed" in client.get(f"/jobs/{s.job_id}", headers=auth).text
        assert client.get(f"/v1/jobs/{s.job_id}/trials").status_code == 200
        # A token sent anyway must be valid, as for the API.
        assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_empty_pages(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        assert "No jobs." in client.get("/").text
        assert "No workers registered" in client.get("/farm").text
        assert "No tuned schedule yet" in client.get("/schedules").text
        queued = seed_job(client, sqlite_url, host_hardware(client).target_key, with_results=False)
        page = client.get(f"/jobs/{queued.job_id}").text
        assert "No trials yet: the job is waiting for the scheduler" in page
        assert "No verified schedule yet" in page


def test_static_assets(sqlite_url, tmp_path):
    with api_client(sqlite_url, tmp_path) as client:
        page = client.get("/").text
        for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            r = client.get(src)
            assert r.status_code == 200, src
        css = client.get("/static/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        lib = client.get("/static/vendor/chart.umd.min.js")
        assert lib.status_code == 200 and "Chart.js v4." in lib.text[:200]
        assert client.get("/static/job.js").status_code == 200
        assert client.get("/static/nope.js").status_code == 404
    assert (STATIC_DIR / "vendor" / "chart.js.LICENSE.md").read_text().startswith("The MIT")


URL = re.compile(r"https?://[^\s\"'<>)]+")


def test_no_external_urls():
    """Nothing is fetched from the internet: no URL to another host in our templates and
    static files; the vendored library may name its homepage, in comments only."""
    files = sorted(p for p in [*TEMPLATES_DIR.rglob("*"), *STATIC_DIR.rglob("*")] if p.is_file())
    assert len(files) > 10
    for path in files:
        if path.suffix not in {".html", ".js", ".css", ".md", ".json", ".svg"}:
            pytest.fail(f"unexpected file type in the dashboard: {path}")
        if path.suffix == ".md":
            continue  # licence text
        text = path.read_text()
        vendored = "vendor" in path.parts
        comments = [m.span() for m in re.finditer(r"/\*.*?\*/", text, re.S)] if vendored else []
        for match in URL.finditer(text):
            inside = any(a <= match.start() < b for a, b in comments)
            assert inside, f"{path.relative_to(STATIC_DIR.parent)}: {match.group(0)}"


def test_no_inline_styles_or_scripts():
    """The pages run under a Content-Security-Policy without 'unsafe-inline': no style
    attributes, <style> blocks, event-handler attributes or inline scripts (JSON data blocks
    are not scripts)."""
    for path in sorted(TEMPLATES_DIR.glob("*.html")):
        text = path.read_text()
        assert not re.search(r"\sstyle\s*=", text), path.name
        assert "<style" not in text, path.name
        for tag in re.findall(r"<[a-zA-Z][^>]*>", text):
            assert not re.search(r"\son[a-z]+\s*=", tag), (path.name, tag)
        for script in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, re.S):
            attrs, body = script.groups()
            assert "src=" in attrs or 'type="application/json"' in attrs, (path.name, attrs)
            assert "src=" not in attrs or not body.strip(), path.name


def test_pages_carry_the_vocabulary_for_their_scripts(sqlite_url, tmp_path):
    """Job, trial and worker states reach the scripts as JSON data in every page, from
    autosched.vocabulary; job.js keeps no copy of the terminal states."""
    with api_client(sqlite_url, tmp_path) as client:
        for path in ("/", "/farm", "/schedules", "/jobs/987654321"):
            page = client.get(path).text
            data = re.search(
                r'<script type="application/json" id="autosched-vocabulary">(.*?)</script>', page
            )
            assert data and json.loads(html.unescape(data.group(1))) == vocabulary.as_json(), path
    job_js = (STATIC_DIR / "job.js").read_text()
    assert "autosched.vocabulary.terminal_job_states" in job_js and '"succeeded"' not in job_js


def test_failure_colours_match_the_chart():
    """The tables colour failures by CSS class; the chart by FAILURES: the same colours."""
    css = (STATIC_DIR / "dashboard.css").read_text()
    kinds = {**FAILURES, "other": OTHER_FAILURE}
    for kind, style in kinds.items():
        rule = re.search(rf"\.fk-{kind} {{ --c: (#[0-9a-f]+); }}", css)
        assert rule and rule.group(1) == style["color"], kind


def test_failure_chips_use_classes(client_and_seed):
    client, s = client_and_seed
    page = client.get(f"/jobs/{s.job_id}").text
    assert '<span class="chip fk-build_error">build error 1</span>' in page
    assert '<span class="status fail fk-run_timeout">run timeout</span>' in page
