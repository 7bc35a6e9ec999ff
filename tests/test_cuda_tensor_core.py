"""Tensor cores as a knob of the CUDA complex reduction (issue 11): fp16 GEMMs (matmul,
dense, batch matmul) get ``tensor_core`` in {wmma, off} with tiles in 16x16x16 fragments,
static configs pick tensor cores, and every static and sampled config builds for sm_90
within the card's threads and shared memory. Numbers on a card: the ``gpu`` test."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import tvm
from tvm import te

from autosched.analysis import analyze
from autosched.gpu_hardware import detect_gpu_hardware
from autosched.host_description import cuda_devices
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from autosched.templates.cuda.common import kernel_shared_bytes
from autosched.templates.cuda.tensor_core_space import OFF, TENSOR_CORE, WMMA
from tests.cuda_support import (
    TensorBuilder,
    assert_valid_cuda,
    compile_cuda,
    launch_bounds,
    nvcc_available,
    ptxas_report,
)

H100 = "nvidia/nvidia-h100"
# Ten per workload in the suite (four workloads, ~1 s a build); more with the env variable.
RANDOM_CONFIGS = int(os.environ.get("AUTOSCHED_TEST_RANDOM_CONFIGS", "10"))
WMMA_CALL = "wmma::mma_sync"


def _matmul(m: int, n: int, k: int, out: str = "float32", dtype: str = "float16"):
    """C[i, j] = sum A[i, k] * B[k, j], accumulated in ``out``."""
    a = te.placeholder((m, k), dtype, name="A")
    b = te.placeholder((k, n), dtype, name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute(
        (m, n), lambda i, j: te.sum(a[i, r].astype(out) * b[r, j].astype(out), axis=r), name="C"
    )
    return [a, b, c]


def _dense(m: int, n: int, k: int, out: str = "float16"):
    """A linear layer's C = A W^T (k contiguous in both operands), accumulated in ``out``."""
    a = te.placeholder((m, k), "float16", name="A")
    w = te.placeholder((n, k), "float16", name="W")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute(
        (m, n), lambda i, j: te.sum(a[i, r].astype(out) * w[j, r].astype(out), axis=r), name="C"
    )
    return [a, w, c]


def _batch_matmul(b: int, m: int, n: int, k: int):
    x = te.placeholder((b, m, k), "float16", name="X")
    y = te.placeholder((b, k, n), "float16", name="Y")
    r = te.reduce_axis((0, k), name="k")
    z = te.compute(
        (b, m, n),
        lambda s, i, j: te.sum(x[s, i, r].astype("float32") * y[s, r, j].astype("float32"), r),
        name="C",
    )
    return [x, y, z]


WORKLOADS: dict[str, TensorBuilder] = {
    "matmul_1024": lambda: _matmul(1024, 1024, 1024),
    "matmul_4096x1000x512": lambda: _matmul(4096, 1000, 512),  # 1000: padded to the tile
    "dense_bert_fp16_out": lambda: _dense(128, 3072, 768),
    "batch_matmul": lambda: _batch_matmul(12, 128, 128, 64),
}


@pytest.fixture(scope="module")
def hw():
    return detect_gpu_hardware(tag=H100)


def _assert_within_limits(sch, src: str, hw) -> None:
    assert_valid_cuda(src, hw)
    shared = kernel_shared_bytes(sch.mod, hw)
    assert shared is not None and shared, "the kernels lower"
    assert max(shared) <= hw.gpu.max_shared_memory_per_block, shared  # static + dynamic


def test_fp32_and_bf16_matmuls_get_no_tensor_core_knob(hw):
    for dtype in ("float32", "bfloat16"):
        func = te.create_prim_func(_matmul(256, 256, 256, out="float32", dtype=dtype))
        (space,) = [s for s in build_template(func, hw).stages if s.stage == "C"]
        names = {k.name for k in space.knobs}
        assert TENSOR_CORE not in names and not {n for n in names if n.startswith("tc_")}
        assert TENSOR_CORE not in static_config(func, hw).values["C"]


def test_fp16_gemms_get_the_knob_in_fragments_with_gpu_limits(hw):
    for name, builder in WORKLOADS.items():
        func = te.create_prim_func(builder())
        (space,) = [s for s in build_template(func, hw).stages if s.stage == "C"]
        knobs = {k.name: k for k in space.knobs}
        assert knobs[TENSOR_CORE].choices == (WMMA, OFF), name
        stage = next(s for s in analyze(func) if s.name == "C")
        rows = stage.extents[-3] if name == "batch_matmul" else stage.extents[0]
        assert knobs["tc_i"].extent == -(-rows // 16), name  # counted in fragments
        limits = {lim.name: lim.limit for lim in space.limits}
        assert limits["tc_warps_per_block"] == hw.gpu.max_threads_per_block // 32
        assert {"tc_shared_a", "tc_shared_b", "tc_shared_output"} <= set(limits)
        assert static_config(func, hw).values["C"][TENSOR_CORE] == WMMA, name


@pytest.mark.slow
@pytest.mark.skipif(not nvcc_available(), reason="needs nvcc")
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_static_and_random_configs_build_with_tensor_cores(name, hw):
    func = te.create_prim_func(WORKLOADS[name]())
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random(11)
    configs = [static_config(func, hw, stages)] + [
        template.sample(rng) for _ in range(RANDOM_CONFIGS)
    ]
    on = 0
    for config in configs:
        sch = apply_config(func, config, hw, template, stages)
        _, src = compile_cuda(sch, hw)
        _assert_within_limits(sch, src, hw)
        if config.values["C"][TENSOR_CORE] == WMMA:
            on += 1
            assert WMMA_CALL in src, config.values["C"]
        ptxas_report(src, hw.gpu.arch)  # ptxas accepts what TVM emitted
    assert on >= 5, "both knob values are sampled"


@pytest.mark.slow
def test_tensor_cores_off_is_the_simt_kernel(hw):
    func = te.create_prim_func(_matmul(512, 512, 256))
    config = static_config(func, hw)
    values = dict(config.values["C"], **{TENSOR_CORE: OFF})
    off = Config({**config.values, "C": values})
    build_template(func, hw).validate(off)
    sch = apply_config(func, off, hw)
    _, src = compile_cuda(sch, hw)
    _assert_within_limits(sch, src, hw)
    assert WMMA_CALL not in src and "wmma" not in src
    _, src = compile_cuda(apply_config(func, config, hw), hw)
    assert WMMA_CALL in src and max(launch_bounds(src)) % 32 == 0  # whole warps


# -- on a card -------------------------------------------------------------------------------
HAS_GPU = bool(cuda_devices())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU or shutil.which("nvcc") is None, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["matmul_4096x1000x512", "dense_bert_fp16_out", "batch_matmul"])
def test_tensor_core_kernels_match_the_cpu_reference(name):
    """fp16 products are exact in fp32, so an fp32 accumulator differs from the float64
    reference only by summation order (relative 1e-3 of the row's magnitude is generous);
    an fp16 output is rounded once more (its 11-bit mantissa: relative 2e-3 per element,
    and the running fp16 sum loses a little more over k)."""
    hw = detect_gpu_hardware(device=0)
    tensors = WORKLOADS[name]()
    func = te.create_prim_func(tensors)
    config = static_config(func, hw)
    assert config.values["C"][TENSOR_CORE] == WMMA
    executable, _ = compile_cuda(apply_config(func, config, hw), hw)
    rng = np.random.default_rng(0)
    args = [rng.uniform(-1, 1, [int(d) for d in t.shape]).astype(t.dtype) for t in tensors[:-1]]
    out = tensors[-1]
    dev = tvm.cuda(0)
    buffers = [tvm.runtime.tensor(a, dev) for a in args]
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], out.dtype), dev)
    executable["main"](*buffers, result)
    lhs, rhs = (a.astype(np.float64) for a in args)
    want = np.matmul(lhs, rhs.swapaxes(-1, -2) if name.startswith("dense") else rhs)
    k = lhs.shape[-1]
    scale = np.sqrt(k)  # uniform(-1, 1) products: the sum's magnitude grows like sqrt(k)
    fp16_out = out.dtype == "float16"
    np.testing.assert_allclose(
        result.numpy().astype(np.float64),
        want,
        rtol=1e-2 if fp16_out else 1e-3,
        atol=(1e-2 if fp16_out else 1e-3) * scale,
    )
