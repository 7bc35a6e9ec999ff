"""Sandbox worker processes for the builder and the runner.

Parent side: ``SandboxWorker`` starts ``python -m autosched.tune.runner.sandbox HANDLER`` in
its own session and sends it one JSON request per line; each reply is one JSON line. A
request that does not answer within its timeout gets the whole process group killed
(``SandboxTimeout``); a child that dies (segfault, abort, ``os._exit``) raises
``SandboxCrash`` with the exit signal and the tail of its stderr. Either way the next call
starts a fresh child. Only JSON crosses the boundary: no pickling of TVM objects.

Each child starts with an allow-listed environment (no database or broker URLs, no tokens)
in a fresh private directory (its cwd, TMPDIR and HOME) that is removed when the child goes,
and under resource limits it sets on itself (``sandbox_policy``): address space, CPU seconds
per request, file size, no core files. Exceeding one ends the request as data: a
``MemoryError`` reply (the child then exits), or SIGXCPU/SIGXFSZ, a crash naming the limit.

Child side: ``main`` applies the limits, imports the handler (only from ``autosched.tune.``),
moves ``stdout`` to ``stderr`` so that prints from TVM or gcc cannot corrupt the protocol,
answers ``ready`` and then serves requests until stdin closes.

The handlers the runner uses (``reference``, ``run``, and ``limits``: what the child sees, for
operators) live here too; the builder's lives in ``autosched.tune.builder.local_builder``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from autosched.settings import Settings, get_settings
from autosched.tune.runner.sandbox_policy import (
    SandboxLimits,
    fsize_bytes,
    make_private_dir,
    remove_private_dir,
    sandbox_env,
)

RUN_HANDLER = "autosched.tune.runner.sandbox:handle"
# Handler modules a sandbox may import (argv is ours, but keep the door narrow).
_ALLOWED_PREFIX = ("autosched.tune.", "autosched.service.workload_sandbox")
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
        cmd = [sys.executable, "-P", "-m", "autosched.tune.runner.sandbox", self.handler, spec]
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


# -- child side ----------------------------------------------------------------------------
def _load_handler(spec: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module, _, name = spec.partition(":")
    if not module.startswith(_ALLOWED_PREFIX) or not name:
        raise SystemExit(f"refusing handler {spec!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    from autosched.tune.runner.sandbox_policy import apply_limits, arm_cpu_limit

    # tvm_ffi imports torch when it is installed (~0.9 s of a ~1.8 s start); a sandbox never
    # needs it, and a fresh sandbox is started after every failed candidate.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}
    apply_limits(spec)  # before the handler (and TVM) is imported, so all runs under them
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    handler = _load_handler(argv[0])
    warmup = getattr(sys.modules[handler.__module__], "warmup", None)
    if warmup is not None:
        warmup()
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        arm_cpu_limit(spec)
        try:
            reply = handler(json.loads(line))
        except Exception as e:
            reply = _limit_reply(e, spec) or {"ok": False, "error": _format_exc(e)}
        proto.write(json.dumps(reply) + "\n")
        if reply.get("recycle"):
            break
    return 0


def _limit_reply(e: Exception, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The reply to a request that ran past the address-space limit, else None.

    It says so, and asks the parent to ``recycle`` this child (which then exits): its heap
    may be in any state after a failed allocation. (The CPU and file-size limits end the
    child with SIGXCPU/SIGXFSZ instead, and the parent names them.)
    """
    if not isinstance(e, MemoryError):
        return None
    limit = spec.get("as_bytes")
    where = f" ({limit >> 20} MiB)" if limit else ""
    error = f"out of memory: the sandbox's address-space limit{where} was reached"
    return {"ok": False, "error": f"{error}: {_format_exc(e)}", "recycle": True}


def _format_exc(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    if len(text) > 4000:
        text = text[:4000] + " ..."
    return text


# -- runner handlers (child side) ----------------------------------------------------------
def warmup() -> None:
    import numpy  # noqa: F401
    import tvm  # noqa: F401

    import autosched.wire  # noqa: F401


def _workload_info(doc: dict[str, Any]) -> tuple[Any, list[tuple[list[int], str, bool]], int]:
    """The PrimFunc, per parameter (shape, dtype, is_output), and the reduction length."""
    from tvm import te

    from autosched.analysis import analyze
    from autosched.wire import Workload

    wl = Workload.from_json(doc)
    params = [
        ([int(x) for x in t.shape], str(t.dtype), not isinstance(t.op, te.PlaceholderOp))
        for t in wl.tensors
    ]
    k = 1
    for stage in analyze(wl.prim_func):
        k = max(k, math.prod(stage.extents[i] for i in stage.reduction_axes))
    return wl.prim_func, params, k


def make_inputs(params: list[tuple[list[int], str, bool]], seed: int) -> list[Any]:
    """Deterministic arguments: uniform -1..1 floats, small ints; outputs NaN (or zero)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype, is_output in params:
        dt = np.dtype(dtype)
        if is_output:
            fill = np.nan if dt.kind == "f" else 0
            arrays.append(np.full(shape, fill, dtype=dt))
        elif dt.kind == "f":
            arrays.append(rng.uniform(-1, 1, shape).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, shape).astype(dt))
        else:
            arrays.append(rng.integers(0, 4, shape).astype(dt))
    return arrays


def _call(func: Any, arrays: list[Any]) -> list[Any]:
    import tvm

    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    func(*args)
    return args


def _reference(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tvm

    from autosched.hardware import HardwareParams, cpu_target

    func, params, _ = _workload_info(req["workload"])
    target = cpu_target(HardwareParams.from_json(req["hardware"])) if req.get("hardware") else None
    if target is None:
        from autosched.hardware import detect_hardware

        target = cpu_target(detect_hardware())
    t0 = time.perf_counter()
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    args = _call(ex.mod["main"], make_inputs(params, int(req["seed"])))
    outputs = [a.numpy() for a, (_, _, out) in zip(args, params, strict=True) if out]
    paths = req["paths"]
    if len(paths) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(paths)} reference paths")
    for path, arr in zip(paths, outputs, strict=True):
        tmp = f"{path}.tmp{os.getpid()}.npy"
        try:
            np.save(tmp, arr)
            os.replace(tmp, path)
        finally:  # a failed write (full disk) leaves nothing; past RLIMIT_FSIZE the parent cleans
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    return {"ok": True, "secs": time.perf_counter() - t0}


def _compare(got: Any, ref: Any, rtol: float, atol: float, k: int) -> str | None:
    import numpy as np

    if got.shape != ref.shape:
        return f"shape {got.shape} differs from reference {ref.shape}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != ref))
        return None if bad == 0 else f"{bad} of {got.size} elements differ"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    # Reordered fp32 sums differ by ~sqrt(K) ulps of the output's scale (bench.baselines).
    atol = max(atol, 2e-6 * math.sqrt(k) * scale)
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    if np.allclose(g, r, rtol=rtol, atol=atol, equal_nan=True):
        return None
    diff = np.abs(g - r)
    diff[np.isnan(g) & np.isnan(r)] = 0.0
    diff[np.isnan(diff)] = np.inf
    rel = diff / np.maximum(np.abs(r), np.finfo(np.float32).tiny)
    bad = int(np.count_nonzero(~np.isclose(g, r, rtol=rtol, atol=atol, equal_nan=True)))
    return (
        f"max abs error {float(diff.max()):.3g}, max rel error {float(rel.max()):.3g} "
        f"({bad} of {got.size} elements outside rtol={rtol:g} atol={atol:.3g})"
    )


def _run(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tvm

    t0 = time.perf_counter()
    _, params, k = _workload_info(req["workload"])
    refs = [np.load(p) for p in req["reference_paths"]]
    lib = tvm.runtime.load_module(req["artifact_path"])
    func = lib["main"]
    args = _call(func, make_inputs(params, int(req["seed"])))
    outputs = [a.numpy() for a, (_, _, out) in zip(args, params, strict=True) if out]
    for i, (got, ref) in enumerate(zip(outputs, refs, strict=True)):
        problem = _compare(got, ref, float(req["rtol"]), float(req["atol"]), k)
        if problem is not None:
            where = f"output {i}: " if len(outputs) > 1 else ""
            return {"ok": False, "wrong_answer": True, "error": where + problem}
    dev = tvm.cpu()
    timer = lib.time_evaluator(
        "main",
        dev,
        number=int(req["number"]),
        repeat=int(req["repeat"]),
        min_repeat_ms=int(req["min_repeat_ms"]),
        f_preproc="cache_flush_cpu_non_first_arg" if req["cache_flush"] else "",
    )
    result = timer(*args)
    return {
        "ok": True,
        "latencies": [float(x) for x in result.results],
        "secs": time.perf_counter() - t0,
    }


def handle(req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "reference":
        return _reference(req)
    if op == "run":
        return _run(req)
    if op == "limits":  # diagnostic: the child's env names, directories and rlimits
        from autosched.tune.runner.sandbox_policy import describe

        return describe()
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
