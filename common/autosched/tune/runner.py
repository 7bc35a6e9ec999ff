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

The reference is the unscheduled PrimFunc built with plain ``tvm.compile`` for the host CPU
(``hardware.reference_target``), whatever the device, computed once per (workload key, seed)
in a sandbox as well, and cached as ``.npy`` files in ``work_dir``; so CPU and GPU runners
share it.

``device`` is "cpu" or "cuda:N". On a CUDA device the child copies the inputs to the GPU,
calls the kernel, copies the outputs back for the comparison, and times it on the GPU
(``time_evaluator``: CUDA events) with an L2 flush before each repeat: a copy between two
device buffers of ``l2_flush_bytes`` each (default twice the device's L2). A worker without
that device answers every run with RUN_ERROR "no CUDA device cuda:N on this worker". The
CUDA sandbox has no address-space limit unless one is given: the CUDA driver reserves far
more virtual memory than any limit that would still mean something (it fails to initialize
under one).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from autosched.settings import Settings, get_settings
from autosched.tune.sandbox.policy import SandboxLimits
from autosched.tune.trial import REFERENCE_FAILED, RunResult, TrialStatus


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


#: How long a failed reference computation is answered from memory before it is tried again.
REFERENCE_RETRY_S = 30.0
#: What the runner's sandbox child serves (``reference``, ``run``, ``limits``).
RUN_HANDLER = "autosched.tune.runner_handlers:handle"
#: The devices a runner measures on: the host CPU, or CUDA device N of this worker.
DEVICE_PATTERN = re.compile(r"cpu|cuda:[0-9]{1,2}")


def check_device(device: str) -> str:
    """``device`` if it names a device a runner can measure on ("cpu", "cuda:N")."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be 'cpu' or 'cuda:N', not {device!r}")
    return device


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
        device: str = "cpu",
        l2_flush_bytes: int | None = None,
    ) -> None:
        self.device = check_device(device)
        #: bytes written before each timed repeat on a GPU (None: twice the device's L2)
        self.l2_flush_bytes = l2_flush_bytes
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
        if limits is None:
            limits = SandboxLimits.for_pool(self.settings, 1)
            if self.is_cuda:  # the driver's reservations exceed any useful limit
                limits = replace(limits, as_bytes=None)
        if rlimit_as_bytes is not None:
            limits = replace(limits, as_bytes=rlimit_as_bytes)
        self.limits = limits
        self.rlimit_as_bytes = limits.as_bytes
        self.max_uses = max_uses
        self._worker: Any = None
        # canonical workload JSON -> (key, reference paths) or the reference's error
        self._refs: dict[str, tuple[str, list[str]] | str] = {}
        self.reference_computations = 0  # sandbox calls that computed a reference
        # canonical workload JSON -> (monotonic time to try again, error): a failed
        # reference is not cached for the worker's lifetime (its cause may pass)
        self._ref_failures: dict[str, tuple[float, str]] = {}
        # Set once a run found no such device here: it will not appear, so later runs fail
        # at once instead of starting a sandbox each.
        self._device_missing: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

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
        failed = self._ref_failures.get(canon)
        if failed is not None and time.monotonic() < failed[0]:
            return failed[1]
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
            if not reply.get("ok"):
                # The environment's fault (a full disk, a timeout under load): remembered
                # only for a while, so this batch does not recompute it for every trial
                # and a later one tries again once the cause may have passed.
                self._remove_partial(paths)
                error = f"{REFERENCE_FAILED}: {reply.get('error')}"
                self._ref_failures[canon] = (time.monotonic() + REFERENCE_RETRY_S, error)
                return error
            result = (key, paths)
        self._refs[canon] = result
        self._ref_failures.pop(canon, None)
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

        if self._device_missing is not None:
            return RunResult(TrialStatus.RUN_ERROR, (), self._device_missing)
        ref = self._reference(inp.workload)
        if isinstance(ref, str):
            # An invalid workload is the request's fault; a reference that could not be
            # computed is the machine's (ENV_ERROR: the trial is measured again later).
            failed = TrialStatus.ENV_ERROR if ref.startswith(REFERENCE_FAILED) else None
            return RunResult(failed or TrialStatus.RUN_ERROR, (), ref)
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
            "device": self.device,
            "l2_flush_bytes": self.l2_flush_bytes,
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
        if reply.get("device_missing"):
            self._device_missing = str(reply.get("error"))
        return RunResult(status, (), str(reply.get("error")), secs)

    def run(self, inputs: list[RunnerInput]) -> list[RunResult]:
        return [self._run_one(inp) for inp in inputs]
