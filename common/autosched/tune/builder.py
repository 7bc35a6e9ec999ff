"""The Builder stage: turn (workload, config, hardware) into an exported shared library.

``LocalBuilder`` compiles a batch of candidates in a pool of sandbox worker processes. Each
worker is a persistent sandbox child (``autosched.tune.sandbox``) that imports TVM once
and then builds one candidate per request (``handle``): validate the config against the
workload's template, ``apply_config``, ``tvm.compile``, ``export_library``. A worker that
hangs past ``timeout_s`` is killed (BUILD_TIMEOUT); one that crashes is replaced
(BUILD_ERROR with the exit signal); a Python error is a BUILD_ERROR with its message. The
caller never sees an exception for a bad candidate. MetaSchedule and
``tvm.s_tir.tensor_intrin`` are never imported here (~30 s per process).

For a CUDA ``hardware`` the library carries its kernels as a cubin for ``hw.gpu.arch``,
compiled here with nvcc (``cuda_build``): a kernel nvcc or ptxas rejects is a BUILD_ERROR here,
and the GPU host loads it with the TVM runtime alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from autosched.settings import Settings, get_settings
from autosched.tune.resources import usable_cpus
from autosched.tune.sandbox.policy import SandboxLimits
from autosched.tune.trial import BuildResult, MeasureInput, TrialStatus


class Builder(ABC):
    """Builds candidates; never raises for a bad candidate (failures are ``BuildResult``s)."""

    @abstractmethod
    def build(self, inputs: list[MeasureInput]) -> list[BuildResult]:
        """One result per input, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release worker processes, if any."""

    def __enter__(self) -> Builder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BUILD_HANDLER = "autosched.tune.builder:handle"


def artifact_name(workload_key: str, config: dict[str, Any]) -> str:
    """``<workload key>-<sha1 of the config's canonical JSON>.so``."""
    digest = hashlib.sha1(
        json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return f"{workload_key}-{digest}.so"


class LocalBuilder(Builder):
    """``max_workers`` defaults to the CPUs this process may use (affinity, cgroup quota).

    Each worker's limits (``sandbox.policy.SandboxLimits``): ``rlimit_as_bytes`` of address
    space, default the settings' ``sandbox_memory_bytes`` or the usable memory shared among
    the pool (at most 8 GiB); ``sandbox_cpu_s`` CPU seconds per build; small files only.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        max_workers: int | None = None,
        timeout_s: float = 30.0,
        *,
        rlimit_as_bytes: int | None = None,
        max_uses: int | None = 200,
        settings: Settings | None = None,
        limits: SandboxLimits | None = None,
    ) -> None:
        # Absolute: the workers run in their own directories.
        self.work_dir = os.path.abspath(work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        self.max_workers = max(1, max_workers or usable_cpus())
        self.timeout_s = timeout_s
        self.settings = settings or get_settings()
        limits = limits or SandboxLimits.for_pool(
            self.settings, self.max_workers, writes_tensors=False
        )
        if rlimit_as_bytes is not None:
            limits = replace(limits, as_bytes=rlimit_as_bytes)
        self.limits = limits
        self.rlimit_as_bytes = limits.as_bytes
        self.max_uses = max_uses
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _new_worker(self) -> Any:
        from autosched.tune.sandbox import SandboxWorker

        w = SandboxWorker(
            BUILD_HANDLER, max_uses=self.max_uses, limits=self.limits, settings=self.settings
        )
        with self._lock:
            self._all.append(w)
        return w

    def _acquire(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new_worker()

    def _build_one(self, inp: MeasureInput) -> BuildResult:
        from autosched.tune.sandbox import SandboxTimeout

        request = {
            "workload": inp.workload,
            "config": inp.config,
            "hardware": inp.hardware,
            "work_dir": self.work_dir,
        }
        worker = self._acquire()
        t0 = time.perf_counter()
        try:
            reply = worker.call(request, self.timeout_s)
        except SandboxTimeout as e:
            return BuildResult(None, TrialStatus.BUILD_TIMEOUT, str(e), time.perf_counter() - t0)
        except Exception as e:  # crash, failed start, anything on our side
            return BuildResult(
                None, TrialStatus.BUILD_ERROR, f"{type(e).__name__}: {e}", time.perf_counter() - t0
            )
        finally:
            self._idle.put(worker)
        secs = float(reply.get("secs", time.perf_counter() - t0))
        if reply.get("ok"):
            return BuildResult(reply["path"], TrialStatus.OK, None, secs)
        return BuildResult(None, TrialStatus.BUILD_ERROR, str(reply.get("error")), secs)

    def build(self, inputs: list[MeasureInput]) -> list[BuildResult]:
        if not inputs:
            return []
        n = min(self.max_workers, len(inputs))
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(self._build_one, inputs))

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            with contextlib.suppress(Exception):
                w.close()
        self._idle = queue.SimpleQueue()


# -- child side (runs inside the sandbox worker) -------------------------------------------
def warmup() -> None:
    import tvm  # noqa: F401

    import autosched.schedule
    import autosched.wire  # noqa: F401


def handle(req: dict[str, Any]) -> dict[str, Any]:
    if req.get("op") == "limits":  # diagnostic: the child's env names, directories, rlimits
        from autosched.tune.sandbox.policy import describe

        return describe()
    import tvm

    from autosched.analysis import analyze
    from autosched.hardware import HardwareParams, cpu_target
    from autosched.schedule import apply_config, build_template
    from autosched.space import Config
    from autosched.wire import Workload

    t0 = time.perf_counter()
    wl = Workload.from_json(req["workload"])
    hw = HardwareParams.from_json(req["hardware"])
    config = Config.from_json(req["config"])
    stages = analyze(wl.prim_func)
    template = build_template(wl.prim_func, hw, stages)
    sch = apply_config(wl.prim_func, config, hw, template=template, stages=stages)
    if hw.is_gpu:  # kernels compiled here for hw.gpu.arch: the GPU host needs no compiler
        from autosched.tune import cuda_build

        ex = cuda_build.compile_for_gpu(sch.mod, hw)
    else:
        ex = tvm.compile(sch.mod, target=cpu_target(hw))
    path = os.path.join(req["work_dir"], artifact_name(wl.key, req["config"]))
    tmp = f"{path}.tmp{os.getpid()}.so"
    try:
        if hw.is_gpu:
            cuda_build.export_library(ex, tmp, hw)
        else:
            ex.export_library(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return {"ok": True, "path": path, "secs": time.perf_counter() - t0}
