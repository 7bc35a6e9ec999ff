"""The roofline the benchmarks print: work counts, the share of the roof, and the kernels that
measure the machine.

A FLOP or byte count off by a factor, or a share taken against the wrong roof, would make
every roof column lie; the counts are pinned to hand-computed values on small kernels.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import tvm
from tvm import te

# bench/ is a top-level folder, not part of the installed package (see test_baselines.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosched.hardware import cpu_target, detect_hardware
from bench import report, roofline

# --------------------------------------------------------------------------------------
# FLOP and byte counts
# --------------------------------------------------------------------------------------


def _matmul(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    a = te.placeholder((m, k), "float32", name="A")
    b = te.placeholder((k, n), "float32", name="B")
    r = te.reduce_axis((0, k), "r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return te.create_prim_func([a, b, c])


def _add(m: int, n: int, dtype: str) -> tvm.tirx.PrimFunc:
    x = te.placeholder((m, n), dtype, name="X")
    y = te.placeholder((m, n), dtype, name="Y")
    z = te.compute((m, n), lambda i, j: x[i, j] + y[i, j], name="Z")
    return te.create_prim_func([x, y, z])


def _row_sum(m: int, n: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((m, n), "float32", name="X")
    r = te.reduce_axis((0, n), "r")
    s = te.compute((m,), lambda i: te.sum(x[i, r], axis=r), name="S")
    return te.create_prim_func([x, s])


def test_matmul_counts_two_flop_per_multiply_add_and_each_matrix_once() -> None:
    f = _matmul(8, 4, 16)
    assert report.gflop(f) * 1e9 == pytest.approx(2 * 8 * 4 * 16)
    assert roofline.min_bytes(f) == 4 * (8 * 16 + 16 * 4 + 8 * 4)


def test_elementwise_counts_one_flop_an_element_and_its_dtype_width() -> None:
    assert report.gflop(_add(32, 8, "float32")) * 1e9 == pytest.approx(32 * 8)
    assert roofline.min_bytes(_add(32, 8, "float32")) == 3 * 32 * 8 * 4
    assert roofline.min_bytes(_add(32, 8, "float16")) == 3 * 32 * 8 * 2


def test_reduction_counts_one_add_an_input_element() -> None:
    f = _row_sum(32, 8)
    assert report.gflop(f) * 1e9 == pytest.approx(32 * 8)
    assert roofline.min_bytes(f) == 4 * (32 * 8 + 32)


def test_zoo_matmul_bytes() -> None:
    machine = roofline.Roofline(100.0, 10.0, 8.0, 1 << 20)
    share = roofline.place_zoo_kernel(machine, "matmul_512", 2 * 512**3 / 1e9, 1e-3)
    assert share is not None and share.gbs == pytest.approx(3 * 512 * 512 * 4 / 1e-3 / 1e9)


# --------------------------------------------------------------------------------------
# Share of the roof and the bound that applies
# --------------------------------------------------------------------------------------

# Ridge at 100 / 10 = 10 FLOP per byte.
MACHINE = roofline.Roofline(fma_gflops=100.0, copy_gbs=10.0, triad_gbs=8.0, stream_array_bytes=1)


def test_ridge_is_peak_over_copy_bandwidth() -> None:
    assert MACHINE.ridge == pytest.approx(10.0)


def test_above_the_ridge_the_share_is_of_the_fma_peak() -> None:
    # 2 GFLOP over 0.1 GB: 20 FLOP/B; in 40 ms that is 50 GFLOP/s of 100.
    share = roofline.place(2.0, 100_000_000, 0.04, MACHINE)
    assert share is not None
    assert share.bound == "compute"
    assert share.intensity == pytest.approx(20.0)
    assert share.gflops == pytest.approx(50.0)
    assert share.gbs == pytest.approx(2.5)
    assert share.share == pytest.approx(0.5)
    assert report.roof_cell(share) == "50% FMA"


def test_below_the_ridge_the_share_is_of_the_copy_bandwidth() -> None:
    # 0.1 GFLOP over 1 GB: 0.1 FLOP/B; in 125 ms that is 8 GB/s of 10.
    share = roofline.place(0.1, 1_000_000_000, 0.125, MACHINE)
    assert share is not None
    assert share.bound == "memory"
    assert share.share == pytest.approx(0.8)
    assert report.roof_cell(share) == "80% copy"


def test_pure_data_movement_is_memory_bound_and_the_ridge_itself_compute_bound() -> None:
    transpose = roofline.place(0.0, 1_000_000_000, 0.1, MACHINE)
    assert transpose is not None and transpose.bound == "memory"
    at_ridge = roofline.place(10.0, 1_000_000_000, 1.0, MACHINE)
    assert at_ridge is not None and at_ridge.bound == "compute"


def test_no_share_without_a_latency_or_traffic() -> None:
    assert roofline.place(1.0, 1000, None, MACHINE) is None
    assert roofline.place(1.0, 1000, 0.0, MACHINE) is None
    assert roofline.place(1.0, 0, 1.0, MACHINE) is None
    assert report.roof_cell(None) == "-"


# --------------------------------------------------------------------------------------
# Measuring the machine
# --------------------------------------------------------------------------------------

_REGISTER_FMA = re.compile(r"vfmadd\w+\s+%[xyz]mm\d+, %[xyz]mm\d+, %[xyz]mm\d+\s*$")


@pytest.mark.skipif(
    "fma" not in Path("/proc/cpuinfo").read_text(), reason="needs an x86 CPU with FMA"
)
def test_fma_kernel_issues_independent_register_fmas() -> None:
    hw = detect_hardware()
    func = roofline.fma_func(2, hw.vector_lanes_f32, 1000)
    asm = tvm.compile(tvm.IRModule({"main": func}), cpu_target(hw)).mod.inspect_source("asm")
    fmas = [line for line in asm.splitlines() if "vfmadd" in line]
    # One FMA per accumulator per step at least, every one on registers only: a spilled
    # accumulator would read or write memory and the peak would be the cache's, not the FMAs'.
    assert len(fmas) >= roofline.FMA_ACCUMULATORS
    assert all(_REGISTER_FMA.search(line) for line in fmas), fmas
    accumulators = {line.split(",")[-1].strip() for line in fmas}
    assert len(accumulators) == roofline.FMA_ACCUMULATORS


def test_measure_machine_with_tiny_sizes_returns_positive_figures() -> None:
    machine = roofline.measure_machine(array_bytes=1 << 20, fma_iterations=1000, repeats=2)
    assert machine.fma_gflops > 0
    assert machine.copy_gbs > 0
    assert machine.triad_gbs > 0
    assert machine.stream_array_bytes == 1 << 20


def test_stream_arrays_are_four_times_the_last_level_cache_within_bounds() -> None:
    hw = detect_hardware()
    for l3, array in [
        (8 << 20, roofline.STREAM_MIN_ARRAY_BYTES),
        (32 << 20, 128 << 20),
        (1 << 30, roofline.STREAM_MAX_ARRAY_BYTES),
    ]:
        assert roofline.stream_array_bytes(replace(hw, l3_bytes=l3)) == array
