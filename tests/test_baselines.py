"""The torch/numpy baselines compute the same thing as the unscheduled TVM kernels.

If a baseline were wrong, every speedup the benchmark reports against it would be
meaningless, so each zoo kernel is checked against its naive (unscheduled) TVM build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

# bench/ is a top-level folder, not part of the installed package; `python -m pytest` from
# the repo root finds it, plain `pytest` may not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from autosched import zoo
from bench import baselines as bl

# The naive 1024^3 matmul takes ~4 s a call on the 2-core CI machines; matmul_512 exercises
# the same code path, so for matmul_1024 numpy and torch are checked against each other only.
SLOW_NAIVE = {"matmul_1024"}


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    bl.setup_threads()


def test_every_zoo_kernel_has_a_torch_baseline() -> None:
    for name in zoo.names():
        assert callable(bl.torch_fn(name))
        assert (bl.numpy_fn(name) is not None) == bl.is_matmul_like(name)


def test_random_inputs_match_placeholders_and_are_deterministic() -> None:
    a = bl.random_inputs("lenet", seed=3)
    b = bl.random_inputs("lenet", seed=3)
    specs = bl.input_specs("lenet")
    assert len(a) == len(specs) == 9
    for x, y, (shape, dtype) in zip(a, b, specs, strict=True):
        assert x.shape == shape and x.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(x, y)
        assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.mark.parametrize("name", zoo.names())
def test_baselines_match_naive_tvm(name: str) -> None:
    inputs = bl.random_inputs(name, seed=0)
    got_torch = bl.run_torch(name, inputs)
    got_numpy = bl.run_numpy(name, inputs) if bl.numpy_fn(name) else None

    if name in SLOW_NAIVE:
        assert got_numpy is not None
        bl.assert_close(got_torch, got_numpy, name)
        return

    func = zoo.prim_func(name)
    (out_spec,) = bl.output_specs(func, len(inputs))
    assert got_torch.shape == out_spec[0]
    assert got_torch.dtype == np.dtype(out_spec[1])
    (naive,) = bl.run_tvm(bl.tvm_naive(name), inputs, [out_spec])
    bl.assert_close(got_torch, naive, name)
    if got_numpy is not None:
        bl.assert_close(got_numpy, naive, name)


def test_timers_return_positive_medians() -> None:
    name = "softmax"
    inputs = bl.random_inputs(name)
    func = zoo.prim_func(name)
    ex = bl.tvm_naive(name)
    t_tvm = bl.time_tvm(ex, inputs, bl.output_specs(func, len(inputs)), repeat=2, min_repeat_ms=1)
    t_torch = bl.time_torch(bl.torch_fn(name), inputs, repeat=2, min_repeat_ms=1)
    t_np = bl.time_numpy(
        bl.numpy_fn("matmul_awkward"), bl.random_inputs("matmul_awkward"), repeat=2, min_repeat_ms=1
    )
    assert 0 < t_tvm < 10 and 0 < t_torch < 10 and 0 < t_np < 10


def test_summarize() -> None:
    assert bl.summarize([3.0, 1.0, 2.0]) == 2.0
    assert bl.summarize([3.0, 1.0, 2.0], "min") == 1.0
    with pytest.raises(ValueError):
        bl.summarize([1.0], "mean")
