"""Reference implementations of the kernel zoo: what every schedule is compared against.

For every zoo kernel this module has a PyTorch CPU implementation and, for the matmul-like
kernels, a numpy (BLAS) one. All take numpy inputs in the zoo's argument order (the
placeholders, in order), so they serve both as speed baselines and, through the tests, as
numerical oracles that agree with the unscheduled TVM builds. It also makes the random
inputs and states how close two fp32 implementations of a kernel must agree
(``assert_close``). Building, running and timing live in ``bench.harness``.

torch is optional: everything that needs it imports it lazily, so the numpy parts work
without the ``bench`` extra installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm

from autosched import zoo

if TYPE_CHECKING:
    import torch

# Kernels whose natural baseline is BLAS through numpy (torch also calls a BLAS for them,
# but numpy is the plainer reference and the one the targets are stated against).
MATMUL_LIKE: frozenset[str] = frozenset(
    {
        "matmul_512",
        "matmul_1024",
        "matmul_awkward",
        "matmul_prime",
        "matvec",
        "mlp",
        "dense_bias_relu",
        "batch_matmul",
    }
)


def is_matmul_like(name: str) -> bool:
    return name.startswith("matmul_") or name in MATMUL_LIKE


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def input_specs(name: str) -> list[tuple[tuple[int, ...], str]]:
    ts = zoo.tensors(name)[:-1]
    return [(tuple(int(d) for d in t.shape), str(t.dtype)) for t in ts]


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


def _np_mlp(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
) -> np.ndarray:
    y = _np_dense_bias_relu(x, w1, b1)
    z = y @ w2.T
    z += b2
    return z


def numpy_fn(name: str) -> Callable[..., np.ndarray] | None:
    """numpy implementation of a zoo kernel, or None when it is not matmul-like."""
    if name.startswith("matmul_") or name == "matvec":
        return _np_matmul
    return {
        "dense_bias_relu": _np_dense_bias_relu,
        "batch_matmul": _np_batch_matmul,
        "mlp": _np_mlp,
    }.get(name)


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

    def mlp(
        x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
    ) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)

    def conv_bias_relu(stride: int) -> Callable[..., torch.Tensor]:
        def f(data: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            # The zoo's bias is (F, 1, 1) and broadcast over NCHW; F.conv2d wants it flat.
            return torch.relu(F.conv2d(data, kernel, bias.reshape(-1), stride=stride, padding=1))

        return f

    def gelu(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)  # the erf form, as the zoo's

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

    def permute_nhwc(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).contiguous()

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
        "matmul_prime": matmul,
        "matvec": matmul,
        "mlp": mlp,
        "dense_bias_relu": dense_bias_relu,
        "batch_matmul": batch_matmul,
        "conv2d_resnet_c2": conv(1, 1),
        "conv2d_resnet_c3": conv(1, 1),
        "conv2d_resnet_c4_s2": conv(2, 1),
        "conv2d_resnet_1x1": conv(2, 0),
        "conv2d_bias_relu": conv_bias_relu(1),
        "conv2d_s2_bias_relu": conv_bias_relu(2),
        "depthwise_conv2d": depthwise_conv2d,
        "max_pool": max_pool,
        "softmax": softmax,
        "layer_norm": layer_norm,
        "layer_norm_odd": layer_norm,
        "gelu": gelu,
        "row_sum": row_sum,
        "elementwise_chain": elementwise_chain,
        "transpose": transpose,
        "transpose_awkward": transpose,
        "permute_nhwc": permute_nhwc,
        "lenet": lenet,
    }


def torch_fn(name: str) -> Callable[..., torch.Tensor]:
    """PyTorch implementation of a zoo kernel, on torch tensors (raises ImportError w/o torch)."""
    fns = _torch_fns()
    if name not in fns:
        raise KeyError(f"no torch baseline for zoo kernel {name!r}")
    return fns[name]


def to_torch(inputs: Sequence[Any]) -> list[torch.Tensor]:
    import torch

    # from_numpy shares memory: no copy inside or outside the timed region.
    return [
        torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        for x in inputs
    ]


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
