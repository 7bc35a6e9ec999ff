"""Reference implementations and timers for the kernel-zoo benchmarks.

For every zoo kernel this module has a PyTorch CPU implementation and, for the matmul-like
kernels, a numpy (BLAS) one. All take numpy inputs in the zoo's argument order (the
placeholders, in order) and return the output as numpy, so they double as numerical oracles
for the TVM builds. It also builds the *unscheduled* PrimFunc ("naive TVM") and times
TVM, torch and numpy callables the same way: warm up, then report the median of several
repeats, because timings on the shared 2-core machines are noisy.

torch is optional: everything that needs it imports it lazily, so the TVM/numpy parts work
without the ``bench`` extra installed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm

from autosched import zoo

if TYPE_CHECKING:
    import torch

# Kernels whose natural baseline is BLAS through numpy (torch also calls a BLAS for them,
# but numpy is the plainer reference and the one the targets are stated against).
MATMUL_LIKE: frozenset[str] = frozenset(
    {"matmul_512", "matmul_1024", "matmul_awkward", "dense_bias_relu", "batch_matmul"}
)


def is_matmul_like(name: str) -> bool:
    return name.startswith("matmul_") or name in MATMUL_LIKE


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
# Inputs and output specs
# --------------------------------------------------------------------------------------


def _num_inputs(name: str) -> int:
    # The zoo lists placeholders first and outputs last; every zoo kernel has one output.
    return len(zoo.tensors(name)) - 1


def input_specs(name: str) -> list[tuple[tuple[int, ...], str]]:
    ts = zoo.tensors(name)[:-1]
    return [(tuple(int(d) for d in t.shape), str(t.dtype)) for t in ts]


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


def random_inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    """Uniform(-1, 1) float32 inputs for the placeholders of a zoo kernel, in order."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in input_specs(name):
        out.append(rng.uniform(-1.0, 1.0, size=shape).astype(dtype))
    return out


# --------------------------------------------------------------------------------------
# numpy baselines (matmul-like kernels only)
# --------------------------------------------------------------------------------------


def _np_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


def _np_dense_bias_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    # topi.nn.dense computes x @ w.T; np.maximum with out= keeps it to one temporary.
    y = x @ w.T
    y += b
    return np.maximum(y, 0.0, out=y)


def _np_batch_matmul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # topi.nn.batch_matmul defaults to transpose_b=True: out[b, i, j] = sum_k x[b,i,k] y[b,j,k].
    return np.matmul(x, y.transpose(0, 2, 1))


def numpy_fn(name: str) -> Callable[..., np.ndarray] | None:
    """numpy implementation of a zoo kernel, or None when it is not matmul-like."""
    if name.startswith("matmul_"):
        return _np_matmul
    return {"dense_bias_relu": _np_dense_bias_relu, "batch_matmul": _np_batch_matmul}.get(name)


# --------------------------------------------------------------------------------------
# PyTorch baselines (every zoo kernel)
# --------------------------------------------------------------------------------------


def _torch_fns() -> dict[str, Callable[..., torch.Tensor]]:
    import torch
    import torch.nn.functional as F

    def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    def dense_bias_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.linear(x, w, b))

    def batch_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, y.transpose(1, 2))

    def conv(stride: int, pad: int) -> Callable[..., torch.Tensor]:
        def f(data: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
            return F.conv2d(data, kernel, stride=stride, padding=pad)

        return f

    def conv2d_bias_relu(
        data: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # The zoo's bias is (F, 1, 1) and broadcast over NCHW; F.conv2d wants it flat.
        return torch.relu(F.conv2d(data, kernel, bias.reshape(-1), padding=1))

    def depthwise_conv2d(data: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.conv2d(data, kernel, padding=1, groups=data.shape[1])

    def max_pool(data: torch.Tensor) -> torch.Tensor:
        # topi pads a max-pool with the dtype's lowest value, as torch does. torch's NCHW
        # max-pool kernel is slow here (2-8 ms; channels_last: ~0.17 ms), but channels_last
        # is a layout change the TVM kernel does not get, so the baseline keeps NCHW.
        return F.max_pool2d(data, 3, 2, 1)

    def softmax(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)

    def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), gamma, beta, eps=1e-5)  # topi's default eps

    def row_sum(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)

    def elementwise_chain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # exp(t) - 1 rather than expm1, to match the te definition's rounding.
        return torch.relu(torch.exp(x * 2.0 + y) - 1.0)

    def transpose(x: torch.Tensor) -> torch.Tensor:
        # .contiguous() so the copy really happens (x.T alone is a free view).
        return x.t().contiguous()

    def lenet(
        data: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        w3: torch.Tensor,
        b3: torch.Tensor,
        w4: torch.Tensor,
        b4: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.relu(F.conv2d(data, w1, b1.reshape(-1), padding=2))
        x = F.max_pool2d(x, 2, 2)
        x = torch.relu(F.conv2d(x, w2, b2.reshape(-1)))
        x = F.max_pool2d(x, 2, 2)
        x = x.reshape(x.shape[0], -1)
        x = torch.relu(F.linear(x, w3, b3))
        return torch.softmax(F.linear(x, w4, b4), dim=-1)

    return {
        "matmul_512": matmul,
        "matmul_1024": matmul,
        "matmul_awkward": matmul,
        "dense_bias_relu": dense_bias_relu,
        "batch_matmul": batch_matmul,
        "conv2d_resnet_c2": conv(1, 1),
        "conv2d_resnet_c3": conv(1, 1),
        "conv2d_resnet_c4_s2": conv(2, 1),
        "conv2d_resnet_1x1": conv(2, 0),
        "conv2d_bias_relu": conv2d_bias_relu,
        "depthwise_conv2d": depthwise_conv2d,
        "max_pool": max_pool,
        "softmax": softmax,
        "layer_norm": layer_norm,
        "row_sum": row_sum,
        "elementwise_chain": elementwise_chain,
        "transpose": transpose,
        "lenet": lenet,
    }


def torch_fn(name: str) -> Callable[..., torch.Tensor]:
    """PyTorch implementation of a zoo kernel, on torch tensors (raises ImportError w/o torch)."""
    fns = _torch_fns()
    if name not in fns:
        raise KeyError(f"no torch baseline for zoo kernel {name!r}")
    return fns[name]


def _to_torch(inputs: Sequence[Any]) -> list[torch.Tensor]:
    import torch

    # from_numpy shares memory: no copy inside or outside the timed region.
    return [
        torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        for x in inputs
    ]


def run_torch(name: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Run the torch baseline of a zoo kernel: numpy in, numpy out."""
    import torch

    with torch.inference_mode():
        return torch_fn(name)(*_to_torch(inputs)).numpy()


def run_numpy(name: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
    fn = numpy_fn(name)
    if fn is None:
        raise KeyError(f"no numpy baseline for zoo kernel {name!r}")
    return np.asarray(fn(*inputs))


# --------------------------------------------------------------------------------------
# TVM: target, naive build, run
# --------------------------------------------------------------------------------------


def default_target() -> tvm.target.Target:
    # Target strings ("llvm -mcpu=...") are rejected by TVM 0.27 and mcpu=native is not
    # accepted by the wheel's triple, so name the host CPU explicitly.
    return tvm.target.Target(
        {
            "kind": "llvm",
            "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
            "num-cores": num_threads(),
        }
    )


def build(func_or_mod: tvm.tirx.PrimFunc | tvm.IRModule, target: tvm.target.Target | None = None):
    mod = (
        func_or_mod
        if isinstance(func_or_mod, tvm.IRModule)
        else tvm.IRModule({"main": func_or_mod})
    )
    return tvm.compile(mod, target=target or default_target())


def tvm_naive(name: str, target: tvm.target.Target | None = None):
    """Build the zoo kernel's PrimFunc with no schedule at all (the speedup denominator)."""
    return build(zoo.prim_func(name), target)


def _runtime_module(executable_or_module: Any) -> Any:
    # tvm.compile returns a tvm.runtime.Executable whose .mod is the runtime Module.
    return getattr(executable_or_module, "mod", executable_or_module)


def _make_args(
    inputs: Sequence[np.ndarray], out_shapes: Sequence[tuple[tuple[int, ...], str]]
) -> list[Any]:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    args += [tvm.runtime.tensor(np.zeros(shape, dtype), dev) for shape, dtype in out_shapes]
    return args


def run_tvm(
    executable_or_module: Any,
    inputs: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[tuple[int, ...], str]],
) -> list[np.ndarray]:
    """Run a built kernel once and return its outputs as numpy arrays."""
    args = _make_args(inputs, out_shapes)
    _runtime_module(executable_or_module)["main"](*args)
    return [a.numpy() for a in args[len(inputs) :]]


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
    out_shapes: Sequence[tuple[tuple[int, ...], str]],
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


def time_tvm(
    executable_or_module: Any,
    inputs: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[tuple[int, ...], str]],
    *,
    number: int = 1,
    repeat: int = 10,
    min_repeat_ms: int = 50,
    stat: Stat = "median",
) -> float:
    """Median (or min) seconds per call of a built TVM kernel; see tvm_samples."""
    samples = tvm_samples(
        executable_or_module,
        inputs,
        out_shapes,
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
    )
    return summarize(samples, stat)


# --------------------------------------------------------------------------------------
# Python-side timers (torch, numpy)
# --------------------------------------------------------------------------------------


def _sample_callable(
    call: Callable[[], Any], *, repeat: int, min_repeat_ms: float, warmup: int, ctx: Any
) -> list[float]:
    with ctx:
        for _ in range(warmup):
            call()
        # Calibrate how many calls one repeat needs so that short kernels are not dominated
        # by timer resolution and Python overhead variance.
        t0 = time.perf_counter()
        call()
        once = max(time.perf_counter() - t0, 1e-7)
        number = max(1, int(np.ceil(min_repeat_ms / 1e3 / once)))
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                call()
            samples.append((time.perf_counter() - t0) / number)
    return samples


def torch_samples(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    repeat: int = 10,
    min_repeat_ms: float = 50,
    warmup: int = 3,
) -> list[float]:
    """Seconds per call of a torch callable on (numpy or torch) inputs, one per repeat."""
    import torch

    args = _to_torch(inputs)
    # Several warm-up calls: oneDNN picks and caches its kernels on the first calls.
    return _sample_callable(
        lambda: fn(*args),
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        warmup=warmup,
        ctx=torch.inference_mode(),
    )


def time_torch(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    repeat: int = 10,
    min_repeat_ms: float = 50,
    warmup: int = 3,
    stat: Stat = "median",
) -> float:
    """Median (or min) seconds per call of a torch callable, under torch.inference_mode."""
    samples = torch_samples(fn, inputs, repeat=repeat, min_repeat_ms=min_repeat_ms, warmup=warmup)
    return summarize(samples, stat)


def numpy_samples(
    fn: Callable[..., Any],
    inputs: Sequence[np.ndarray],
    *,
    repeat: int = 10,
    min_repeat_ms: float = 50,
    warmup: int = 2,
) -> list[float]:
    """Seconds per call of a numpy callable, one sample per repeat."""
    args = list(inputs)
    return _sample_callable(
        lambda: fn(*args),
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        warmup=warmup,
        ctx=nullcontext(),
    )


def time_numpy(
    fn: Callable[..., Any],
    inputs: Sequence[np.ndarray],
    *,
    repeat: int = 10,
    min_repeat_ms: float = 50,
    warmup: int = 2,
    stat: Stat = "median",
) -> float:
    """Median (or min) seconds per call of a numpy callable."""
    samples = numpy_samples(fn, inputs, repeat=repeat, min_repeat_ms=min_repeat_ms, warmup=warmup)
    return summarize(samples, stat)


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------


def reduction_length(name: str) -> int:
    """Product of the reduce-axis extents of the zoo kernel's stages (1 if none)."""
    longest = 1
    func = zoo.prim_func(name)
    sch = tvm.s_tir.Schedule(func)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        n = 1
        for iv in sch.get(b).iter_vars:
            if iv.iter_type == tvm.tirx.IterVar.CommReduce:
                n *= int(iv.dom.extent)
        longest = max(longest, n)
    return longest


def tolerance(name: str, expected: np.ndarray) -> tuple[float, float]:
    """(rtol, atol) for comparing two fp32 implementations of a zoo kernel.

    Different summation orders (BLAS blocking, parallel or split reductions vs a sequential
    loop) differ by roughly sqrt(K) ulps of the output's scale, and outputs that cancel to
    near zero get only the absolute part: so atol scales with sqrt(K) times the largest
    output magnitude. A wrong schedule is off by O(max|expected|), far above this.
    """
    k = reduction_length(name)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return 1e-4, max(1e-7, 2e-6 * float(np.sqrt(k)) * scale)


def assert_close(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    rtol, atol = tolerance(name, expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


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
