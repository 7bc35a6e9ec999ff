"""``python -m services.api.app`` as operators run it: with ``AUTOSCHED_API_WORKERS=2`` uvicorn
serves from two processes, each one the whole app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_api_workers_serve_requests(tmp_path) -> None:
    port = _free_port()
    env = dict(os.environ, AUTOSCHED_DATA_DIR=str(tmp_path), AUTOSCHED_API_PORT=str(port))
    env["AUTOSCHED_API_WORKERS"] = "2"
    for name in ("DATABASE_URL", "REDIS_URL", "AUTOSCHED_DATABASE_URL", "AUTOSCHED_REDIS_URL"):
        env.pop(name, None)
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.api.app"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline, ok = time.monotonic() + 120, False
        while time.monotonic() < deadline and not ok:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ok, (tmp_path / "api.log").read_text()[-2000:]
        for _ in range(20):  # either process answers the same app
            assert httpx.get(f"http://127.0.0.1:{port}/v1/workers", timeout=5).status_code == 200
        # uvicorn's supervisor spawns the workers (multiprocessing); template sandboxes are
        # the workers' own children, not counted here.
        children = psutil.Process(proc.pid).children()
        servers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(servers) == 2, [c.cmdline() for c in children]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
