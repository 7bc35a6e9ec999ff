"""The torch/numpy baselines compute the same thing as the unscheduled TVM kernels.

If a baseline were wrong, every speedup the benchmark reports against it would be
meaningless, so each zoo kernel is checked against its naive (unscheduled) TVM build, through
the same ``bench.harness.Case`` and timers that bench/static.py and bench/vs_metaschedule.py
use.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

# bench/ is a top-level folder, not part of the installed package; `python -m pytest` from
# the repo root finds it, plain `pytest` may not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from autosched import zoo
from autosched.hardware import cpu_target, detect_hardware
from bench import baselines as bl
from bench import harness

# The naive 1024^3 matmul takes ~4 s a call on the 2-core CI machines; matmul_512 exercises
# the same code path, so for matmul_1024 numpy and torch are checked against each other only.
SLOW_NAIVE = {"matmul_1024"}


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    harness.setup_threads()


@pytest.fixture(scope="module")
def target() -> object:
    # The target the bench scripts build for.
    return cpu_target(detect_hardware())


def run_torch(name: str, inputs: list[np.ndarray]) -> np.ndarray:
    """The torch baseline of a zoo kernel, as the timers call it: numpy in, numpy out.

    Run on a fresh thread: after the API tests, the main thread of this long process gave
    torch's ``exp`` errors of ~2e-4 on its own chunk of the output (the other intra-op
    thread's chunk was exact), so some thread-local math-library state had changed there;
    a benchmark process starts clean, and so does a new thread. Later the same happened on
    the other chunk, computed by torch's long-lived intra-op worker: so the whole output is
    computed on the fresh thread alone (one torch thread; the values do not depend on it)."""
    import torch

    def run() -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return bl.torch_fn(name)(*bl.to_torch(inputs)).numpy()
        finally:
            torch.set_num_threads(threads)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def run_numpy(name: str, inputs: list[np.ndarray]) -> np.ndarray | None:
    fn = bl.numpy_fn(name)
    return None if fn is None else np.asarray(fn(*inputs))


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
def test_baselines_match_naive_tvm(name: str, target: object) -> None:
    inputs = bl.random_inputs(name, seed=0)
    got_torch = run_torch(name, inputs)
    got_numpy = run_numpy(name, inputs)

    if name in SLOW_NAIVE:
        assert got_numpy is not None
        bl.assert_close(got_torch, got_numpy, name)
        return

    case = harness.Case.make(name, zoo.prim_func(name), target, seed=0)
    (out_spec,) = case.out_specs
    assert got_torch.shape == out_spec[0]
    assert got_torch.dtype == np.dtype(out_spec[1])
    bl.assert_close(got_torch, case.reference, name)
    if got_numpy is not None:
        bl.assert_close(got_numpy, case.reference, name)


def test_case_check_rejects_a_wrong_output(target: object) -> None:
    case = harness.Case.make("softmax", zoo.prim_func("softmax"), target, seed=1)
    assert case.check(case.naive) == 0.0
    case.reference = case.reference + 0.01
    with pytest.raises(AssertionError):
        case.check(case.naive)


@pytest.mark.parametrize("name", ["softmax", "matmul_awkward"])
def test_interleaved_samplers_time_every_contender(name: str, target: object) -> None:
    case = harness.Case.make(name, zoo.prim_func(name), target, seed=0)
    # A build that failed (None) is left out; numpy only times matmul-like kernels.
    timers = harness.samplers(
        case, {"naive": case.naive, "failed": None}, repeat=2, min_repeat_ms=1, torch_ok=True
    )
    expected = ["naive", "numpy", "torch"] if bl.is_matmul_like(name) else ["naive", "torch"]
    assert list(timers) == expected
    medians, samples = harness.interleaved(timers, rounds=2)
    assert list(medians) == expected
    for k in expected:
        assert len(samples[k]) == 4  # 2 rounds x 2 repeats
        assert 0 < medians[k] < 10


def test_summarize() -> None:
    assert harness.summarize([3.0, 1.0, 2.0]) == 2.0
    assert harness.summarize([3.0, 1.0, 2.0], "min") == 1.0
    with pytest.raises(ValueError):
        harness.summarize([1.0], "mean")
