"""Named example workloads (the kernel zoo), written in plain ``te``/``topi`` compute.

Each entry builds a fresh list of tensors: the placeholders first, the outputs last, exactly
the argument list ``te.create_prim_func`` takes. Tests, benchmarks and examples use them; the
scheduler itself never special-cases them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvm import te, tirx, topi

from autosched.errors import UnknownWorkloadError

Tensors = list[te.Tensor]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # which baseline compares to it: matmul, conv, network, other
    description: str
    build: Callable[[], Tensors]


def _matmul(m: int, n: int, k: int) -> Tensors:
    a = te.placeholder((m, k), "float32", name="A")
    b = te.placeholder((k, n), "float32", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return [a, b, c]


def _dense_bias_relu(m: int = 128, n: int = 1024, k: int = 1024) -> Tensors:
    x = te.placeholder((m, k), "float32", name="X")
    w = te.placeholder((n, k), "float32", name="W")
    b = te.placeholder((n,), "float32", name="bias")
    d = topi.nn.dense(x, w)
    out = topi.nn.relu(topi.add(d, b))
    return [x, w, b, out]


def _batch_matmul(b: int = 12, m: int = 128, k: int = 64, n: int = 128) -> Tensors:
    x = te.placeholder((b, m, k), "float32", name="X")
    y = te.placeholder((b, n, k), "float32", name="Y")
    return [x, y, topi.nn.batch_matmul(x, y)]


def _conv2d(n: int, c: int, hw: int, f: int, ksize: int, stride: int, pad: int) -> Tensors:
    data = te.placeholder((n, c, hw, hw), "float32", name="data")
    kernel = te.placeholder((f, c, ksize, ksize), "float32", name="kernel")
    out = topi.nn.conv2d_nchw(data, kernel, stride, pad, 1)
    return [data, kernel, out]


def _conv2d_bias_relu(
    n: int = 1, c: int = 64, hw: int = 56, f: int = 64, stride: int = 1
) -> Tensors:
    data = te.placeholder((n, c, hw, hw), "float32", name="data")
    kernel = te.placeholder((f, c, 3, 3), "float32", name="kernel")
    bias = te.placeholder((f, 1, 1), "float32", name="bias")
    conv = topi.nn.conv2d_nchw(data, kernel, stride, 1, 1)
    return [data, kernel, bias, topi.nn.relu(topi.add(conv, bias))]


def _depthwise_conv2d(n: int = 1, c: int = 128, hw: int = 56) -> Tensors:
    data = te.placeholder((n, c, hw, hw), "float32", name="data")
    kernel = te.placeholder((c, 1, 3, 3), "float32", name="kernel")
    return [data, kernel, topi.nn.depthwise_conv2d_nchw(data, kernel, 1, 1, 1)]


def _max_pool(n: int = 1, c: int = 64, hw: int = 112) -> Tensors:
    data = te.placeholder((n, c, hw, hw), "float32", name="data")
    out = topi.nn.pool2d(data, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max")
    return [data, out]


def _softmax(m: int = 256, n: int = 1000) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.nn.softmax(x, axis=-1)]


def _layer_norm(m: int = 512, n: int = 768) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    gamma = te.placeholder((n,), "float32", name="gamma")
    beta = te.placeholder((n,), "float32", name="beta")
    return [x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[1])]


def _gelu(m: int = 256, n: int = 3072) -> Tensors:
    """BERT's GELU, exact form: 0.5 x (1 + erf(x / sqrt 2))."""
    x = te.placeholder((m, n), "float32", name="X")
    half, rsqrt2 = tirx.const(0.5, "float32"), tirx.const(0.7071067811865476, "float32")
    one = tirx.const(1.0, "float32")
    return [
        x,
        te.compute(
            (m, n), lambda i, j: half * x[i, j] * (one + te.erf(x[i, j] * rsqrt2)), name="gelu"
        ),
    ]


def _matvec(m: int = 8192, k: int = 2048) -> Tensors:
    """A matrix-vector product whose matrix (64 MiB) does not fit in cache: memory-bound."""
    a = te.placeholder((m, k), "float32", name="A")
    x = te.placeholder((k,), "float32", name="x")
    r = te.reduce_axis((0, k), name="k")
    return [a, x, te.compute((m,), lambda i: te.sum(a[i, r] * x[r], axis=r), name="y")]


def _mlp(tokens: int = 128, width: int = 768, hidden: int = 3072) -> Tensors:
    """dense -> bias -> ReLU -> dense -> bias: a transformer feed-forward block."""
    x = te.placeholder((tokens, width), "float32", name="X")
    w1 = te.placeholder((hidden, width), "float32", name="W1")
    b1 = te.placeholder((hidden,), "float32", name="b1")
    w2 = te.placeholder((width, hidden), "float32", name="W2")
    b2 = te.placeholder((width,), "float32", name="b2")
    h = topi.nn.relu(topi.nn.dense(x, w1, b1))
    return [x, w1, b1, w2, b2, topi.nn.dense(h, w2, b2)]


def _row_sum(m: int = 1024, n: int = 1024) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    r = te.reduce_axis((0, n), name="k")
    return [x, te.compute((m,), lambda i: te.sum(x[i, r], axis=r), name="row_sum")]


def _elementwise_chain(m: int = 1024, n: int = 1024) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    y = te.placeholder((m, n), "float32", name="Y")
    t0 = te.compute((m, n), lambda i, j: x[i, j] * 2.0 + y[i, j], name="scale_add")
    t1 = te.compute((m, n), lambda i, j: te.exp(t0[i, j]) - 1.0, name="expm1")
    t2 = te.compute((m, n), lambda i, j: te.max(t1[i, j], tirx.const(0.0, "float32")), name="relu")
    return [x, y, t2]


def _transpose(m: int = 1024, n: int = 768) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.transpose(x, (1, 0))]


def _permute_nhwc(n: int = 1, c: int = 64, hw: int = 56) -> Tensors:
    x = te.placeholder((n, c, hw, hw), "float32", name="X")
    return [x, topi.transpose(x, (0, 2, 3, 1))]


def _lenet(batch: int = 32) -> Tensors:
    """conv-relu-pool-conv-relu-pool-dense-relu-dense-softmax as one te DAG (the seed's example)."""
    data = te.placeholder((batch, 1, 28, 28), "float32", name="data")
    w1 = te.placeholder((6, 1, 5, 5), "float32", name="conv1_weight")
    b1 = te.placeholder((6, 1, 1), "float32", name="conv1_bias")
    w2 = te.placeholder((16, 6, 5, 5), "float32", name="conv2_weight")
    b2 = te.placeholder((16, 1, 1), "float32", name="conv2_bias")
    w3 = te.placeholder((120, 400), "float32", name="fc1_weight")
    b3 = te.placeholder((120,), "float32", name="fc1_bias")
    w4 = te.placeholder((10, 120), "float32", name="fc2_weight")
    b4 = te.placeholder((10,), "float32", name="fc2_bias")

    x = topi.nn.relu(topi.add(topi.nn.conv2d_nchw(data, w1, 1, 2, 1), b1))  # 28x28
    x = topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max")  # 14x14
    x = topi.nn.relu(topi.add(topi.nn.conv2d_nchw(x, w2, 1, 0, 1), b2))  # 10x10
    x = topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max")  # 5x5
    x = topi.reshape(x, (batch, 400))
    x = topi.nn.relu(topi.nn.dense(x, w3, b3))
    x = topi.nn.softmax(topi.nn.dense(x, w4, b4), axis=-1)
    return [data, w1, b1, w2, b2, w3, b3, w4, b4, x]


def _entry(name: str, family: str, description: str, build: Callable[[], Tensors]) -> ZooEntry:
    return ZooEntry(name, family, description, build)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        _entry("matmul_512", "matmul", "fp32 matmul 512x512x512", lambda: _matmul(512, 512, 512)),
        _entry(
            "matmul_1024", "matmul", "fp32 matmul 1024x1024x1024", lambda: _matmul(1024, 1024, 1024)
        ),
        _entry(
            "matmul_awkward", "matmul", "fp32 matmul 257x511x129", lambda: _matmul(257, 511, 129)
        ),
        _entry(
            "matmul_prime",
            "matmul",
            "fp32 matmul 251x509x127 (primes)",
            lambda: _matmul(251, 509, 127),
        ),
        _entry("matvec", "matvec", "matrix-vector 8192x2048 (64 MiB matrix)", _matvec),
        _entry("mlp", "mlp", "dense-bias-ReLU-dense-bias 128x768->3072->768", _mlp),
        _entry("dense_bias_relu", "dense", "dense 128x1024x1024 + bias + ReLU", _dense_bias_relu),
        _entry("batch_matmul", "batch_matmul", "batch_matmul 12x128x64x128", _batch_matmul),
        _entry(
            "conv2d_resnet_c2",
            "conv",
            "ResNet-18 conv2 3x3 64->64 @56x56",
            lambda: _conv2d(1, 64, 56, 64, 3, 1, 1),
        ),
        _entry(
            "conv2d_resnet_c3",
            "conv",
            "ResNet-18 conv3 3x3 128->128 @28x28",
            lambda: _conv2d(1, 128, 28, 128, 3, 1, 1),
        ),
        _entry(
            "conv2d_resnet_c4_s2",
            "conv",
            "ResNet-18 conv4 3x3/2 128->256 @28x28",
            lambda: _conv2d(1, 128, 28, 256, 3, 2, 1),
        ),
        _entry(
            "conv2d_resnet_1x1",
            "conv",
            "ResNet-18 1x1/2 downsample 64->128 @56x56",
            lambda: _conv2d(1, 64, 56, 128, 1, 2, 0),
        ),
        _entry(
            "conv2d_bias_relu", "conv", "conv2d 3x3 64->64 @56x56 + bias + ReLU", _conv2d_bias_relu
        ),
        _entry(
            "conv2d_s2_bias_relu",
            "conv",
            "conv2d 3x3/2 128->256 @28x28 + bias + ReLU",
            lambda: _conv2d_bias_relu(1, 128, 28, 256, 2),
        ),
        _entry("depthwise_conv2d", "conv", "depthwise 3x3 128ch @56x56", _depthwise_conv2d),
        _entry("max_pool", "pool", "max-pool 3x3/2 64ch @112x112", _max_pool),
        _entry("softmax", "softmax", "softmax 256x1000", _softmax),
        _entry("layer_norm", "layer_norm", "layer norm 512x768", _layer_norm),
        _entry("layer_norm_odd", "layer_norm", "layer norm 509x771", lambda: _layer_norm(509, 771)),
        _entry("gelu", "gelu", "GELU (erf) 256x3072", _gelu),
        _entry("row_sum", "reduce", "row sum 1024x1024", _row_sum),
        _entry("elementwise_chain", "elementwise", "x*2+y -> exp-1 -> relu", _elementwise_chain),
        _entry("transpose", "elementwise", "transpose 1024x768", _transpose),
        _entry(
            "transpose_awkward",
            "elementwise",
            "transpose 1001x769",
            lambda: _transpose(1001, 769),
        ),
        _entry("permute_nhwc", "elementwise", "NCHW -> NHWC 1x64x56x56", _permute_nhwc),
        _entry("lenet", "network", "LeNet forward pass, batch 32, one te DAG", _lenet),
    ]
}


def names() -> list[str]:
    return list(ZOO)


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownWorkloadError(
            f"unknown zoo workload {name!r}; known: {', '.join(ZOO)}"
        ) from None


def tensors(name: str) -> Tensors:
    return get(name).build()


def prim_func(name: str) -> tirx.PrimFunc:
    return te.create_prim_func(tensors(name))
