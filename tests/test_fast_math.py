"""Vectorizable transcendentals (``fast_math``) and the ``math`` knob that chooses them."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, topi

from autosched.analysis import analyze
from autosched.fast_math import ERROR_BUDGET, MAX_ERROR, rewrite_blocks
from autosched.hardware import cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from autosched.templates.base import EXACT, FAST, MATH

FLT_MIN = float(np.finfo(np.float32).tiny)
Tensors = list[te.Tensor]


@pytest.fixture(scope="module")
def hw():
    return detect_hardware()


# ---- accuracy of each fast form against a float64 reference ------------------------------


def _sweep() -> np.ndarray:
    """A dense float32 grid: uniform over the interesting range, log-spaced over every
    magnitude (denormals to near FLT_MAX) of both signs, and the special values."""
    magnitudes = np.logspace(-45, 38.5, 100_001)
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, FLT_MIN, -FLT_MIN]
    special += [88.72, 88.73, -87.33, -87.34, 4.0, 9.0, 1e-40, -1e-40]
    grid = np.concatenate([np.linspace(-120, 120, 400_001), magnitudes, -magnitudes, special])
    return grid.astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) if not math.isnan(v) else math.nan for v in x.tolist()])


EXACT_REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "erf": _erf,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "log": np.log,
}
TE_CALL = {"exp": te.exp, "erf": te.erf, "tanh": te.tanh, "sigmoid": te.sigmoid, "log": te.log}


def _run_fast(name: str, x: np.ndarray) -> np.ndarray:
    a = te.placeholder(x.shape, "float32", name="A")
    b = te.compute(x.shape, lambda i: TE_CALL[name](a[i]), name="B")
    func = rewrite_blocks(te.create_prim_func([a, b]), ["B"])
    executable = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros_like(x), dev)
    executable.mod["main"](tvm.runtime.tensor(x, dev), out)
    return out.numpy()


@pytest.mark.parametrize("name", sorted(EXACT_REFERENCE))
def test_fast_form_is_within_its_documented_error(name):
    x = _sweep()
    got = _run_fast(name, x).astype(np.float64)
    with np.errstate(all="ignore"):
        exact = EXACT_REFERENCE[name](x.astype(np.float64))
        exact32 = exact.astype(np.float32).astype(np.float64)
    # NaN and infinities exactly where float32 libm gives them, with the same sign.
    assert np.array_equal(np.isnan(got), np.isnan(exact32))
    assert np.array_equal(np.isposinf(got), np.isposinf(exact32))
    assert np.array_equal(np.isneginf(got), np.isneginf(exact32))
    finite = np.isfinite(exact32)
    error = np.abs(got[finite] - exact[finite])
    magnitude = np.abs(exact[finite])
    normal = magnitude >= FLT_MIN
    assert (error[normal] / magnitude[normal]).max() <= MAX_ERROR[name]
    # Below the smallest normal float only the absolute error is promised.
    assert error[~normal].max(initial=0.0) < FLT_MIN
    if name in ("erf", "tanh"):
        assert error.max() <= MAX_ERROR[name]


def test_every_fast_form_fits_the_static_budget():
    assert all(bound <= ERROR_BUDGET for bound in MAX_ERROR.values())


def test_float64_calls_stay_exact():
    a = te.placeholder((8,), "float64", name="A")
    b = te.compute((8,), lambda i: te.exp(a[i]), name="B")
    func = te.create_prim_func([a, b])
    assert analyze(func)[0].transcendentals == ()
    assert tvm_ffi.structural_equal(rewrite_blocks(func, ["B"]), func)


def test_rewrite_touches_only_the_named_blocks_and_is_deterministic():
    func = te.create_prim_func(_sigmoid_then_exp())
    once = rewrite_blocks(func, ["sig"])
    assert tvm_ffi.structural_equal(once, rewrite_blocks(func, ["sig"]))
    text = once.script()
    assert "T.sigmoid" not in text and "T.exp" in text


# ---- kernels through the templates -------------------------------------------------------


def _gelu_erf(m: int = 64, n: int = 768) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    y = te.compute(
        (m, n), lambda i, j: 0.5 * x[i, j] * (1.0 + te.erf(x[i, j] * 0.7071067811865476)), "gelu"
    )
    return [x, y]


def _gelu_tanh(m: int = 64, n: int = 768) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    inner = te.compute(
        (m, n), lambda i, j: x[i, j] + 0.044715 * x[i, j] * x[i, j] * x[i, j], name="cubic"
    )
    y = te.compute(
        (m, n), lambda i, j: 0.5 * x[i, j] * (1.0 + te.tanh(0.7978845608 * inner[i, j])), "gelu"
    )
    return [x, y]


def _sigmoid_then_exp(m: int = 64, n: int = 256) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    s = te.compute((m, n), lambda i, j: te.sigmoid(x[i, j]), name="sig")
    return [x, te.compute((m, n), lambda i, j: s[i, j] * te.exp(x[i, j] * 0.1), name="scaled")]


def _softmax(m: int = 64, n: int = 1000) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.nn.softmax(x, axis=-1)]


def _log_softmax(m: int = 64, n: int = 1000) -> Tensors:
    x = te.placeholder((m, n), "float32", name="X")
    return [x, topi.nn.log_softmax(x, axis=-1)]


KERNELS: dict[str, Callable[[], Tensors]] = {
    "gelu_erf": _gelu_erf,
    "gelu_tanh": _gelu_tanh,
    "sigmoid_exp": _sigmoid_then_exp,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
}


def _inputs(func: tvm.tirx.PrimFunc) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.uniform(-4, 4, [int(d) for d in p.shape]).astype(str(p.dtype)) for p in func.params[:-1]
    ]


def _run(mod: tvm.IRModule, func: tvm.tirx.PrimFunc, hw) -> np.ndarray:
    dev = tvm.cpu()
    out_param = func.params[-1]
    out = tvm.runtime.tensor(np.full([int(d) for d in out_param.shape], np.nan, "float32"), dev)
    executable = tvm.compile(mod, target=cpu_target(hw))
    executable.mod["main"](*[tvm.runtime.tensor(a, dev) for a in _inputs(func)], out)
    return out.numpy()


def _assert_matches_exact(mod: tvm.IRModule, func: tvm.tirx.PrimFunc, hw) -> None:
    """Compare with the *unmodified* function, as the runner does (rtol = atol = 1e-4)."""
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    np.testing.assert_allclose(_run(mod, func, hw), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_static_config_chooses_fast_math_and_matches_the_exact_reference(name, hw):
    func = te.create_prim_func(KERNELS[name]())
    stages = analyze(func)
    with_calls = [s.name for s in stages if s.transcendentals]
    assert with_calls
    template = build_template(func, hw, stages)
    config = static_config(func, hw, stages)
    template.validate(config)
    assert {s: config.values[s][MATH] for s in with_calls} == dict.fromkeys(with_calls, FAST)
    mod = apply_config(func, config, hw, template, stages).mod
    assert not re.search(r"T\.(exp|erf|tanh|sigmoid|log)\(", mod.script())
    _assert_matches_exact(mod, func, hw)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_random_configs_match_the_exact_reference(name, hw):
    func = te.create_prim_func(KERNELS[name]())
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random(f"fast-math-{name}")
    for _ in range(4):
        config = template.sample(rng)
        _assert_matches_exact(apply_config(func, config, hw, template, stages).mod, func, hw)


def test_math_knob_only_on_stages_that_call_a_transcendental(hw):
    a = te.placeholder((64, 64), "float32", name="A")
    doubled = te.compute((64, 64), lambda i, j: a[i, j] * 2.0, name="doubled")
    func = te.create_prim_func([a, doubled])
    template = build_template(func, hw)
    assert all(MATH not in {k.name for k in space.knobs} for space in template.stages)
    assert MATH not in static_config(func, hw).values["doubled"]
    # log_softmax: the row max (no call), sum(exp(x - max)) and x - max - log(sum).
    knobs = {
        space.stage: {k.name for k in space.knobs}
        for space in build_template(te.create_prim_func(_log_softmax()), hw).stages
    }
    assert {name for name, names in knobs.items() if MATH in names} == {"compute", "compute_1"}
    assert MATH not in knobs["T_softmax_maxelem"]


def _gelu_llvm_ir(math_choice: str, hw) -> str:
    func = te.create_prim_func(_gelu_erf())
    config = static_config(func, hw)
    config = Config({s: {**v, MATH: math_choice} for s, v in config.values.items()})
    executable = tvm.compile(apply_config(func, config, hw).mod, target=cpu_target(hw))
    return executable.mod.inspect_source("ll")


def test_fast_gelu_is_vectorized_and_exact_gelu_calls_scalar_erf(hw):
    fast = _gelu_llvm_ir(FAST, hw)
    exact = _gelu_llvm_ir(EXACT, hw)
    assert re.search(r"<(4|8|16) x float>", fast)
    assert not re.search(r"@erff?\b", fast)
    assert re.search(r"call [^\n]*@erff\(", exact)


def test_fast_gelu_matches_exact_and_prints_timing(hw, capsys):
    """GELU of BERT-base's FFN (256x3072) both ways: the outputs agree; the timing is only
    printed (the test machines are shared)."""
    x = te.placeholder((256, 3072), "float32", name="X")
    y = te.compute(x.shape, lambda i, j: 0.5 * x[i, j] * (1.0 + te.erf(x[i, j] * 0.7071)), "gelu")
    func = te.create_prim_func([x, y])
    config = static_config(func, hw)
    dev = tvm.cpu()
    data = tvm.runtime.tensor(_inputs(func)[0], dev)
    outputs = {}
    for choice in (EXACT, FAST):
        chosen = Config({s: {**v, MATH: choice} for s, v in config.values.items()})
        executable = tvm.compile(apply_config(func, chosen, hw).mod, target=cpu_target(hw))
        out = tvm.runtime.tensor(np.zeros((256, 3072), "float32"), dev)
        seconds = executable.mod.time_evaluator("main", dev, number=5)(data, out).mean
        outputs[choice] = out.numpy()
        with capsys.disabled():
            print(f"\nGELU 256x3072, math={choice}: {seconds * 1e3:.3f} ms")
    np.testing.assert_allclose(outputs[FAST], outputs[EXACT], rtol=1e-4, atol=1e-4)


def test_fast_exp_vector_loop_has_no_rounding_call_or_float_to_int_conversion(hw):
    """The exp form rounds by adding 1.5 * 2^23 and scales by adding n to the exponent
    bits: its vector loop holds no floor/round call, no float-to-int conversion and one
    32-bit shift (the former form had a floor, a conversion and two halves of 2^n)."""
    from tvm import s_tir

    from autosched.fast_math import fast_exp

    x = te.placeholder((4096,), "float32", name="X")
    y = te.compute((4096,), lambda i: fast_exp(x[i]), name="Y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    _, inner = sch.split(sch.get_loops(sch.get_sblock("Y"))[0], factors=[None, 16])
    sch.vectorize(inner)
    ll = tvm.compile(sch.mod, target=cpu_target(hw)).mod.inspect_source("ll")
    vector_ops = [line for line in ll.splitlines() if re.search(r"<\d+ x (float|i32)>", line)]
    # LLVM may split the 16 lanes into narrower vectors: count per vector, by its NaN test.
    vectors = sum("fcmp ord <" in op for op in vector_ops)
    assert vectors
    assert not any(re.search(r"fptosi|llvm\.(floor|round|rint|nearbyint)", op) for op in vector_ops)
    assert sum(re.search(r"= shl <\d+ x i32>", op) is not None for op in vector_ops) == vectors
    assert not re.search(r"@expf?\(", ll)
