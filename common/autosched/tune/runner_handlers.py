"""The runner's sandbox handlers (child side): reference outputs, check and time, ``limits``.

``LocalRunner`` runs them in a ``SandboxWorker`` (``RUN_HANDLER``): ``reference`` builds the
unscheduled PrimFunc for the host CPU (also for a GPU device) and saves its outputs as
``.npy``; ``run`` loads a built candidate, calls it on deterministic inputs on its device
("cpu" or "cuda:N"), compares with the reference and times it; ``limits`` reports what the
child sees, for operators.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any


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


class DeviceMissing(Exception):
    """The worker has no such device: every run on it fails the same way."""


def device(spec: str) -> Any:
    """The TVM device of "cpu" or "cuda:N"; ``DeviceMissing`` if this worker lacks it."""
    import tvm

    if spec == "cpu":
        return tvm.cpu()
    kind, _, index = spec.partition(":")
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"device must be 'cpu' or 'cuda:N', not {spec!r}")
    dev = tvm.cuda(int(index))
    try:
        # False without a driver (no CUDA runtime registered) or past the last device.
        exists = bool(dev.exist)
    except Exception:
        exists = False
    if not exists:
        raise DeviceMissing(f"no CUDA device {spec} on this worker")
    return dev


#: What ``time_evaluator`` calls before each repeat on a GPU (``register_gpu_flush``).
GPU_FLUSH_FUNC = "autosched.runner.flush_gpu_l2"
#: Flush size when the driver reports no L2 size.
DEFAULT_FLUSH_BYTES = 256 << 20
# (device id, bytes) -> the two device buffers the flush copies between; one pair at a time.
_flush_buffers: dict[tuple[int, int], tuple[Any, Any]] = {}


def register_gpu_flush(dev: Any, nbytes: int | None = None) -> str:
    """Register the L2 flush for ``dev`` and return its name, for ``f_preproc``.

    TVM only has a CPU flush (``cache_flush_cpu_non_first_arg``). This one copies a device
    buffer of ``nbytes`` (default twice the device's L2) into another: the copy is on the
    stream the kernel and the timer's events use, so each timed repeat starts with none of
    the kernel's data in L2.
    """
    import tvm
    import tvm_ffi

    size = int(nbytes or 2 * int(dev.l2_cache_size_bytes or 0) or DEFAULT_FLUSH_BYTES)
    key = (int(dev.device_id), size)
    if key not in _flush_buffers:
        _flush_buffers.clear()  # free the previous pair first
        n = max(1, size // 4)
        _flush_buffers[key] = (
            tvm.runtime.empty((n,), "float32", dev),
            tvm.runtime.empty((n,), "float32", dev),
        )
    src, dst = _flush_buffers[key]

    def flush(*_args: Any) -> None:
        src.copyto(dst)

    tvm_ffi.register_global_func(GPU_FLUSH_FUNC, flush, override=True)
    return GPU_FLUSH_FUNC


def _call(func: Any, arrays: list[Any], dev: Any = None) -> list[Any]:
    import tvm

    dev = tvm.cpu() if dev is None else dev
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    func(*args)
    return args


def _reference(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tvm

    from autosched.hardware import HardwareParams, detect_hardware, reference_target

    func, params, _ = _workload_info(req["workload"])
    # The host CPU for any device: a GPU's kernels are checked against the same LLVM build.
    doc = req.get("hardware")
    target = reference_target(HardwareParams.from_json(doc) if doc else detect_hardware())
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


def compare_to_reference(
    got: Any, ref: Any, rtol: float, atol: float, k: int, *, rounded_sums: bool = False
) -> str | None:
    """None when the output ``got`` matches the reference ``ref``, else what is off (shape,
    element count or largest errors). Floats: ``rtol``, and ``atol`` raised with the
    longest reduction ``k`` (reordered sums); other dtypes must be equal.

    ``rounded_sums``: ``ref`` was computed at ``got``'s own precision (the runner's CPU
    build of the same function), so a half-precision output accumulated in its own dtype
    (a tensor-core kernel's fp16 accumulator) had every partial sum rounded to ~1e-3 in
    both, in different orders: its tolerances then grow with its machine epsilon."""
    import numpy as np

    if got.shape != ref.shape:
        return f"shape {got.shape} differs from reference {ref.shape}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != ref))
        return None if bad == 0 else f"{bad} of {got.size} elements differ"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    # Reordered fp32 sums differ by ~sqrt(K) ulps of the output's scale (bench.baselines).
    atol = max(atol, 2e-6 * math.sqrt(k) * scale)
    eps = float(np.finfo(got.dtype).eps)
    if rounded_sums and eps > np.finfo(np.float32).eps:
        # Two orders of rounded fp16 sums: a random walk of ~sqrt(K) half-ulps each; twice
        # that still fails an output that is off by its own magnitude (zeros, a wrong tile).
        rtol = max(rtol, 2 * eps)
        atol = max(atol, 2 * eps * math.sqrt(k) * scale)
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
    spec = str(req.get("device") or "cpu")
    try:
        dev = device(spec)
    except DeviceMissing as e:
        return {"ok": False, "device_missing": True, "error": str(e)}
    _, params, k = _workload_info(req["workload"])
    refs = [np.load(p) for p in req["reference_paths"]]
    lib = tvm.runtime.load_module(req["artifact_path"])
    func = lib["main"]
    args = _call(func, make_inputs(params, int(req["seed"])), dev)
    outputs = [a.numpy() for a, (_, _, out) in zip(args, params, strict=True) if out]
    for i, (got, ref) in enumerate(zip(outputs, refs, strict=True)):
        problem = compare_to_reference(
            got, ref, float(req["rtol"]), float(req["atol"]), k, rounded_sums=True
        )
        if problem is not None:
            where = f"output {i}: " if len(outputs) > 1 else ""
            return {"ok": False, "wrong_answer": True, "error": where + problem}
    if not req["cache_flush"]:
        preproc = ""
    elif spec == "cpu":
        preproc = "cache_flush_cpu_non_first_arg"
    else:
        preproc = register_gpu_flush(dev, req.get("l2_flush_bytes"))
    timer = lib.time_evaluator(
        "main",
        dev,
        number=int(req["number"]),
        repeat=int(req["repeat"]),
        min_repeat_ms=int(req["min_repeat_ms"]),
        f_preproc=preproc,
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
        from autosched.tune.sandbox.policy import describe

        return describe()
    raise ValueError(f"unknown op {op!r}")
