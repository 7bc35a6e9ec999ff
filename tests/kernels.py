"""Kernels for tests: zoo kernels built and run against the unscheduled reference, and
declarations made to stress the service (``chain``)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import tvm
from tvm import te

from autosched import zoo
from autosched.hardware import cpu_target, detect_hardware
from autosched.wire import serialize


@cache
def target() -> tvm.target.Target:
    return cpu_target(detect_hardware())


def inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    func = zoo.prim_func(name)
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(-1, 1, [int(x) for x in p.shape]).astype(str(p.dtype))
        for p in func.params[: len(func.params) - 1]
    ]


def run(mod: tvm.IRModule, name: str) -> np.ndarray:
    func = zoo.prim_func(name)
    out_param = func.params[-1]
    dev = tvm.cpu()
    executable = tvm.compile(mod, target=target())
    args = [tvm.runtime.tensor(a, dev) for a in inputs(name)]
    out = tvm.runtime.tensor(
        np.full([int(x) for x in out_param.shape], np.nan, dtype=str(out_param.dtype)), dev
    )
    executable.mod["main"](*args, out)
    return out.numpy()


@cache
def reference(name: str) -> np.ndarray:
    """Output of the unscheduled PrimFunc: the meaning every schedule must preserve."""
    return run(tvm.IRModule({"main": zoo.prim_func(name)}), name)


def assert_matches_reference(mod: tvm.IRModule, name: str) -> None:
    got = run(mod, name)
    # fp32 sums over up to ~1k terms reorder freely under tiling and rfactor.
    np.testing.assert_allclose(got, reference(name), rtol=1e-4, atol=1e-4)


def chain(stages: int) -> dict[str, Any]:
    """A valid but slow declaration: a long elementwise chain (~2.5 ms a stage to analyse,
    about as much again for the static schedule's trace)."""
    a = te.placeholder((64, 64), "float32", name="A")
    x = a
    for i in range(stages):
        x = _step(x, i)
    return serialize([a, x], "chain")


def _step(x: te.Tensor, i: int) -> te.Tensor:
    return te.compute((64, 64), lambda p, q: x[p, q] * 2.0 + 1.0, name=f"s{i}")
