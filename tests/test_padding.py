"""Padding of complex reductions (``pad`` knob): awkward and prime shapes get an unguarded
micro-kernel and a guarded write-back only, and every config stays valid and correct."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm import te, topi

from autosched.analysis import analyze
from autosched.hardware import HardwareParams, cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config

Tensors = list[te.Tensor]


def _matmul(m: int, n: int, k: int) -> Tensors:
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    return [a, b, te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")]


def _dense_bias_relu(m: int, n: int, k: int) -> Tensors:
    x = te.placeholder((m, k), name="X")
    w = te.placeholder((n, k), name="W")
    bias = te.placeholder((n,), name="bias")
    return [x, w, bias, topi.nn.relu(topi.add(topi.nn.dense(x, w), bias))]


def _batch_matmul(b: int, m: int, n: int, k: int) -> Tensors:
    x = te.placeholder((b, m, k), name="x")
    y = te.placeholder((b, n, k), name="y")
    return [x, y, topi.nn.batch_matmul(x, y)]


def _shifted_sum(m: int, n: int, k: int) -> Tensors:
    """sum_k (A + 1) * B: a zero-padded k would add (0 + 1) * 0 = 0 here, but the rule
    only trusts pure products, so k stays unpadded (guarded)."""
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    return [
        a,
        b,
        te.compute((m, n), lambda i, j: te.sum((a[i, r] + 1.0) * b[r, j], axis=r), name="C"),
    ]


def _strided_pointwise_conv(c: int, hw: int, f: int) -> Tensors:
    """A 1x1 stride-2 conv: every index depends on one axis (``h * 2``) yet is not a plain
    variable, so ``pad`` is offered and must be a clean no-op."""
    data = te.placeholder((c, hw, hw), name="data")
    weight = te.placeholder((f, c), name="weight")
    rc = te.reduce_axis((0, c), name="rc")
    out = (f, (hw + 1) // 2, (hw + 1) // 2)
    return [
        data,
        weight,
        te.compute(
            out,
            lambda o, h, w: te.sum(data[rc, h * 2, w * 2] * weight[o, rc], axis=rc),
            name="conv",
        ),
    ]


def _matmul_chain(m: int, n: int, k: int) -> Tensors:
    """relu(A @ B) @ D: the second reduction's padded operand copy takes a name derived from
    the first one's buffer, so names of padding blocks repeat across stages."""
    a, b, c = _matmul(m, n, k)
    d = te.placeholder((n, k), name="D")
    relu = topi.nn.relu(c)
    r = te.reduce_axis((0, n), name="n")
    return [a, b, d, te.compute((m, k), lambda i, j: te.sum(relu[i, r] * d[r, j], axis=r))]


KERNELS: dict[str, Callable[[], Tensors]] = {
    "matmul_61x127x53": lambda: _matmul(61, 127, 53),
    "matmul_prime_251x509x127": lambda: _matmul(251, 509, 127),
    "dense_bias_relu_61x127x53": lambda: _dense_bias_relu(61, 127, 53),
    "batch_matmul_2x37x67x43": lambda: _batch_matmul(2, 37, 67, 43),
}


RANDOM_KERNELS = {**KERNELS, "matmul_chain_29x37x19": lambda: _matmul_chain(29, 37, 19)}


@pytest.fixture(scope="module")
def hw() -> HardwareParams:
    return detect_hardware()


def _func(make: Callable[[], Tensors]) -> tvm.tirx.PrimFunc:
    return te.create_prim_func(make())


def _run(func: tvm.tirx.PrimFunc, mod: tvm.IRModule, hw: HardwareParams) -> np.ndarray:
    executable = tvm.compile(mod, target=cpu_target(hw))
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = [
        tvm.runtime.tensor(rng.uniform(-1, 1, [int(x) for x in p.shape]).astype("float32"), dev)
        for p in func.params[:-1]
    ]
    out_shape = [int(x) for x in func.params[-1].shape]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"), dev)
    executable.mod["main"](*args, out)
    return out.numpy()


def _assert_correct(func: tvm.tirx.PrimFunc, mod: tvm.IRModule, hw: HardwareParams) -> None:
    reference = _run(func, tvm.IRModule({"main": func}), hw)
    np.testing.assert_allclose(_run(func, mod, hw), reference, rtol=1e-4, atol=1e-4)


def _block_predicates(script: str) -> dict[str, bool]:
    """Per block in a scheduled function's script: whether it carries a predicate (a
    ``T.where``, lowered to an ``if (likely(...))`` around its body)."""
    found: dict[str, bool] = {}
    for name, body in re.findall(r'T\.sblock\("([^"]+)"\):(.*?)T\.reads', script, re.S):
        found[name] = found.get(name, False) or "T.where" in body
    return found


def _reduction_name(func: tvm.tirx.PrimFunc) -> str:
    return next(s.name for s in analyze(func) if "R" in s.iter_kinds)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_static_config_pads_awkward_shapes_and_matches(name: str, hw: HardwareParams) -> None:
    func = _func(KERNELS[name])
    template = build_template(func, hw)
    config = static_config(func, hw)
    template.validate(config)
    stage = _reduction_name(func)
    assert config.values[stage]["pad"] is True, "divisors of these extents are poor"
    sch = apply_config(func, config, hw, template)
    predicates = _block_predicates(sch.mod["main"].script())
    # The micro-kernel (the reduction's update) is unguarded; the write-back is guarded.
    assert predicates[f"{stage}_update"] is False
    assert any(predicates.values()), "only the write-back of the valid region is guarded"
    _assert_correct(func, sch.mod, hw)


def test_padding_reduction_axis_and_pack_compose(hw: HardwareParams) -> None:
    func = _func(lambda: _matmul(61, 127, 53))
    template = build_template(func, hw)
    values = dict(static_config(func, hw).values["C"])
    # k = 53 in chunks of 8: padded to 56 with zeros; B packed inside its padded copy.
    values.update(tile_r2=[7, 8], pack=True, write_level=0, inner_order="s2_r1_s3")
    config = Config({"C": values})
    template.validate(config)
    sch = apply_config(func, config, hw, template)
    script = sch.mod["main"].script()
    assert _block_predicates(script)["C_update"] is False
    assert "(63, 56)" in script or "(64, 56)" in script, "k padded to a multiple of 8"
    _assert_correct(func, sch.mod, hw)


def test_reduction_not_padded_unless_padded_terms_are_zero(hw: HardwareParams) -> None:
    func = _func(lambda: _shifted_sum(37, 41, 29))
    template = build_template(func, hw)
    values = dict(static_config(func, hw).values["C"])
    values.update(tile_r2=[4, 8], pad=True)
    config = Config({"C": values})
    template.validate(config)
    sch = apply_config(func, config, hw, template)
    assert "56)" not in sch.mod["main"].script()  # spatial axes padded, k left at 29
    _assert_correct(func, sch.mod, hw)


def test_pad_is_a_clean_no_op_where_accesses_are_not_plain(hw: HardwareParams) -> None:
    func = _func(lambda: _strided_pointwise_conv(13, 15, 11))
    template = build_template(func, hw)
    assert "pad" in {k.name for k in template.stage("conv").knobs}
    values = dict(static_config(func, hw).values["conv"])
    values.update(pad=True, tile_s0=[2, 1, 6, 1], tile_s2=[1, 1, 1, 8])  # 11 and 8: guarded
    config = Config({"conv": values})
    template.validate(config)
    sch = apply_config(func, config, hw, template)
    assert "_pad" not in sch.mod["main"].script()
    _assert_correct(func, sch.mod, hw)


def test_pad_not_offered_for_windowed_reads(hw: HardwareParams) -> None:
    data = te.placeholder((1, 3, 9, 9), name="data")
    weight = te.placeholder((5, 3, 3, 3), name="weight")
    func = te.create_prim_func([data, weight, topi.nn.conv2d_nchw(data, weight, 1, 0, 1)])
    template = build_template(func, hw)
    stage = _reduction_name(func)
    assert "pad" not in {k.name for k in template.stage(stage).knobs}


@pytest.mark.parametrize(
    "name", ["matmul_61x127x53", "dense_bias_relu_61x127x53", "matmul_chain_29x37x19"]
)
def test_random_padded_configs_are_valid_and_correct(name: str, hw: HardwareParams) -> None:
    func = _func(RANDOM_KERNELS[name])
    stages = analyze(func)
    template = build_template(func, hw, stages)
    reductions = [s.name for s in stages if "R" in s.iter_kinds]
    rng = random.Random(f"padding-{name}")
    for draw in range(6):
        config = template.sample(rng)
        for stage in reductions:
            config.values[stage]["pad"] = draw % 3 != 0  # mostly padded, sometimes not
        template.validate(config)
        sch = apply_config(func, config, hw, template, stages)
        _assert_correct(func, sch.mod, hw)


def test_random_batch_matmul_configs_apply(hw: HardwareParams) -> None:
    func = _func(KERNELS["batch_matmul_2x37x67x43"])
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random("padding-batch-matmul")
    for _ in range(12):
        apply_config(func, template.sample(rng), hw, template, stages)


# ---- reduce_lanes: low-reuse reductions vectorized along the contiguous reduction axis ----
def _matvec(m: int, k: int) -> Tensors:
    a = te.placeholder((m, k), name="A")
    x = te.placeholder((k,), name="x")
    r = te.reduce_axis((0, k), name="k")
    return [a, x, te.compute((m,), lambda i: te.sum(a[i, r] * x[r], axis=r), name="y")]


def _batch1_dense(n: int, k: int) -> Tensors:
    x = te.placeholder((1, k), name="X")
    w = te.placeholder((n, k), name="W")
    bias = te.placeholder((n,), name="bias")
    return [x, w, bias, topi.add(topi.nn.dense(x, w), bias)]


@pytest.mark.parametrize(
    "make", [lambda: _matvec(67, 96), lambda: _batch1_dense(53, 64)], ids=["matvec", "dense1"]
)
def test_low_reuse_static_vectorizes_the_reduction(make, hw: HardwareParams) -> None:
    func = _func(make)
    template = build_template(func, hw)
    config = static_config(func, hw)
    template.validate(config)
    stage = _reduction_name(func)
    assert config.values[stage]["reduce_lanes"] is True
    sch = apply_config(func, config, hw, template)
    script = sch.mod["main"].script()
    assert "_rf" in script and "T.vectorized(" in script
    _assert_correct(func, sch.mod, hw)


def test_reduce_lanes_only_where_lanes_divide_a_contiguous_reduction(hw: HardwareParams) -> None:
    lanes = hw.vector_lanes_f32
    odd = build_template(_func(lambda: _matvec(67, lanes * 3 + 1)), hw)
    assert "reduce_lanes" not in {k.name for k in odd.stage("y").knobs}
    plain = build_template(_func(lambda: _matmul(64, 64, 64)), hw)  # B contiguous along j
    assert "reduce_lanes" not in {k.name for k in plain.stage("C").knobs}


def test_random_low_reuse_configs_are_valid_and_correct(hw: HardwareParams) -> None:
    func = _func(lambda: _batch1_dense(53, 64))
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random("reduce-lanes")
    for _ in range(8):
        config = template.sample(rng)
        template.validate(config)
        _assert_correct(func, apply_config(func, config, hw, template, stages).mod, hw)
