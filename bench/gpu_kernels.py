"""The kernels ``bench/gpu.py`` runs on a GPU: te DAGs, PyTorch baselines, references.

Each kernel is a te DAG (placeholders first, the output last, as in ``autosched.zoo``): the
zoo entry itself where one fits, else built here with the same ``te``/``topi`` computes. fp16
matmuls read fp16, accumulate in fp32 and write fp16 (a reduction stage and a cast stage), as
cuBLAS does for ``torch.matmul`` on fp16 tensors with reduced-precision reductions off.

Every kernel also names its PyTorch baseline (the ``bench.baselines`` one of the zoo kernel
computing the same function, on CUDA tensors) and its reference: float64 numpy for
matmuls (an unscheduled LLVM build of a 4096³ matmul takes minutes), the unscheduled
PrimFunc built for the host CPU otherwise (the reference ``bench.harness`` uses).

Nothing here imports torch or MetaSchedule at module level: ``bench/gpu.py --dry-run``
lists and compiles the kernels without either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tvm import te, topi

from autosched import zoo
from autosched.analysis import analyze
from bench.baselines import numpy_fn, torch_fn

Tensors = list[te.Tensor]
Family = Literal["matmul", "conv2d", "depthwise", "softmax", "layer_norm"]


@dataclass(frozen=True)
class GpuKernel:
    name: str
    family: Family
    description: str
    build: Callable[[], Tensors]
    #: The PyTorch function, made on first use (imports torch): takes CUDA tensors in the
    #: DAG's placeholder order.
    torch: Callable[[], Callable[..., Any]]
    #: float64 numpy implementation used as the reference, or None: the unscheduled
    #: PrimFunc built with LLVM is the reference.
    numpy_reference: Callable[..., np.ndarray] | None = None


# --------------------------------------------------------------------------------------
# te DAGs
# --------------------------------------------------------------------------------------


def matmul(m: int, n: int, k: int, dtype: str = "float32") -> Tensors:
    """C[m, n] = A[m, k] @ B[k, n]; for fp16, accumulated in fp32 and cast back."""
    a = te.placeholder((m, k), dtype, name="A")
    b = te.placeholder((k, n), dtype, name="B")
    r = te.reduce_axis((0, k), name="k")
    if dtype == "float32":
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
        return [a, b, c]
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(a[i, r].astype("float32") * b[r, j].astype("float32"), axis=r),
        name="C_acc",
    )
    return [a, b, te.compute((m, n), lambda i, j: acc[i, j].astype(dtype), name="C")]


def conv2d(c: int, hw: int, f: int, ksize: int, stride: int, pad: int) -> Tensors:
    """NCHW conv2d, batch 1 (inference), as ``zoo`` builds its conv layers."""
    data = te.placeholder((1, c, hw, hw), "float32", name="data")
    kernel = te.placeholder((f, c, ksize, ksize), "float32", name="kernel")
    return [data, kernel, topi.nn.conv2d_nchw(data, kernel, stride, pad, 1)]


def depthwise_conv2d(c: int, hw: int) -> Tensors:
    data = te.placeholder((1, c, hw, hw), "float32", name="data")
    kernel = te.placeholder((c, 1, 3, 3), "float32", name="kernel")
    return [data, kernel, topi.nn.depthwise_conv2d_nchw(data, kernel, 1, 1, 1)]


def softmax(m: int, n: int) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.nn.softmax(x, axis=-1)]


def layer_norm(m: int, n: int) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    gamma = te.placeholder((n,), "float32", name="gamma")
    beta = te.placeholder((n,), "float32", name="beta")
    return [x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[1])]


# --------------------------------------------------------------------------------------
# Baselines and references
# --------------------------------------------------------------------------------------


def like(zoo_name: str) -> Callable[[], Callable[..., Any]]:
    """The PyTorch baseline of the zoo kernel ``zoo_name``: the same function at any shape
    (matmul is ``a @ b``, a 3x3/2 conv is ``F.conv2d(stride=2, padding=1)``, ...)."""
    return lambda: torch_fn(zoo_name)


def _torch_conv2d(stride: int, pad: int) -> Callable[[], Callable[..., Any]]:
    """For the convs no zoo kernel computes (1x1 stride 1)."""

    def make() -> Callable[..., Any]:
        import torch.nn.functional as F

        return lambda data, kernel: F.conv2d(data, kernel, stride=stride, padding=pad)

    return make


def _conv_like(stride: int, pad: int) -> Callable[[], Callable[..., Any]]:
    zoo_conv = {
        (1, 1): "conv2d_resnet_c2",
        (2, 1): "conv2d_resnet_c4_s2",
        (2, 0): "conv2d_resnet_1x1",
    }
    name = zoo_conv.get((stride, pad))
    return like(name) if name else _torch_conv2d(stride, pad)


def _numpy_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mm = numpy_fn("matmul_1024")
    assert mm is not None
    return mm(a.astype(np.float64), b.astype(np.float64))


# --------------------------------------------------------------------------------------
# The list
# --------------------------------------------------------------------------------------


def _zoo(
    name: str, family: Family, reference: Callable[..., np.ndarray] | None = None
) -> GpuKernel:
    entry = zoo.get(name)
    return GpuKernel(name, family, entry.description, entry.build, like(name), reference)


def _matmul(name: str, m: int, n: int, k: int, dtype: str, what: str = "") -> GpuKernel:
    short = "fp16 (fp32 accumulate)" if dtype == "float16" else "fp32"
    return GpuKernel(
        name,
        "matmul",
        f"{short} matmul {m}x{n}x{k}{what}",
        lambda: matmul(m, n, k, dtype),
        like("matmul_1024"),
        _numpy_matmul,
    )


def _conv(name: str, c: int, hw: int, f: int, ksize: int, stride: int, what: str) -> GpuKernel:
    pad = ksize // 2
    return GpuKernel(
        name,
        "conv2d",
        f"ResNet-50 {what} {ksize}x{ksize}/{stride} {c}->{f} @{hw}x{hw}",
        lambda: conv2d(c, hw, f, ksize, stride, pad),
        _conv_like(stride, pad),
    )


# BERT-base at sequence length 128, batch 1: the QKV/output projection (768 -> 768) and
# the feed-forward pair (768 -> 3072 -> 768), as M x N x K.
_KERNELS: list[GpuKernel] = [
    _zoo("matmul_1024", "matmul", _numpy_matmul),
    _matmul("matmul_4096", 4096, 4096, 4096, "float32"),
    _matmul("matmul_f16_1024", 1024, 1024, 1024, "float16"),
    _matmul("matmul_f16_4096", 4096, 4096, 4096, "float16"),
    _matmul("bert_qkv_f16", 128, 768, 768, "float16", " (BERT-base QKV, seq 128)"),
    _matmul("bert_ffn1_f16", 128, 3072, 768, "float16", " (BERT-base FFN up, seq 128)"),
    _matmul("bert_ffn2_f16", 128, 768, 3072, "float16", " (BERT-base FFN down, seq 128)"),
    _matmul("bert_qkv", 128, 768, 768, "float32", " (BERT-base QKV, seq 128)"),
    _matmul("bert_ffn1", 128, 3072, 768, "float32", " (BERT-base FFN up, seq 128)"),
    _matmul("bert_ffn2", 128, 768, 3072, "float32", " (BERT-base FFN down, seq 128)"),
    _zoo("conv2d_resnet_c2", "conv2d"),  # also ResNet-50's conv2_x 3x3 64->64 @56
    _conv("conv2d_r50_1x1", 64, 56, 256, 1, 1, "conv2_x expand"),
    _conv("conv2d_r50_3x3_s2", 128, 56, 128, 3, 2, "conv3_1"),
    _conv("conv2d_r50_1x1_s2", 256, 56, 512, 1, 2, "conv3_1 downsample"),
    _conv("conv2d_r50_3x3_14", 256, 14, 256, 3, 1, "conv4_x"),
    _zoo("depthwise_conv2d", "depthwise"),
    GpuKernel(
        "depthwise_conv2d_112",
        "depthwise",
        "depthwise 3x3 96ch @112x112 (MobileNetV2 block 2)",
        lambda: depthwise_conv2d(96, 112),
        like("depthwise_conv2d"),
    ),
    GpuKernel(
        "softmax_4096", "softmax", "softmax 4096x1000", lambda: softmax(4096, 1000), like("softmax")
    ),
    _zoo("softmax", "softmax"),
    GpuKernel(
        "layer_norm_4096",
        "layer_norm",
        "layer norm 4096x768 (BERT-base, 32x128 tokens)",
        lambda: layer_norm(4096, 768),
        like("layer_norm"),
    ),
    _zoo("layer_norm", "layer_norm"),
]
KERNELS: dict[str, GpuKernel] = {k.name: k for k in _KERNELS}

#: What a plain run benchmarks: each family the issue names, at the sizes it names.
DEFAULT_KERNELS: list[str] = [
    "matmul_1024",
    "matmul_4096",
    "matmul_f16_1024",
    "matmul_f16_4096",
    "bert_qkv_f16",
    "bert_ffn1_f16",
    "bert_ffn2_f16",
    "conv2d_resnet_c2",
    "conv2d_r50_1x1",
    "conv2d_r50_3x3_s2",
    "conv2d_r50_1x1_s2",
    "depthwise_conv2d",
    "softmax_4096",
    "layer_norm_4096",
]


def unknown(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in KERNELS]


# --------------------------------------------------------------------------------------
# Checking an output
# --------------------------------------------------------------------------------------


def reduction_length(func: Any) -> int:
    """The longest reduction of any stage: reordered fp32 sums differ by ~sqrt(K) ulps."""
    return max(
        [math.prod(s.extents[i] for i in s.reduction_axes) for s in analyze(func)], default=1
    )


def compare(got: np.ndarray, expected: np.ndarray, k: int) -> str | None:
    """None when ``got`` matches ``expected`` (a float64 or fp32 reference), else what is off.

    fp32 outputs: the runner's rule (rtol 1e-4, atol growing with sqrt(K) times the output's
    scale). fp16 outputs: two correctly accumulated results may round one fp16 ulp
    (2^-10 relative) apart, so rtol is 2e-3.
    """
    from autosched.tune.runner_handlers import compare_to_reference

    ref = expected.astype(got.dtype).astype(np.float64) if got.dtype == np.float16 else expected
    rtol, atol = (2e-3, 1e-3) if got.dtype == np.float16 else (1e-4, 1e-4)
    return compare_to_reference(got, ref, rtol, atol, k)
