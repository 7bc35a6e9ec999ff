"""The Runner stage: load built artifacts, check them against the reference, time them.

``LocalRunner`` checks and times candidates one at a time in a sandbox subprocess: a single
persistent sandbox child (``autosched.tune.sandbox``, serving the handlers of
``autosched.tune.runner_handlers``) loads each artifact with ``tvm.runtime.load_module``,
calls it once on deterministic inputs (uniform -1..1 for float parameters, from ``seed``),
compares the outputs with the reference, and times it with ``time_evaluator`` (cache flush
between calls). The child is killed and replaced after any
failure, so a candidate that hangs (RUN_TIMEOUT), crashes (RUN_ERROR with the exit signal)
or raises (RUN_ERROR with the message) cannot affect the next one. Wrong outputs are
WRONG_ANSWER with the max abs/rel error.

The reference is the unscheduled PrimFunc built with plain ``tvm.compile``, computed once
per (workload key, seed) in a sandbox as well, and cached as ``.npy`` files in ``work_dir``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from autosched.settings import Settings, get_settings
from autosched.tune.sandbox.policy import SandboxLimits
from autosched.tune.trial import RunResult, TrialStatus


@dataclass(frozen=True)
class RunnerInput:
    """A built candidate: the exported library and the wire-format workload it implements."""

    artifact_path: str
    workload: dict[str, Any]


class Runner(ABC):
    """Measures candidates; never raises for a bad candidate (failures are ``RunResult``s)."""

    @abstractmethod
    def run(self, inputs: list[RunnerInput]) -> list[RunResult]:
        """One result per input, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release worker processes, if any."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What the runner's sandbox child serves (``reference``, ``run``, ``limits``).
RUN_HANDLER = "autosched.tune.runner_handlers:handle"


class LocalRunner(Runner):
    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        timeout_s: float = 10.0,
        number: int = 1,
        repeat: int = 3,
        min_repeat_ms: int = 10,
        enable_cpu_cache_flush: bool = True,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        seed: int = 0,
        *,
        reference_timeout_s: float = 120.0,
        rlimit_as_bytes: int | None = None,
        max_uses: int | None = 100,
        settings: Settings | None = None,
        limits: SandboxLimits | None = None,
    ) -> None:
        # Absolute: the sandbox runs in its own directory.
        self.work_dir = os.path.abspath(work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        self.timeout_s = timeout_s
        self.number = number
        self.repeat = repeat
        self.min_repeat_ms = min_repeat_ms
        self.enable_cpu_cache_flush = enable_cpu_cache_flush
        self.rtol = rtol
        self.atol = atol
        self.seed = seed
        self.reference_timeout_s = reference_timeout_s
        self.settings = settings or get_settings()
        # One sandbox at a time; rlimit_as_bytes (default: the settings' sandbox_memory_bytes
        # or half the usable memory, at most 8 GiB) overrides its address space.
        limits = limits or SandboxLimits.for_pool(self.settings, 1)
        if rlimit_as_bytes is not None:
            limits = replace(limits, as_bytes=rlimit_as_bytes)
        self.limits = limits
        self.rlimit_as_bytes = limits.as_bytes
        self.max_uses = max_uses
        self._worker: Any = None
        # canonical workload JSON -> (key, reference paths) or the reference's error
        self._refs: dict[str, tuple[str, list[str]] | str] = {}
        self.reference_computations = 0  # sandbox calls that computed a reference

    # -- workers ---------------------------------------------------------------------------
    def _call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        from autosched.tune.sandbox import SandboxWorker

        if self._worker is None:
            self._worker = SandboxWorker(
                RUN_HANDLER, max_uses=self.max_uses, limits=self.limits, settings=self.settings
            )
        try:
            reply = self._worker.call(request, timeout_s)
        except Exception:
            self._worker.close()  # the worker already closed itself; be sure
            raise
        if not reply.get("ok"):
            self._worker.close()  # recycle after any failure
        return reply

    def close(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                self._worker.close()
            self._worker = None

    # -- reference -------------------------------------------------------------------------
    def _workload_key(self, workload: dict[str, Any]) -> tuple[str, int]:
        from tvm import te

        from autosched.wire import Workload

        wl = Workload.from_json(workload)
        n_out = sum(not isinstance(t.op, te.PlaceholderOp) for t in wl.tensors)
        return wl.key, n_out

    def reference_paths(self, key: str, n_outputs: int) -> list[str]:
        return [
            os.path.join(self.work_dir, f"ref-{key}-seed{self.seed}-out{i}.npy")
            for i in range(n_outputs)
        ]

    def _reference(self, workload: dict[str, Any]) -> tuple[str, list[str]] | str:
        """(key, .npy paths) of the reference outputs, or an error message."""
        canon = json.dumps(workload, sort_keys=True)
        cached = self._refs.get(canon)
        if cached is not None:
            return cached
        try:
            key, n_out = self._workload_key(workload)
        except Exception as e:
            result: tuple[str, list[str]] | str = f"invalid workload: {type(e).__name__}: {e}"
            self._refs[canon] = result
            return result
        paths = self.reference_paths(key, n_out)
        if all(os.path.exists(p) for p in paths):
            result = (key, paths)
        else:
            request = {
                "op": "reference",
                "workload": workload,
                "seed": self.seed,
                "paths": paths,
            }
            self.reference_computations += 1
            try:
                reply = self._call(request, self.reference_timeout_s)
            except Exception as e:
                reply = {"ok": False, "error": str(e)}
            if reply.get("ok"):
                result = (key, paths)
            else:
                result = f"reference failed: {reply.get('error')}"
                self._remove_partial(paths)
        self._refs[canon] = result
        return result

    @staticmethod
    def _remove_partial(paths: list[str]) -> None:
        """A child killed mid-write (file-size limit, timeout) leaves ``PATH.tmp<pid>.npy``."""
        for path in paths:
            for partial in glob.glob(glob.escape(path) + ".tmp*.npy"):
                with contextlib.suppress(OSError):
                    os.remove(partial)

    # -- running ---------------------------------------------------------------------------
    def _run_one(self, inp: RunnerInput) -> RunResult:
        from autosched.tune.sandbox import SandboxTimeout

        ref = self._reference(inp.workload)
        if isinstance(ref, str):
            return RunResult(TrialStatus.RUN_ERROR, (), ref)
        _, paths = ref
        request = {
            "op": "run",
            "artifact_path": os.path.abspath(inp.artifact_path),
            "workload": inp.workload,
            "reference_paths": paths,
            "seed": self.seed,
            "rtol": self.rtol,
            "atol": self.atol,
            "number": self.number,
            "repeat": self.repeat,
            "min_repeat_ms": self.min_repeat_ms,
            "cache_flush": self.enable_cpu_cache_flush,
        }
        t0 = time.perf_counter()
        try:
            reply = self._call(request, self.timeout_s)
        except SandboxTimeout as e:
            return RunResult(TrialStatus.RUN_TIMEOUT, (), str(e), time.perf_counter() - t0)
        except Exception as e:
            return RunResult(TrialStatus.RUN_ERROR, (), str(e), time.perf_counter() - t0)
        secs = time.perf_counter() - t0
        if reply.get("ok"):
            return RunResult(TrialStatus.OK, tuple(reply["latencies"]), None, secs)
        status = TrialStatus.WRONG_ANSWER if reply.get("wrong_answer") else TrialStatus.RUN_ERROR
        return RunResult(status, (), str(reply.get("error")), secs)

    def run(self, inputs: list[RunnerInput]) -> list[RunResult]:
        return [self._run_one(inp) for inp in inputs]
