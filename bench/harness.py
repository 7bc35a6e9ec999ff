"""How the benchmarks build, run, check and time a kernel and its baselines.

Every contender is timed the same way: warm up, then several repeats of at least
``min_repeat_ms`` each, reduced to the median (or min), because timings on the shared 2-core
machines are noisy. Contenders are sampled in interleaved rounds so that a burst of outside
load hits all of them alike. A ``Case`` holds a kernel's inputs and the output of its
unscheduled ("naive") TVM build, which every schedule is checked against.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import tvm

from bench.baselines import assert_close, numpy_fn, random_inputs, to_torch, torch_fn

OutSpecs = Sequence[tuple[tuple[int, ...], str]]


def num_threads() -> int:
    """Thread count for every backend: TVM_NUM_THREADS if set, else the visible cores."""
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup_threads() -> int:
    """Pin TVM and torch to the same thread count; call before the first TVM parallel call.

    TVM reads TVM_NUM_THREADS lazily on its first parallel region and defaults to 1 thread on
    these machines, so it must be exported before anything runs.
    """
    n = num_threads()
    os.environ.setdefault("TVM_NUM_THREADS", str(n))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return n


# --------------------------------------------------------------------------------------
# TVM: build and run
# --------------------------------------------------------------------------------------


def build(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> Any:
    """Build a PrimFunc as it is; with no schedule applied, this is the "naive" build."""
    return tvm.compile(tvm.IRModule({"main": func}), target=target)


def output_specs(func: tvm.tirx.PrimFunc, num_inputs: int) -> list[tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the outputs: the PrimFunc params after the inputs."""
    specs = []
    for param in list(func.params)[num_inputs:]:
        # In TVM 0.27 a PrimFunc param is a buffer-typed Var carrying shape and dtype itself;
        # older TVMs kept them in func.buffer_map.
        buf_map = getattr(func, "buffer_map", None)
        buf = buf_map[param] if buf_map is not None else param
        specs.append((tuple(int(d) for d in buf.shape), str(buf.dtype)))
    return specs


def _runtime_module(executable_or_module: Any) -> Any:
    # tvm.compile returns a tvm.runtime.Executable whose .mod is the runtime Module.
    return getattr(executable_or_module, "mod", executable_or_module)


def _make_args(inputs: Sequence[np.ndarray], out_shapes: OutSpecs) -> list[Any]:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    args += [tvm.runtime.tensor(np.zeros(shape, dtype), dev) for shape, dtype in out_shapes]
    return args


def run_tvm(
    executable_or_module: Any,
    inputs: Sequence[np.ndarray],
    out_shapes: OutSpecs,
) -> list[np.ndarray]:
    """Run a built kernel once and return its outputs as numpy arrays."""
    args = _make_args(inputs, out_shapes)
    _runtime_module(executable_or_module)["main"](*args)
    return [a.numpy() for a in args[len(inputs) :]]


@dataclass
class Case:
    """A zoo kernel ready to run: seeded random inputs, the output shapes, and the naive
    build with its output, the reference every schedule must match."""

    name: str
    inputs: list[np.ndarray]
    out_specs: list[tuple[tuple[int, ...], str]]
    naive: Any
    reference: np.ndarray

    @classmethod
    def make(cls, name: str, func: tvm.tirx.PrimFunc, target: tvm.target.Target, seed: int) -> Case:
        inputs = random_inputs(name, seed)
        out_specs = output_specs(func, len(inputs))
        naive = build(func, target)
        (reference,) = run_tvm(naive, inputs, out_specs)
        return cls(name, inputs, out_specs, naive, reference)

    def output(self, executable: Any) -> np.ndarray:
        (got,) = run_tvm(executable, self.inputs, self.out_specs)
        return got

    def max_abs_err(self, got: np.ndarray) -> float:
        return float(np.abs(got.astype(np.float64) - self.reference).max())

    def check(self, executable: Any) -> float:
        """Raise AssertionError unless ``executable`` reproduces the naive output within
        the kernel's tolerance; return its largest absolute error."""
        got = self.output(executable)
        assert_close(got, self.reference, self.name)
        return self.max_abs_err(got)


# --------------------------------------------------------------------------------------
# Timers
# --------------------------------------------------------------------------------------


Stat = str  # "median" (the default everywhere) or "min"


def summarize(samples: Sequence[float], stat: Stat = "median") -> float:
    """Reduce per-call timings: the median, or the min (the least disturbed by other load)."""
    if stat == "median":
        return float(statistics.median(samples))
    if stat == "min":
        return float(min(samples))
    raise ValueError(f"unknown statistic {stat!r}; use 'median' or 'min'")


def tvm_samples(
    executable_or_module: Any,
    inputs: Sequence[np.ndarray],
    out_shapes: OutSpecs,
    *,
    number: int = 1,
    repeat: int = 10,
    min_repeat_ms: int = 50,
) -> list[float]:
    """Seconds per call of a built TVM kernel, one sample per repeat.

    time_evaluator runs one untimed warm-up call itself. Before each repeat f_preproc flushes
    the CPU caches of every argument except the first, the convention for NN layers (the
    activation arrives hot from the previous layer, the weights are cold); within a repeat
    the ``number`` calls run back to back on warm caches.
    """
    mod = _runtime_module(executable_or_module)
    args = _make_args(inputs, out_shapes)
    timer = mod.time_evaluator(
        "main",
        tvm.cpu(),
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        f_preproc="cache_flush_cpu_non_first_arg",
    )
    return [float(x) for x in timer(*args).results]


def _sample_callable(
    fn: Callable[..., Any], args: Sequence[Any], repeat: int, min_repeat_ms: float, warmup: int
) -> list[float]:
    for _ in range(warmup):
        fn(*args)
    # Calibrate how many calls one repeat needs so that short kernels are not dominated
    # by timer resolution and Python overhead variance.
    t0 = time.perf_counter()
    fn(*args)
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(np.ceil(min_repeat_ms / 1e3 / once)))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        samples.append((time.perf_counter() - t0) / number)
    return samples


def torch_samples(
    fn: Callable[..., Any], inputs: Sequence[Any], *, repeat: int, min_repeat_ms: float
) -> list[float]:
    """Seconds per call of a torch callable on numpy inputs, under torch.inference_mode,
    one sample per repeat."""
    import torch

    args = to_torch(inputs)
    with torch.inference_mode():
        # Three warm-up calls: oneDNN picks and caches its kernels on the first calls.
        return _sample_callable(fn, args, repeat, min_repeat_ms, warmup=3)


def numpy_samples(
    fn: Callable[..., Any], inputs: Sequence[np.ndarray], *, repeat: int, min_repeat_ms: float
) -> list[float]:
    """Seconds per call of a numpy callable, one sample per repeat."""
    return _sample_callable(fn, list(inputs), repeat, min_repeat_ms, warmup=2)


def samplers(
    case: Case, builds: dict[str, Any], *, repeat: int, min_repeat_ms: int, torch_ok: bool
) -> dict[str, Callable[[], list[float]]]:
    """One sampler per contender, in the order the rounds run them: each TVM build in
    ``builds`` (None, a build that failed, is left out), then numpy (matmul-like kernels
    only) and PyTorch (when installed)."""
    kw = {"repeat": repeat, "min_repeat_ms": min_repeat_ms}
    out: dict[str, Callable[[], list[float]]] = {}
    for key, executable in builds.items():
        if executable is not None:
            out[key] = partial(tvm_samples, executable, case.inputs, case.out_specs, **kw)
    np_fn = numpy_fn(case.name)
    if np_fn is not None:
        out["numpy"] = partial(numpy_samples, np_fn, case.inputs, **kw)
    if torch_ok:
        out["torch"] = partial(torch_samples, torch_fn(case.name), case.inputs, **kw)
    return out


# Pause before each contender's samples. Three thread pools (TVM's, OpenBLAS's, torch's
# OpenMP) share the cores, and each keeps spinning for a while after its last call: timed
# right after TVM and numpy, torch's matmul_512 measured 2.5-8.8 ms instead of 1.25 ms. A
# 0.2 s pause lets the spinners go to sleep (measured: back to 1.22-1.27 ms).
SETTLE_S = 0.2


def interleaved(
    fns: dict[str, Callable[[], list[float]]], rounds: int, stat: Stat = "median"
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Run each sampler once per round, in alternating order, after a settle pause; return
    each contender's reduced time and all its samples. Interleaving makes a burst of outside
    load hit every contender alike instead of one."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds):
        order = list(fns) if i % 2 == 0 else list(reversed(fns))
        for k in order:
            time.sleep(SETTLE_S)
            samples[k].extend(fns[k]())
    return {k: summarize(v, stat) for k, v in samples.items()}, samples
