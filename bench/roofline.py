"""The machine's roofline, measured in the benchmark's own process, and where a kernel sits.

Two roofs, both measured on all cores (``TVM_NUM_THREADS``) with kernels TVM builds for the
benchmark's own target, so that a kernel is compared with what this code generator can reach
on this machine at this moment (the shared machines' load moves every figure):

- the FMA peak: fp32 vector FMAs kept in registers, no memory traffic in the loop;
- STREAM-like copy (``c = a``) and triad (``c = a + s*b``) bandwidth on float64 arrays far
  beyond the last-level cache, counted the STREAM way (copy 2 x 8 B, triad 3 x 8 B an element),
  best of N repeats.

A kernel's share of the roof that bounds it follows from its FLOP count, the minimum bytes it
must move (every parameter buffer read or written once) and its latency: below the ridge point
(FMA peak / copy bandwidth, in FLOP per byte) it is memory-bound and is measured against copy
bandwidth, above it against the FMA peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from autosched import zoo
from autosched.hardware import HardwareParams, cpu_target, detect_hardware
from bench.harness import num_threads

Bound = Literal["compute", "memory"]

# Independent accumulators per thread in the FMA kernel. An FMA has a latency of ~4 cycles and
# two issue ports, so at least 8 must be in flight; 12 leaves margin and still fits in the 16
# registers of AVX2 beside the two constants (AVX-512 has 32).
FMA_ACCUMULATORS = 12
# FMA chain steps per call: 2 threads x 12 x 16 lanes x 2 FLOP x 200k = 154 MFLOP, ~1 ms.
FMA_ITERATIONS = 200_000
# STREAM's rule: each array at least 4x the last-level cache. Capped so that the three triad
# arrays stay within a few GiB of a shared machine (a VM may report the host's whole L3).
STREAM_MAX_ARRAY_BYTES = 1 << 30
STREAM_MIN_ARRAY_BYTES = 64 << 20
STREAM_SCALAR = 3.0
STREAM_DTYPE = "float64"
STREAM_ITEM_BYTES = 8
REPEATS = 5


@dataclass(frozen=True)
class Roofline:
    """The measured roofs: fp32 FMA peak (GFLOP/s), copy and triad bandwidth (GB/s)."""

    fma_gflops: float
    copy_gbs: float
    triad_gbs: float
    stream_array_bytes: int  # size of each STREAM array, to judge whether it beat the caches

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two roofs meet."""
        return self.fma_gflops / self.copy_gbs


@dataclass(frozen=True)
class RoofShare:
    """Where one kernel run sits: the bound that applies and its share of that roof."""

    bound: Bound
    share: float  # achieved / roof, 1.0 = on the roof
    gflops: float
    gbs: float
    intensity: float  # FLOP per byte of the minimum traffic


# --------------------------------------------------------------------------------------
# Counting work
# --------------------------------------------------------------------------------------


def min_bytes(func: tvm.tirx.PrimFunc) -> int:
    """The least traffic a call can cause: every parameter buffer (inputs and outputs) moved
    once. Intermediate buffers are left out: a good schedule keeps them in cache."""
    total_bits = 0
    for param in func.params:
        dtype = tvm.runtime.DataType(str(param.dtype))
        total_bits += math.prod(int(d) for d in param.shape) * dtype.bits * dtype.lanes
    return (total_bits + 7) // 8


def place(
    gflop: float, nbytes: int, latency_s: float | None, machine: Roofline
) -> RoofShare | None:
    """Share of the roof that bounds a kernel of ``gflop`` GFLOP moving ``nbytes`` bytes in
    ``latency_s``; None without a latency or traffic to judge."""
    if not latency_s or latency_s <= 0 or nbytes <= 0:
        return None
    gflops = gflop / latency_s
    gbs = nbytes / latency_s / 1e9
    intensity = gflop * 1e9 / nbytes
    if intensity >= machine.ridge:
        return RoofShare("compute", gflops / machine.fma_gflops, gflops, gbs, intensity)
    return RoofShare("memory", gbs / machine.copy_gbs, gflops, gbs, intensity)


def place_zoo_kernel(
    machine: Roofline, kernel: str, gflop: float, latency_s: float | None
) -> RoofShare | None:
    """Where a run of the zoo kernel ``kernel`` taking ``latency_s`` sits on ``machine``."""
    return place(gflop, min_bytes(zoo.prim_func(kernel)), latency_s, machine)


# --------------------------------------------------------------------------------------
# Kernels that measure the roofs
# --------------------------------------------------------------------------------------


def fma_func(threads: int, lanes: int, iterations: int) -> tvm.tirx.PrimFunc:
    """Each thread runs ``FMA_ACCUMULATORS`` independent chains ``acc = acc * m + c`` of
    ``lanes``-wide fp32 vectors. Each step depends on the previous one, so LLVM cannot fold
    the loop away, and the chains are independent, so they hide the FMA latency.

    Checked on the 2-core AVX-512 Xeon (rocketlake target, 2.6 GHz TSC): the loop body is 12
    ``vfmadd213ps`` on zmm registers (24 after LLVM's 2x unroll) with no load or store
    (``tests/test_bench_roofline.py`` keeps this check). It reached 443 GFLOP/s on a quiet
    moment (216-238 under other helpers' load): 2 cores x 16 lanes x 2 FMA ports x 2 FLOP =
    128 FLOP a cycle, so 3.5 GHz, within the part's turbo range; one FMA port could give at
    most 64 FLOP a cycle, 256 GFLOP/s even at 4 GHz, so both ports issue.
    """
    shape = (threads, FMA_ACCUMULATORS, lanes)
    accs = FMA_ACCUMULATORS

    @T.prim_func
    def main(seed: T.Buffer(shape, "float32"), out: T.Buffer(shape, "float32")) -> None:
        for t in T.parallel(threads):
            acc = T.decl_buffer((accs, lanes), "float32")
            for j in T.unroll(accs):
                for v in T.vectorized(lanes):
                    acc[j, v] = seed[t, j, v]
            for _ in range(iterations):
                for j in T.unroll(accs):
                    for v in T.vectorized(lanes):
                        # Converges to 1: no overflow or denormal slows the chain down.
                        acc[j, v] = acc[j, v] * T.float32(0.999) + T.float32(0.001)
            for j in T.unroll(accs):
                for v in T.vectorized(lanes):
                    out[t, j, v] = acc[j, v]

    return main


def _parallel_vectorized(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.IRModule:
    sch = tvm.s_tir.Schedule(func)
    (block,) = sch.get_child_blocks(sch.get_sblock("root"))
    (loop,) = sch.get_loops(block)
    outer, inner = sch.split(loop, [None, lanes])
    sch.parallel(outer)
    sch.vectorize(inner)
    return sch.mod


def stream_funcs(n: int) -> tuple[tvm.tirx.PrimFunc, tvm.tirx.PrimFunc]:
    """STREAM copy ``c = a`` and triad ``c = a + s*b`` over ``n`` float64 elements."""
    a = te.placeholder((n,), STREAM_DTYPE, name="a")
    b = te.placeholder((n,), STREAM_DTYPE, name="b")
    copy = te.compute((n,), lambda i: a[i], name="c")
    scalar = tvm.tirx.const(STREAM_SCALAR, STREAM_DTYPE)
    triad = te.compute((n,), lambda i: a[i] + scalar * b[i], name="c")
    return te.create_prim_func([a, copy]), te.create_prim_func([a, b, triad])


def stream_array_bytes(hw: HardwareParams) -> int:
    return min(max(4 * hw.l3_bytes, STREAM_MIN_ARRAY_BYTES), STREAM_MAX_ARRAY_BYTES)


def _best_seconds(module: Any, args: list[Any], repeats: int) -> float:
    # time_evaluator makes one untimed warm-up call first; STREAM too drops its first pass.
    timer = module.time_evaluator("main", tvm.cpu(), number=1, repeat=repeats)
    return float(min(timer(*args).results))


def _filled(n: int, value: float) -> Any:
    # Allocated by TVM (aligned as its kernels expect) and filled in place through a numpy
    # view, so a GiB array is never held twice.
    tensor = tvm.runtime.empty((n,), STREAM_DTYPE, tvm.cpu())
    np.from_dlpack(tensor)[:] = value
    return tensor


def measure_fma_gflops(
    hw: HardwareParams, target: tvm.target.Target, iterations: int, repeats: int
) -> float:
    threads, lanes = num_threads(), hw.vector_lanes_f32
    module = tvm.compile(tvm.IRModule({"main": fma_func(threads, lanes, iterations)}), target)
    shape = (threads, FMA_ACCUMULATORS, lanes)
    args = [tvm.runtime.tensor(np.ones(shape, "float32"), tvm.cpu()) for _ in range(2)]
    flop = 2.0 * math.prod(shape) * iterations
    return flop / _best_seconds(module.mod, args, repeats) / 1e9


def measure_stream_gbs(
    hw: HardwareParams, target: tvm.target.Target, array_bytes: int, repeats: int
) -> tuple[float, float]:
    """Copy and triad bandwidth in GB/s over arrays of about ``array_bytes`` each."""
    # A few vectors per parallel iteration; n rounded to it so no tail predicate remains.
    lanes = 4 * hw.vector_bits // 64
    n = max(array_bytes // STREAM_ITEM_BYTES // lanes, 1) * lanes
    copy_func, triad_func = stream_funcs(n)
    copy = tvm.compile(_parallel_vectorized(copy_func, lanes), target)
    triad = tvm.compile(_parallel_vectorized(triad_func, lanes), target)
    a, b, c = _filled(n, 1.0), _filled(n, 2.0), _filled(n, 0.0)
    copy_s = _best_seconds(copy.mod, [a, c], repeats)
    triad_s = _best_seconds(triad.mod, [a, b, c], repeats)
    return 2 * STREAM_ITEM_BYTES * n / copy_s / 1e9, 3 * STREAM_ITEM_BYTES * n / triad_s / 1e9


def measure_machine(
    hw: HardwareParams | None = None,
    target: tvm.target.Target | None = None,
    *,
    array_bytes: int | None = None,
    fma_iterations: int = FMA_ITERATIONS,
    repeats: int = REPEATS,
) -> Roofline:
    """Measure the roofs now, in this process (call after ``harness.setup_threads``)."""
    hw = hw or detect_hardware()
    target = target or cpu_target(hw)
    array_bytes = array_bytes or stream_array_bytes(hw)
    fma = measure_fma_gflops(hw, target, fma_iterations, repeats)
    copy, triad = measure_stream_gbs(hw, target, array_bytes, repeats)
    return Roofline(fma, copy, triad, array_bytes)
