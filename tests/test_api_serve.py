"""``python -m services.api.app`` as operators run it: with ``AUTOSCHED_API_WORKERS=2`` uvicorn
serves from two processes, each one the whole app, and each one's kept schedule answers
give way to a newly published best config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from autosched.service.tokens import create_token
from tests.api_support import db, known_device, matmul
from tests.fault_support import free_port
from tests.schedule_support import publish_best


@contextmanager
def serving(data_dir: Path, api_workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The API on its embedded SQLite database under ``data_dir``: its URL and process."""
    port = free_port()
    env = dict(os.environ, AUTOSCHED_DATA_DIR=str(data_dir), AUTOSCHED_API_PORT=str(port))
    env["AUTOSCHED_API_WORKERS"] = str(api_workers)
    for name in ("DATABASE_URL", "REDIS_URL", "AUTOSCHED_DATABASE_URL", "AUTOSCHED_REDIS_URL"):
        env.pop(name, None)
    log_path = data_dir / "api.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.api.app"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ok = time.monotonic() + 120, False
        while time.monotonic() < deadline and not ok:
            try:
                ok = httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ok, log_path.read_text()[-2000:]
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_two_api_workers_serve_requests(tmp_path) -> None:
    with serving(tmp_path, api_workers=2) as (url, proc):
        for _ in range(20):  # either process answers the same app
            assert httpx.get(f"{url}/v1/workers", timeout=5).status_code == 200
        # uvicorn's supervisor spawns the workers (multiprocessing); template sandboxes are
        # the workers' own children, not counted here.
        children = psutil.Process(proc.pid).children()
        servers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(servers) == 2, [c.cmdline() for c in children]


def test_every_api_process_serves_a_new_best_at_once(tmp_path) -> None:
    """Each process keeps its answers; a best config published in the database is in every
    answer after it, whichever process gives it, and old ETags no longer match."""
    with serving(tmp_path, api_workers=2) as (url, _proc):
        db_url = f"sqlite:///{tmp_path / 'autosched.db'}"
        with db(db_url) as session:
            auth = {"Authorization": f"Bearer {create_token(session, 't', ['admin']).token}"}
        doc, _ = matmul()
        with httpx.Client(base_url=url, timeout=120) as client:
            key = client.post("/v1/workloads", json=doc, headers=auth).json()["key"]
            job = client.post(
                "/v1/jobs",
                json={"workload_keys": [key], "device_key": known_device(db_url)},
                headers=auth,
            )
            assert job.status_code == 201, job.text
            target = client.get(f"/v1/schedules/{key}").json()["target_key"]

        def fetch_many() -> list[httpx.Response]:
            # A new connection each: the processes share the listening socket.
            return [httpx.get(f"{url}/v1/schedules/{key}", timeout=30) for _ in range(30)]

        old_etags: set[str] = set()
        for latency in (3e-5, 2e-5):
            publish_best(db_url, job.json()["id"], key, target, latency)
            answers = fetch_many()
            assert [r.json()["latency"] for r in answers] == [pytest.approx(latency)] * 30
            etags = {r.headers["etag"] for r in answers}
            assert len(etags) == 1 and not etags & old_etags
            revalidated = httpx.get(
                f"{url}/v1/schedules/{key}", headers={"If-None-Match": etags.pop()}, timeout=30
            )
            assert revalidated.status_code == 304
            old_etags |= {r.headers["etag"] for r in answers}
