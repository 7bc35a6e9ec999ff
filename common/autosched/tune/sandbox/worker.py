"""Parent side of a sandbox: ``SandboxWorker`` runs one child and talks to it.

``SandboxWorker`` starts ``python -m autosched.tune.sandbox.child HANDLER`` in its own session
and sends it one JSON request per line; each reply is one JSON line. A request that does not
answer within its timeout gets the whole process group killed (``SandboxTimeout``); a child
that dies (segfault, abort, ``os._exit``) raises ``SandboxCrash`` with the exit signal and
the tail of its stderr. Either way the next call starts a fresh child. Only JSON crosses the
boundary: no pickling of TVM objects.

Each child starts with an allow-listed environment (no database or broker URLs, no tokens)
in a fresh private directory (its cwd, TMPDIR and HOME) that is removed when the child goes,
and under resource limits it sets on itself (``policy``): address space, CPU seconds per
request, file size, no core files. Exceeding one ends the request as data: a
``MemoryError`` reply (the child then exits), or SIGXCPU/SIGXFSZ, a crash naming the limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from autosched.settings import Settings, get_settings
from autosched.tune.sandbox.policy import (
    SandboxLimits,
    fsize_bytes,
    make_private_dir,
    remove_private_dir,
    sandbox_env,
)

#: The module a sandbox child runs (``python -m``): its request loop.
CHILD_MODULE = "autosched.tune.sandbox.child"
_STDERR_TAIL = 2000
# Replies are a few hundred bytes (templates: a few MB); a child that writes more without a
# newline is broken, and the parent must not buffer it without end.
_MAX_REPLY_BYTES = 64 << 20
# What the exit signals of the limits mean, for the failure message.
_LIMIT_SIGNALS = {
    signal.SIGXCPU: "its CPU-time limit per request was exceeded",
    signal.SIGXFSZ: "its file-size limit was exceeded",
}


class SandboxError(Exception):
    """The child did not answer: it hung or died."""


class SandboxTimeout(SandboxError):
    pass


class SandboxCrash(SandboxError):
    pass


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"killed by signal {-returncode}"
        why = _LIMIT_SIGNALS.get(sig)
        return f"killed by {sig.name}" + (f" ({why})" if why else "")
    return f"exited with status {returncode}"


class SandboxWorker:
    """One child process serving requests for ``handler`` ("module:function").

    ``limits`` (default: ``rlimit_as_bytes`` of address space, ``settings.sandbox_cpu_s`` CPU
    seconds per request, file size for whole output tensors) and the environment come from
    ``settings`` (default ``get_settings()``), read here in the parent.
    """

    def __init__(
        self,
        handler: str,
        *,
        startup_timeout_s: float = 120.0,
        max_uses: int | None = None,
        rlimit_as_bytes: int | None = 8 << 30,
        limits: SandboxLimits | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.handler = handler
        self.startup_timeout_s = startup_timeout_s
        self.max_uses = max_uses
        self.settings = settings or get_settings()
        self.limits = limits or SandboxLimits(
            as_bytes=rlimit_as_bytes,
            cpu_s=self.settings.sandbox_cpu_s,
            fsize_bytes=fsize_bytes(self.settings, writes_tensors=True),
        )
        self.rlimit_as_bytes = self.limits.as_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._dir: str | None = None
        self._buf = b""
        self._uses = 0

    @property
    def private_dir(self) -> str | None:
        """The running child's own directory (cwd, TMPDIR, HOME), or None."""
        return self._dir

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self._dir = make_private_dir()
        spec = json.dumps(self.limits.child_spec(self.max_uses))
        # -P: the child's cwd (its private, writable directory) is not on sys.path.
        cmd = [sys.executable, "-P", "-m", CHILD_MODULE, self.handler, spec]
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,  # killpg reaches gcc and anything else it spawned
                cwd=self._dir,
                env=sandbox_env(self.settings, self._dir),
            )
        except OSError as e:
            self.close()
            raise SandboxCrash(f"sandbox did not start: {e}") from None
        self._buf = b""
        self._uses = 0
        try:
            reply = self._read_line(self.startup_timeout_s)
        except SandboxError:
            self.close()
            raise
        if reply.get("ready") is not True:
            self.close()
            raise SandboxCrash(f"sandbox did not start: {reply}")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(Exception):
                    stream.close()  # type: ignore[union-attr]
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                self._stderr.close()
            self._stderr = None
        private, self._dir = self._dir, None
        if private is not None:
            with contextlib.suppress(Exception):
                remove_private_dir(private)

    def __del__(self) -> None:  # best effort; callers should close()
        with contextlib.suppress(Exception):
            self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- protocol --------------------------------------------------------------------------
    def _stderr_tail(self) -> str:
        f = self._stderr
        if f is None:
            return ""
        try:
            f.flush()
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _STDERR_TAIL))
            return f.read().decode("utf-8", "replace").strip()
        except Exception:
            return ""

    def _crash(self, what: str) -> SandboxCrash:
        proc = self._proc
        rc = None
        if proc is not None:
            with contextlib.suppress(Exception):
                rc = proc.wait(timeout=5)
        tail = self._stderr_tail()
        msg = f"{what}: sandbox {describe_exit(rc)}"
        if "bad_alloc" in tail and self.limits.as_bytes:  # C++ code past RLIMIT_AS
            msg += f" (out of memory: address-space limit {self.limits.as_bytes >> 20} MiB)"
        if tail:
            msg += f"\n{tail[-_STDERR_TAIL:]}"
        self.close()
        return SandboxCrash(msg)

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise SandboxTimeout(f"no answer within {timeout_s:g} s; killed")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._crash("no answer")
            self._buf += chunk
            if len(self._buf) > _MAX_REPLY_BYTES and b"\n" not in self._buf:
                raise self._crash(f"answer longer than {_MAX_REPLY_BYTES >> 20} MiB")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise self._crash("garbled answer") from None

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request; return the child's reply or raise a ``SandboxError``."""
        if not self.alive:
            self.close()
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crash("request not delivered") from None
        reply = self._read_line(timeout_s)
        self._uses += 1
        spent = self.max_uses is not None and self._uses >= self.max_uses
        if spent or reply.get("recycle"):  # recycle: the child hit a limit and is exiting
            self.close()
        return reply
