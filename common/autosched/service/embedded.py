"""``autosched up``: the whole service on one machine, as child processes.

API (uvicorn), scheduler and one CPU worker per requested device share one database and one
broker. With no ``DATABASE_URL``/``REDIS_URL`` those are a SQLite file and kombu's SQLite
transport under ``data_dir`` (no server to install); with both set, the same processes use
PostgreSQL and Redis. Each child logs to ``data_dir/logs/<name>.log``; a child that dies is
restarted, and stopping ``up`` (Ctrl-C, SIGTERM) stops them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autosched.settings import Settings

TOKEN_FILE = "token"


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self, env: dict[str, str]) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_local_token(settings: Settings) -> str:
    """The embedded service's admin token, created once and kept in ``data_dir/token``
    (mode 600) where the client and CLI find it."""
    from autosched.db import session_factory, session_scope
    from autosched.service.tokens import create_token

    path = settings.data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        created = create_token(session, "local-admin", ["admin", "submit", "worker"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(created.token + "\n")
    return created.token


@dataclass
class EmbeddedService:
    settings: Settings
    device_keys: list[str | None] = field(default_factory=lambda: [None])
    #: more workers, each by its ``workers.main`` arguments (``["--device", "cuda:0"]``)
    worker_args: list[list[str]] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["AUTOSCHED_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["AUTOSCHED_API_HOST"] = self.settings.api_host
        env["AUTOSCHED_API_PORT"] = str(self.settings.api_port)
        env["AUTOSCHED_API_URL"] = self.url
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        if self.settings.redis_url:
            env["REDIS_URL"] = self.settings.redis_url
        env.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
        return env

    def start(self, ready_timeout: float = 120.0) -> str:
        from autosched.db.migrate import require_schema

        data_dir = self.settings.data_dir.resolve()
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # Migrated once, under the lock, before the children start (or a clear exit).
        require_schema(self.settings.resolved_database_url, self.settings, migrate=True)
        token = ensure_local_token(self.settings)
        py = sys.executable
        # The children are the process entry points (``python -m``) of ``services`` and
        # ``workers``, named here as strings: run, never imported by the library.
        self.children = [
            # serve(): uvicorn on AUTOSCHED_API_HOST/PORT, its lines in the service's format.
            Child("api", [py, "-m", "services.api.app"], logs / "api.log"),
            Child("scheduler", [py, "-m", "services.scheduler.main"], logs / "scheduler.log"),
        ]  # fmt: skip
        tails = [["--device-key", key] if key else [] for key in self.device_keys]
        for i, tail in enumerate(tails + self.worker_args):
            argv = [py, "-m", "workers.main", *tail]
            self.children.append(Child(f"worker-{i}", argv, logs / f"worker-{i}.log"))
        env = self._env()
        for child in self.children:
            child.start(env)
        self._wait_ready(ready_timeout, token)
        return self.url

    def _wait_ready(self, timeout: float, token: str) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            dead = [c for c in self.children if not c.alive()]
            if dead:
                self.stop()
                names = ", ".join(f"{c.name} (log {c.log_path})" for c in dead)
                raise RuntimeError(f"embedded service failed to start: {names} exited")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if r.status_code == 200 and self._workers_online(token):
                    return
                last = f"/readyz {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as err:
                last = str(err)
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"embedded service not ready after {timeout:.0f}s ({last})")

    def _workers_online(self, token: str) -> bool:
        r = httpx.get(
            f"{self.url}/v1/workers", headers={"Authorization": f"Bearer {token}"}, timeout=2.0
        )
        online = [w for w in r.json() if w.get("state") == "online"] if r.is_success else []
        return len(online) >= len(self.device_keys) + len(self.worker_args)

    def supervise_once(self) -> None:
        """Restart any child that died (the database keeps all state, so nothing is lost)."""
        env = self._env()
        for child in self.children:
            if not child.alive():
                child.restarts += 1
                child.start(env)

    def stop(self) -> None:
        # Workers first (they mark themselves offline), then the scheduler, then the API.
        for child in reversed(self.children):
            child.stop()
