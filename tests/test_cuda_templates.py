"""CUDA meta-templates (direct compute, simple reduction, location-tunable) on a machine
without a GPU: for zoo kernels without a tiled reduction and te DAGs of awkward shapes, the
static config and random configs validate, apply and build for sm_90, and the CUDA source
keeps within the card's limits and does what the knobs say."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import tvm
from tvm import te, tirx, topi

from autosched.analysis import MetaTemplateKind, analyze
from autosched.gpu_hardware import detect_gpu_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from tests.cuda_support import (
    OTHER_TEMPLATE_KERNELS,
    TensorBuilder,
    assert_valid_cuda,
    compile_cuda,
    has_cross_thread_reduction,
    kernels,
    launch_bounds,
    nvcc_available,
    ptxas_report,
    shared_bytes,
    zoo_builders,
)

RANDOM_CONFIGS = 20
H100 = "nvidia/nvidia-h100"


def _awkward_elementwise() -> list[te.Tensor]:
    x = te.placeholder((1000, 37), "float32", name="X")
    y = te.placeholder((1000, 37), "float32", name="Y")
    t = te.compute((1000, 37), lambda i, j: x[i, j] * 2.0 + y[i, j], name="scale_add")
    zero = tirx.const(0.0, "float32")
    return [x, y, te.compute((1000, 37), lambda i, j: te.max(t[i, j], zero), name="relu")]


def _middle_axis_sum() -> list[te.Tensor]:
    x = te.placeholder((16, 300, 299), "float32", name="X")
    r = te.reduce_axis((0, 300), name="r")
    return [x, te.compute((16, 299), lambda i, k: te.sum(x[i, r, k], axis=r), name="mid_sum")]


def _reshape_then_reduce() -> list[te.Tensor]:
    x = te.placeholder((64, 48), "float32", name="X")
    flat = te.compute((48, 64), lambda i, j: x[(i * 64 + j) // 48, (i * 64 + j) % 48], name="flat")
    r = te.reduce_axis((0, 64), name="r")
    total = te.compute((48,), lambda i: te.sum(flat[i, r], axis=r), name="total")
    return [x, te.compute((48,), lambda i: total[i] * 0.5, name="half")]


def _int32_elementwise() -> list[te.Tensor]:
    a = te.placeholder((513, 64), "int32", name="A")
    b = te.placeholder((513, 64), "int32", name="B")
    return [a, b, te.compute((513, 64), lambda i, j: a[i, j] * b[i, j] + 3, name="madd")]


def _exp_then_row_sum() -> list[te.Tensor]:
    x = te.placeholder((256, 1000), "float32", name="X")
    e = te.compute((256, 1000), lambda i, j: te.exp(x[i, j]), name="expx")
    r = te.reduce_axis((0, 1000), name="r")
    return [x, te.compute((256,), lambda i: te.sum(e[i, r], axis=r), name="exp_sum")]


def _full_sum() -> list[te.Tensor]:
    x = te.placeholder((1000, 37), "float32", name="X")
    r0 = te.reduce_axis((0, 1000), name="r0")
    r1 = te.reduce_axis((0, 37), name="r1")
    return [x, te.compute((1,), lambda _: te.sum(x[r0, r1], axis=[r0, r1]), name="full_sum")]


def _outer_axes_sum() -> list[te.Tensor]:
    x = te.placeholder((6, 33, 50), "float32", name="X")
    r0 = te.reduce_axis((0, 6), name="r0")
    r2 = te.reduce_axis((0, 50), name="r2")
    return [x, te.compute((33,), lambda j: te.sum(x[r0, j, r2], axis=[r0, r2]), name="outer_sum")]


def _permute_3d_add() -> list[te.Tensor]:
    x = te.placeholder((70, 5, 37), "float32", name="X")
    b = te.placeholder((37, 5, 70), "float32", name="B")
    return [x, b, te.compute((37, 5, 70), lambda i, j, k: x[k, j, i] + b[i, j, k], name="perm")]


def _argmax() -> list[te.Tensor]:
    x = te.placeholder((100, 77), "float32", name="X")
    return [x, topi.argmax(x, axis=1)]


WORKLOADS: dict[str, TensorBuilder] = {
    **zoo_builders(OTHER_TEMPLATE_KERNELS),
    "awkward_elementwise": _awkward_elementwise,
    "middle_axis_sum": _middle_axis_sum,
    "reshape_then_reduce": _reshape_then_reduce,
    "int32_elementwise": _int32_elementwise,
    "exp_then_row_sum": _exp_then_row_sum,
    "full_sum": _full_sum,
    "outer_axes_sum": _outer_axes_sum,
    "permute_3d_add": _permute_3d_add,
    "argmax": _argmax,
}


@pytest.fixture(scope="module")
def hw():
    return detect_gpu_hardware(tag=H100)


def _func(name: str) -> tirx.PrimFunc:
    return te.create_prim_func(WORKLOADS[name]())


def _cross_thread_stages(func: tirx.PrimFunc, config: Config) -> list[str]:
    return [
        s.name
        for s in analyze(func)
        if s.meta_template == MetaTemplateKind.SIMPLE_REDUCTION
        and config.values[s.name]["strategy"] == "cross_thread"
    ]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_static_and_random_configs_build_within_the_gpu_limits(name, hw):
    func = _func(name)
    stages = analyze(func)
    assert not any(s.meta_template == MetaTemplateKind.COMPLEX_REDUCTION for s in stages)
    template = build_template(func, hw, stages)
    rng = random.Random(f"cuda-{name}")
    configs = [static_config(func, hw, stages)] + [
        template.sample(rng) for _ in range(RANDOM_CONFIGS)
    ]
    for config in configs:
        template.validate(config)
        sch = apply_config(func, config, hw, template, stages)
        _, src = compile_cuda(sch, hw)
        assert_valid_cuda(src, hw)
        if _cross_thread_stages(func, config):
            assert has_cross_thread_reduction(src), config.to_json()


def test_static_configs_fit_a_smaller_gpu(hw):
    """Knob domains and limits follow the card: 256 threads and 16 KiB per block."""
    small = replace(
        hw, gpu=replace(hw.gpu, max_threads_per_block=256, max_shared_memory_per_block=16384)
    )
    for name in ("softmax", "transpose", "exp_then_row_sum", "max_pool"):
        func = _func(name)
        template = build_template(func, small)
        rng = random.Random(name)
        for config in [static_config(func, small)] + [template.sample(rng) for _ in range(5)]:
            template.validate(config)
            _, src = compile_cuda(apply_config(func, config, small, template), small)
            assert_valid_cuda(src, small)


def _static_source(name: str, hw, **overrides: dict) -> tuple[Config, str]:
    func = _func(name)
    doc = static_config(func, hw).to_json()
    for stage, values in overrides.items():
        doc["stages"][stage].update(values)
    config = Config.from_json(doc)
    build_template(func, hw).validate(config)
    return config, compile_cuda(apply_config(func, config, hw), hw)[1]


def test_long_rows_reduce_across_threads_with_warp_shuffles(hw):
    config, src = _static_source("row_sum", hw)
    assert config.get("row_sum", "strategy") == "cross_thread"
    assert "__shfl_down_sync" in src
    assert launch_bounds(src) == [config.get("row_sum", "reduce")[1]]


def test_several_rows_per_block_bind_thread_y(hw):
    _, src = _static_source(
        "row_sum", hw, row_sum={"strategy": "cross_thread", "reduce": [32, 32], "rows": [128, 8]}
    )
    assert launch_bounds(src) == [256]
    assert "threadIdx.y" in src and "__shfl_down_sync" in src


def test_a_strided_reduction_keeps_one_thread_per_output_in_a_register(hw):
    """Summing over the middle axis: consecutive outputs are consecutive in memory, so one
    thread per output reads coalesced; the accumulator is a register, stored once."""
    config, src = _static_source("middle_axis_sum", hw)
    assert config.get("mid_sum", "strategy") == "thread_per_output"
    assert "mid_sum_local" in src and "__shfl" not in src


def test_a_transposed_read_is_staged_through_padded_shared_tiles(hw):
    config, src = _static_source("transpose", hw)
    assert config.get("T_transpose", "shared_tile") is True
    # one 32x32 tile, each row padded by one element against bank conflicts
    assert shared_bytes(src) == 32 * 33 * 4
    _, plain = _static_source("transpose", hw, T_transpose={"shared_tile": False})
    assert shared_bytes(plain) == 0


def test_elementwise_stages_inline_into_one_vectorized_kernel(hw):
    _, src = _static_source("elementwise_chain", hw)
    assert len(kernels(src)) == 1
    assert "float4" in src


def test_padding_computed_per_thread_of_a_pooling_fuses_into_one_kernel(hw):
    _, src = _static_source("max_pool", hw, pad_temp={"location": "consumer_thread"})
    assert len(kernels(src)) == 1
    assert "pad_temp_local" in src


def test_a_producer_at_the_block_of_a_cross_thread_reduction_lives_in_shared_memory(hw):
    _, src = _static_source("exp_then_row_sum", hw, expx={"location": "consumer_block"})
    assert len(kernels(src)) == 1
    assert shared_bytes(src) >= 1000 * 4  # one row of exp(x) per block
    assert "__shfl_down_sync" in src


def test_a_placement_that_would_overflow_shared_memory_falls_back_to_root(hw):
    """256 pooling outputs per block need most of two padded channels in shared memory
    (over 48 KiB): the producer gets a kernel of its own instead."""
    _, src = _static_source("max_pool", hw, pad_temp={"location": "consumer_block"})
    assert len(kernels(src)) == 2
    assert shared_bytes(src) == 0


def test_a_row_per_thread_is_too_much_local_memory_and_falls_back_to_root(hw):
    _, src = _static_source(
        "exp_then_row_sum",
        hw,
        expx={"location": "consumer_thread"},
        exp_sum={"strategy": "thread_per_output"},
    )
    assert len(kernels(src)) == 2


def test_applying_a_cuda_config_is_deterministic(hw):
    func = _func("softmax")
    template = build_template(func, hw)
    config = template.sample(random.Random(3))
    first = apply_config(func, config, hw).mod
    second = apply_config(func, config, hw).mod
    tvm.ir.assert_structural_equal(first, second)


@pytest.mark.skipif(not nvcc_available(), reason="nvcc is not installed")
def test_ptxas_assembles_the_static_kernels(hw):
    """TVM's build stops at CUDA source here; nvcc checks that it is valid CUDA for sm_90."""
    for name, overrides in (
        ("softmax", {}),
        ("transpose", {}),
        ("max_pool", {"pad_temp": {"location": "consumer_thread"}}),
    ):
        _, src = _static_source(name, hw, **overrides)
        report = ptxas_report(src, hw.gpu.arch)
        assert "spill" in report
