"""Root injective stages: blocked 2-D tiles for strided reads (transposes, permutes) and
fused elementwise chains, checked against the unscheduled function."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm import te, tirx, topi

from autosched.analysis import analyze
from autosched.hardware import cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from autosched.templates.blocked_injective import (
    BLOCK_READ,
    BLOCK_WRITE,
    MAX_COMPOSED_READS,
    effective_reads,
    find_strided_read,
)

Tensors = list[te.Tensor]


@pytest.fixture(scope="module")
def hw():
    return detect_hardware()


def _transpose(m: int, n: int) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.transpose(x, (1, 0))]


def _permute(shape: tuple[int, ...], axes: tuple[int, ...]) -> Callable[[], Tensors]:
    def build() -> Tensors:
        x = te.placeholder(shape, "float32", name="X")
        return [x, topi.transpose(x, axes)]

    return build


def _strided_read(m: int = 45, n: int = 70) -> Tensors:
    """out[i, j] = X[3 j, i] + Y[i, j]: every third row of X, read across its rows."""
    x = te.placeholder((3 * n, m), "float32", name="X")
    y = te.placeholder((m, n), "float32", name="Y")
    return [x, y, te.compute((m, n), lambda i, j: x[3 * j, i] + y[i, j], name="strided")]


def _relu_of_transpose(m: int = 100, n: int = 257) -> Tensors:
    """The transpose is inlined into the relu: the relu's own reads are contiguous, but once
    inlined it reads X across its rows."""
    x = te.placeholder((m, n), "float32", name="X")
    t = topi.transpose(x, (1, 0))
    zero = tirx.const(0.0, "float32")
    return [x, te.compute((n, m), lambda i, j: te.max(t[i, j], zero), name="relu")]


def _transpose_into_matmul(m: int = 40, k: int = 48, n: int = 72) -> Tensors:
    """A transposed operand feeding a reduction: a location-tunable stage, blocked at root."""
    a = te.placeholder((m, k), "float32", name="A")
    w = te.placeholder((n, k), "float32", name="W")
    wt = topi.transpose(w, (1, 0))
    r = te.reduce_axis((0, k), name="r")
    return [a, w, te.compute((m, n), lambda i, j: te.sum(a[i, r] * wt[r, j], axis=r), name="C")]


def _chain(m: int = 96, n: int = 256) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    y = te.placeholder((m, n), "float32", name="Y")
    t0 = te.compute((m, n), lambda i, j: x[i, j] * 2.0 + y[i, j], name="scale_add")
    t1 = te.compute((m, n), lambda i, j: te.exp(t0[i, j]) - 1.0, name="expm1")
    zero = tirx.const(0.0, "float32")
    return [x, y, te.compute((m, n), lambda i, j: te.max(t1[i, j], zero), name="relu")]


KERNELS: dict[str, Callable[[], Tensors]] = {
    "transpose_37x1001": lambda: _transpose(37, 1001),
    "transpose_1024x768": lambda: _transpose(1024, 768),
    "permute_3x5x7x9": _permute((3, 5, 7, 9), (0, 2, 3, 1)),
    "nchw_to_nhwc": _permute((2, 32, 14, 14), (0, 2, 3, 1)),
    "batch_transpose": _permute((4, 33, 65), (0, 2, 1)),
    "strided_read": _strided_read,
    "relu_of_transpose": _relu_of_transpose,
}


def _func(tensors: Tensors) -> tirx.PrimFunc:
    return te.create_prim_func(tensors)


def _run(mod: tvm.IRModule, func: tirx.PrimFunc, hw) -> np.ndarray:
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    shapes = [[int(x) for x in p.shape] for p in func.params]
    args = [tvm.runtime.tensor(rng.uniform(-1, 1, s).astype("float32"), dev) for s in shapes[:-1]]
    out = tvm.runtime.tensor(np.full(shapes[-1], np.nan, "float32"), dev)
    tvm.compile(mod, target=cpu_target(hw)).mod["main"](*args, out)
    return out.numpy()


def _check(func: tirx.PrimFunc, config: Config, hw, reference: np.ndarray) -> tvm.IRModule:
    template = build_template(func, hw)
    template.validate(config)
    mod = apply_config(func, config, hw, template).mod
    np.testing.assert_allclose(_run(mod, func, hw), reference, rtol=1e-5, atol=1e-6)
    return mod


@pytest.mark.parametrize("name", list(KERNELS))
def test_static_and_every_block_tile_match_the_reference(name, hw):
    func = _func(KERNELS[name]())
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    stages = {s.name: s for s in analyze(func)}
    [stage] = [s for s in stages.values() if s.is_output]
    assert find_strided_read(stage, stages) is not None, "every kernel here reads across rows"
    static = static_config(func, hw)
    assert static.values[stage.name][BLOCK_READ] > 0, "the static fill blocks a strided read"
    _check(func, static, hw, reference)
    space = build_template(func, hw).stage(stage.name)
    tiles = itertools.product(space.knob(BLOCK_READ).choices, space.knob(BLOCK_WRITE).choices)
    vectors = space.knob("vector").choices
    for i, (read, write) in enumerate(tiles):
        values = dict(static.values[stage.name])
        # Cycle vector width and parallel so that guarded tiles meet every vector width.
        values |= {BLOCK_READ: read, BLOCK_WRITE: write, "vector": vectors[i % len(vectors)]}
        values["parallel"] = i % 3 != 0
        _check(func, Config({**static.values, stage.name: values}), hw, reference)


SAMPLED = {
    **{k: KERNELS[k] for k in ("transpose_37x1001", "nchw_to_nhwc", "strided_read")},
    "relu_of_transpose": _relu_of_transpose,
    "transpose_into_matmul": _transpose_into_matmul,
}


@pytest.mark.parametrize("name", list(SAMPLED))
def test_sampled_configs_match_the_reference(name, hw):
    func = _func(SAMPLED[name]())
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    template = build_template(func, hw)
    rng = random.Random(f"injective-{name}")
    for _ in range(8):
        _check(func, template.sample(rng), hw, reference)


def test_blocked_transpose_tiles_both_axes_and_vectorizes(hw):
    """out[768, 1024] = X.T: 16 x 16 blocks (a cache line of fp32 on each side), parallel
    over the 48 x 64 blocks, the write's 16 columns vectorized."""
    func = _func(_transpose(1024, 768))
    config = static_config(func, hw)
    values = config.values["T_transpose"]
    assert (values[BLOCK_READ], values[BLOCK_WRITE]) == (16, 16)
    sch = apply_config(func, config, hw)
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("T_transpose"))]
    kinds = [loop.kind for loop in loops]
    extents = [int(loop.extent) for loop in loops]
    lanes = math.gcd(values["vector"], 16)  # 16 with AVX-512; 8 (two vectors) with AVX2
    assert extents[0] == (768 // 16) * (1024 // 16) and kinds[0] == tirx.ForKind.PARALLEL
    assert extents[1] == 16 and kinds[1] == tirx.ForKind.SERIAL, "read tile"
    assert extents[-1] == lanes and kinds[-1] == tirx.ForKind.VECTORIZED, "write tile"


def test_contiguous_reads_are_not_blocked(hw):
    """An elementwise stage reads along its rows: no block knobs, the plain root schedule."""
    func = _func(_chain())
    template = build_template(func, hw)
    assert all(BLOCK_READ not in [k.name for k in s.knobs] for s in template.stages)


@pytest.mark.parametrize("shape", [(96, 256), (96, 200)])
def test_elementwise_chain_fuses_into_one_vectorized_nest(shape, hw):
    """The static fill inlines the chain into its output's parallel loop, and the fast exp
    vectorizes: the LLVM IR has float vectors and no call to libm's expf. A row of 256 gets an
    explicit vector loop of whole registers; a row of 200 (no multiple of 16 or 32 divides it)
    a scalar loop that LLVM's loop vectorizer vectorizes with a remainder."""
    func = _func(_chain(*shape))
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    config = static_config(func, hw)
    mod = _check(func, config, hw, reference)
    script = mod.script()
    blocks = re.findall(r'^\s*with T\.sblock\("(\w+)"\)', script, re.MULTILINE)
    assert blocks == ["relu"], "scale_add and expm1 inlined into relu"
    assert "T.parallel" in script
    vector = config.values["relu"]["vector"]
    assert vector % hw.vector_lanes_f32 == 0 if shape[1] % hw.vector_lanes_f32 == 0 else vector == 1
    assert ("T.vectorized" in script) == (vector > 1)
    llvm_ir = tvm.compile(mod, target=cpu_target(hw)).mod.inspect_source("ll")
    assert re.search(r"<\d+ x float>", llvm_ir), "vector float types in the LLVM IR"
    assert "@expf" not in llvm_ir


def test_few_long_rows_share_the_vector_loop_among_threads(hw):
    """[3, 40000]: three rows would give three parallel iterations; the vector loop's outer
    part joins the parallel loop, and the lanes still read contiguously (no gather)."""
    func = _func(_chain(3, 40000))
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    config = static_config(func, hw)
    mod = _check(func, config, hw, reference)
    vector = config.values["relu"]["vector"]
    sch = apply_config(func, config, hw)
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("relu"))]
    assert [int(loop.extent) for loop in loops] == [3 * 40000 // vector, vector]
    assert [loop.kind for loop in loops] == [tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED]
    llvm_ir = tvm.compile(mod, target=cpu_target(hw)).mod.inspect_source("ll")
    assert re.search(r"load <\d+ x float>", llvm_ir), "contiguous vector loads"


def test_composed_reads_are_bounded_on_a_fanning_dag(hw):
    """Six levels of three stages, each reading all three of the level below: followed
    through the inlinable producers the output would have 3**5 reads; the walk stops at
    MAX_COMPOSED_READS. (A block merges its accesses of one buffer into one region, so the
    fan-out is over distinct producers.)"""

    def level(below: list[te.Tensor], depth: int) -> list[te.Tensor]:
        def stage(k: int) -> te.Tensor:
            return te.compute(
                (16, 16),
                lambda i, j: (
                    below[0][i, j]
                    + below[1 % len(below)][j, i] * float(k + 1)
                    + below[2 % len(below)][i, j]
                ),
                name=f"fan{depth}_{k}",
            )

        return [stage(k) for k in range(3)]

    x = te.placeholder((16, 16), "float32", name="X")
    tensors = [x]
    for depth in range(6):
        tensors = level(tensors, depth)
    out = te.compute(
        (16, 16), lambda i, j: tensors[0][i, j] + tensors[1][i, j] + tensors[2][i, j], name="out"
    )
    stages = {s.name: s for s in analyze(_func([x, out]))}
    reads = effective_reads(stages["out"], stages)
    assert len(reads) == MAX_COMPOSED_READS
    assert all(r.buffer.startswith("fan1_") for r in reads), "followed four producers deep"
