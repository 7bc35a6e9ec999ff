"""Building a client's declaration into TVM objects, away from the API process.

The key, analysis, template and static config of a workload need its PrimFunc, and a crafted
declaration can make TVM run for minutes or crash. So the API never builds one itself: it
sends the (already validated) wire document to a sandbox process, which answers plain JSON,
and a child that overruns ``template_timeout_s`` is killed. Both failures become a
``WireFormatError`` (422); nothing is stored.

Child side: ``handle`` (run by ``autosched.tune.sandbox.child``). Parent side: ``describe``
and ``static_trace`` use one small pool of sandbox processes per Python process, shared by
every app in it, started on first use. ``describe_workload`` and ``build_target`` are the
same computation in-process, for callers whose workloads are already stored and validated.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from autosched.errors import AutoschedError, ServiceBusyError, WireFormatError
from autosched.hardware import HardwareParams
from autosched.settings import get_settings

if TYPE_CHECKING:
    from autosched.tune.sandbox import SandboxWorker
    from autosched.wire import Workload

HANDLER = "autosched.service.workload_sandbox:handle"
# Two children: a slow declaration then holds only half of the builders. Each one has TVM
# loaded (a few hundred MB), so more than a few would cost memory for little gain.
POOL_SIZE = 2
# Starting a child (importing TVM) is the server's cost, not the request's: it gets its own
# bound, and a failure to start is a server error, not a 422.
_STARTUP_TIMEOUT_S = 120.0
_MAX_ERROR_CHARS = 500
_CHILD_NICENESS = 10
# How long a request waits for a free child: as long as a build may take, and at least the
# few seconds a killed child takes to come back (importing TVM), so that replacing one does
# not turn the next requests into refusals.
_MIN_QUEUE_WAIT_S = 10.0
# A child is replaced (in the background) after this many requests, so that whatever TVM
# leaks or caches per declaration cannot grow without bound in a long-lived API.
_MAX_USES = 1000


# -- typed results -------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltTemplate:
    """A workload's template and static config for one target (what a TemplateRow holds)."""

    target_key: str
    hardware: dict[str, Any]
    template: dict[str, Any]
    static_config: dict[str, Any]
    static_trace: list[Any] | None = None  # the static schedule's TVM trace, when asked for

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BuiltTemplate:
        return cls(
            target_key=str(doc["target_key"]),
            hardware=dict(doc["hardware"]),
            template=dict(doc["template"]),
            static_config=dict(doc["static_config"]),
            static_trace=doc.get("static_trace"),
        )


@dataclass(frozen=True)
class WorkloadFacts:
    """Everything the service stores about a workload, computed from its wire document."""

    key: str
    name: str
    wire: dict[str, Any]  # the canonical document (what is stored)
    flops: float
    stages: list[dict[str, Any]]  # StageView dumps
    targets: list[BuiltTemplate]  # one per hardware asked for, in order
    tvm_version: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkloadFacts:
        return cls(
            key=str(doc["key"]),
            name=str(doc["name"]),
            wire=dict(doc["wire"]),
            flops=float(doc["flops"]),
            stages=list(doc["stages"]),
            targets=[BuiltTemplate.from_json(t) for t in doc["targets"]],
            tvm_version=str(doc["tvm_version"]),
        )


class TemplateBuildersBusy(ServiceBusyError):
    """Every sandbox stayed busy while the request waited for one: retry later (503)."""


# -- the computation (child side, or in-process for stored workloads) ----------------------
def build_target(workload: Workload, hw: HardwareParams, *, trace: bool = False) -> BuiltTemplate:
    """Template and static config of ``workload`` for ``hw`` (and the static trace if asked)."""
    from autosched.analysis import analyze
    from autosched.schedule import apply_config, build_template, static_config, trace_json

    stages = analyze(workload.prim_func)
    template = build_template(workload.prim_func, hw, stages)
    config = static_config(workload.prim_func, hw, stages)
    static_trace = None
    if trace:
        sch = apply_config(workload.prim_func, config, hw, template=template, stages=stages)
        static_trace = trace_json(sch)
    return BuiltTemplate(
        target_key=hw.target_key,
        hardware=hw.to_json(),
        template=template.to_json(),
        static_config=config.to_json(),
        static_trace=static_trace,
    )


def describe_workload(
    workload: Workload, hws: Sequence[HardwareParams], *, trace: bool = False
) -> WorkloadFacts:
    import tvm

    from autosched.analysis import analyze, flops
    from autosched.schemas import StageView

    stages = [
        StageView(
            name=s.name,
            meta_template=str(s.meta_template),
            reason=s.reason,
            iter_kinds=s.iter_kinds,
            extents=list(s.extents),
        ).model_dump()
        for s in analyze(workload.prim_func)
    ]
    return WorkloadFacts(
        key=workload.key,
        name=workload.name,
        wire=workload.to_json(),
        flops=float(flops(workload.prim_func)),
        stages=stages,
        targets=[build_target(workload, hw, trace=trace) for hw in hws],
        tvm_version=tvm.__version__,
    )


def _static_trace(req: dict[str, Any]) -> list[Any]:
    from autosched.schedule import apply_config, trace_json
    from autosched.space import Config, Template
    from autosched.wire import Workload

    workload = Workload.from_json(req["workload"])
    hw = HardwareParams.from_json(req["hardware"])
    template = Template.from_json(req["template"])
    sch = apply_config(workload.prim_func, Config.from_json(req["config"]), hw, template=template)
    return trace_json(sch)


def handle(req: dict[str, Any]) -> dict[str, Any]:
    """Child side: one request in, plain JSON out; a refused declaration is an answer."""
    from autosched.wire import Workload

    op = req.get("op")
    try:
        if op == "ping":  # starts the child without charging a request for it
            return {"ok": True}
        if op == "describe":
            hws = [HardwareParams.from_json(h) for h in req["hardware"]]
            facts = describe_workload(Workload.from_json(req["workload"]), hws, trace=req["trace"])
            return {"ok": True, "facts": facts.to_json()}
        if op == "static_trace":
            import tvm

            return {"ok": True, "trace": _static_trace(req), "tvm_version": tvm.__version__}
    except WireFormatError as e:
        return {"ok": False, "wire_error": {"message": e.message, "path": e.path}}
    except AutoschedError as e:  # ScheduleError, ConfigError: TVM refused what was built
        message = f"could not build a template for this declaration: {e}"
        return {"ok": False, "wire_error": {"message": message[:_MAX_ERROR_CHARS], "path": ""}}
    raise ValueError(f"unknown op {op!r}")


def warmup() -> None:
    """Runs in the child before it answers ``ready``: lower its CPU priority, and import
    what a request needs so that the first one pays no imports."""
    # Building is batch work next to the API's latency-bound event loop on the same cores:
    # measured on 2 cores, two children validating 0.5 MB documents at normal priority
    # pushed the API's health-probe p99 from ~30 ms to over 100 ms.
    with contextlib.suppress(OSError):
        os.nice(_CHILD_NICENESS)
    import tvm  # noqa: F401

    import autosched.analysis
    import autosched.schedule
    import autosched.wire  # noqa: F401


# -- parent side ---------------------------------------------------------------------------
class SandboxPool:
    """Up to ``size`` sandbox children for ``handler``, shared by threads.

    A call takes an idle child (or starts one), and gives it back afterwards. A child that
    was killed (timeout) or died is restarted in the background, so the next request does
    not wait for TVM to import.
    """

    def __init__(self, handler: str, size: int) -> None:
        self.handler = handler
        self.size = size
        self._cond = threading.Condition()
        self._idle: list[SandboxWorker] = []
        self._all: list[SandboxWorker] = []
        self._closed = False

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The child's reply; ``SandboxError`` if it overran ``timeout_s`` or died."""
        worker = self._acquire(time.monotonic() + max(timeout_s, _MIN_QUEUE_WAIT_S))
        try:
            if not worker.alive:
                self._start(worker)
            return worker.call(request, timeout_s)
        finally:
            self._give_back(worker)

    def warm(self) -> None:
        """Start every child now, in the background (an API calls this on start-up, so the
        first declarations do not wait for TVM to import)."""
        with self._cond:
            new = [self._new_worker() for _ in range(self.size - len(self._all))]
            self._all.extend(new)
        for worker in new:  # held by its reviver until started, then idle
            threading.Thread(target=self._revive, args=(worker,), daemon=True).start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._all, self._idle = self._all, [], []
            self._cond.notify_all()
        for worker in workers:
            worker.close()

    def _new_worker(self) -> SandboxWorker:
        from autosched.tune.sandbox import SandboxWorker
        from autosched.tune.sandbox.policy import SandboxLimits

        # Template building writes no tensors: the small file-size limit, and a memory
        # share of a pool of ``size`` next to the API process.
        settings = get_settings()
        limits = SandboxLimits.for_pool(settings, self.size, writes_tensors=False)
        return SandboxWorker(self.handler, max_uses=_MAX_USES, limits=limits, settings=settings)

    def _acquire(self, deadline: float) -> SandboxWorker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the template sandbox pool is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._all) < self.size:
                    worker = self._new_worker()
                    self._all.append(worker)
                    return worker
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TemplateBuildersBusy(
                        "every template builder is busy with other declarations; retry later"
                    )
                self._cond.wait(left)

    def _start(self, worker: SandboxWorker) -> None:
        from autosched.tune.sandbox import SandboxError

        try:
            worker.call({"op": "ping"}, _STARTUP_TIMEOUT_S)
        except SandboxError as e:
            raise RuntimeError(f"the template sandbox did not start: {e}") from None

    def _give_back(self, worker: SandboxWorker) -> None:
        if worker.alive or self._closed:
            self._release(worker)
            return
        threading.Thread(target=self._revive, args=(worker,), daemon=True).start()

    def _revive(self, worker: SandboxWorker) -> None:
        try:
            self._start(worker)
        except Exception:  # a failed start, or the pool closing under it (at exit)
            pass  # left stopped: the next caller starts it (and reports the failure)
        finally:
            self._release(worker)

    def _release(self, worker: SandboxWorker) -> None:
        with self._cond:
            if self._closed:
                worker.close()
                return
            self._idle.append(worker)
            self._cond.notify()


_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def pool() -> SandboxPool:
    """This process's pool (every app in a process shares it; tests create many apps)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._closed:
            _pool = SandboxPool(HANDLER, POOL_SIZE)
            atexit.register(_pool.close)
        return _pool


def _call(request: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    from autosched.tune.sandbox import SandboxCrash, SandboxTimeout

    timeout_s = timeout_s if timeout_s is not None else get_settings().template_timeout_s
    try:
        reply = pool().call(request, timeout_s)
    except SandboxTimeout:
        raise WireFormatError(
            f"the declaration took longer than template_timeout_s={timeout_s:g} s to analyse"
        ) from None
    except SandboxCrash:
        raise WireFormatError("TVM crashed on this declaration") from None
    if reply.get("ok"):
        return reply
    if "wire_error" in reply:
        error = reply["wire_error"]
        raise WireFormatError(str(error["message"]), str(error.get("path", "")))
    # An exception the handler did not expect (TVM raising on something it built).
    first = (str(reply.get("error", "")).strip().splitlines() or ["unknown error"])[0]
    raise WireFormatError(f"TVM failed on this declaration ({first[:_MAX_ERROR_CHARS]})")


def describe(
    doc: dict[str, Any],
    hws: Sequence[HardwareParams],
    *,
    trace: bool = False,
    timeout_s: float | None = None,
) -> WorkloadFacts:
    """Key, analysis and per-hardware template of ``doc``, computed in a sandbox.

    ``WireFormatError`` for a refused, crashing or overlong (``template_timeout_s``)
    declaration.
    """
    request = {
        "op": "describe",
        "workload": doc,
        "hardware": [hw.to_json() for hw in hws],
        "trace": trace,
    }
    return WorkloadFacts.from_json(_call(request, timeout_s)["facts"])


def static_trace(
    wire: dict[str, Any],
    hw: dict[str, Any],
    template: dict[str, Any],
    config: dict[str, Any],
    *,
    timeout_s: float | None = None,
) -> tuple[list[Any], str]:
    """The TVM trace of ``config`` applied to ``wire``, and the TVM version that made it."""
    request = {
        "op": "static_trace",
        "workload": wire,
        "hardware": hw,
        "template": template,
        "config": config,
    }
    reply = _call(request, timeout_s)
    return list(reply["trace"]), str(reply["tvm_version"])
