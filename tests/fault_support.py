"""Private, restartable PostgreSQL and Redis servers for fault-injection tests.

The machine's own servers (``tests/conftest.py``) are shared by every test run, so a test
that restarts, stops or kills a server starts its own: ``PrivatePostgres`` (a throwaway
cluster made by ``initdb``, run as the ``postgres`` user because initdb refuses root) and
``PrivateRedis``, each on a free loopback port that it keeps across restarts, with
``start()``, ``stop()``, ``restart()``, ``kill()`` and ``url``. Both are context managers
whose exit kills the server and removes its files whatever the test did; the session
fixtures ``private_pg`` and ``private_redis`` (``tests/conftest.py``) start one of each at
most once per run. What a fault test checks at its end is in ``tests/fault_outcome.py``.
Nothing here imports TVM.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

PG_USER = "postgres"


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]  # the newest major version installed


def _as_postgres(argv: list[str]) -> list[str]:
    """Run ``argv`` as the postgres user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


class _PrivateServer(ABC):
    """A server a test owns: ``with`` starts it, and removes it (``close``) on the way out,
    also when starting failed half-way."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivatePostgres(_PrivateServer):
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port``, trust auth, no fsync."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="autosched-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, PG_USER, PG_USER)
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip

    @property
    def url(self) -> str:
        """The admin URL (database ``postgres``); ``create_database`` makes fresh ones."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database on this cluster; returns its URL."""
        name = name or f"fault_{uuid.uuid4().hex[:10]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            _as_postgres(list(argv)), capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}\n{log}"
            )

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the cluster (no-op if it runs) and wait until it accepts connections."""
        if self.running:
            return
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        _wait(lambda: _accepts(self.port), 30, f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop it: ``fast`` (clients disconnected, clean shutdown) or ``immediate`` (like a
        crash: recovery on the next start)."""
        if self.running:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit when they notice)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: not self.running, 30, "the killed postmaster to go")

    def close(self) -> None:
        """Stop at once (kill if that fails) and remove every file."""
        try:
            self.stop("immediate")
        except Exception:
            self.kill()
        finally:
            if self.running:
                self.kill()
            shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis(_PrivateServer):
    """A ``redis-server`` on 127.0.0.1:``port`` in its own directory; ``persistence`` turns
    on the append-only file (fsync on every write), so a restart keeps its queues."""

    def __init__(
        self, port: int | None = None, *, persistence: bool = False, password: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.persistence = persistence
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="autosched-redis-"))
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cli(self, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *auth, *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return out.stdout.strip()

    def start(self) -> None:
        """Start the server (no-op if it runs) and wait until it answers PING."""
        if self.running:
            return
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), "--logfile", str(self.log), "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistence else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(lambda: not self.running or self.cli("ping") == "PONG", 30, "Redis to answer")
        except RuntimeError:
            self.kill()
            raise
        if not self.running:
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise RuntimeError(f"redis-server exited at start: {err}")

    def stop(self, *, save: bool = False) -> None:
        """``SHUTDOWN NOSAVE`` (what the queues lose without persistence) or ``SAVE``."""
        if not self.running:
            return
        self.cli("shutdown", "save" if save else "nosave")
        try:
            assert self.process is not None
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, *, save: bool = False) -> None:
        self.stop(save=save)
        self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self.process is not None and self.process.stderr:
                self.process.stderr.close()
            shutil.rmtree(self.root, ignore_errors=True)


def _released(barrier: Any, results: Any, target: Callable[..., Any], args: tuple) -> None:
    barrier.wait(timeout=120)
    results.put(target(*args))


def start_together(
    target: Callable[..., Any], calls: list[tuple], timeout: float = 120
) -> tuple[list[int | None], list[Any]]:
    """Run ``target(*args)`` for each ``args`` in a process of its own (spawned, so nothing
    is inherited), all released by one barrier at the same instant: two migrators or two
    schedulers started at once. Returns the exit codes (in order) and the return values
    (in completion order; a process that raised returns none and exits 1)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(calls)), ctx.Queue()
    procs = [ctx.Process(target=_released, args=(barrier, results, target, a)) for a in calls]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    values = []
    while True:
        try:
            values.append(results.get(timeout=0.5))
        except Exception:  # queue.Empty: every value read
            break
    return [proc.exitcode for proc in procs], values
