"""Memory-bound reductions: long rows vectorized along the reduction (rfactor into partial
vectors of any divisor width, or whole vectors with a peeled guarded step for prime and
awkward rows) and row-fused normalizations (the statistics computed in the
row loop of their consumer), on awkward sizes, against the unscheduled function."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx, topi

from autosched.analysis import analyze
from autosched.hardware import cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from autosched.templates.row_fusion import ROW, row_anchor

Build = Callable[[], list[te.Tensor]]


def _softmax(m: int = 37, n: int = 1001) -> list[te.Tensor]:
    x = te.placeholder((m, n), name="X")
    return [x, topi.nn.softmax(x, axis=-1)]


def _layer_norm(m: int = 509, n: int = 771) -> list[te.Tensor]:
    x = te.placeholder((m, n), name="X")
    gamma, beta = te.placeholder((n,), name="gamma"), te.placeholder((n,), name="beta")
    return [x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[1])]


def _row_sum_3d() -> list[te.Tensor]:
    x = te.placeholder((3, 5, 999), name="X")
    k = te.reduce_axis((0, 999), "k")
    return [x, te.compute((3, 5), lambda i, j: te.sum(x[i, j, k], axis=k), name="S")]


def _column_sum() -> list[te.Tensor]:
    """A reduction over the first axis: no row anchor, the spatial axis is the vector one."""
    x = te.placeholder((37, 1001), name="X")
    k = te.reduce_axis((0, 37), "k")
    return [x, te.compute((1001,), lambda j: te.sum(x[k, j], axis=k), name="S")]


def _normalize_3d() -> list[te.Tensor]:
    """x / sum over the last axis of a 3-D tensor: rows are two fused axes."""
    x = te.placeholder((3, 5, 999), name="X")
    k = te.reduce_axis((0, 999), "k")
    s = te.compute((3, 5), lambda i, j: te.sum(x[i, j, k], axis=k), name="S")
    return [x, te.compute((3, 5, 999), lambda i, j, c: x[i, j, c] / s[i, j], name="N")]


def _chain() -> list[te.Tensor]:
    """Several reductions over one row: centre by the mean, scale by the max |x|, then a
    softmax of the result."""
    m, n = 29, 515
    x = te.placeholder((m, n), name="X")
    k1, k2 = te.reduce_axis((0, n), "k1"), te.reduce_axis((0, n), "k2")
    total = te.compute((m,), lambda i: te.sum(x[i, k1], axis=k1), name="total")
    centred = te.compute((m, n), lambda i, j: x[i, j] - total[i] / n, name="centred")
    peak = te.compute((m,), lambda i: te.max(te.abs(centred[i, k2]), axis=k2), name="peak")
    scaled = te.compute((m, n), lambda i, j: centred[i, j] / (peak[i] + 1.0), name="scaled")
    return [x, topi.nn.softmax(scaled, axis=-1)]


def _softmax_transposed() -> list[te.Tensor]:
    """The normalize stage inlined into a transpose: the transpose's row i needs a column of
    the softmax, so the statistics must not move into its row loop."""
    x = te.placeholder((72, 72), name="X")
    y = topi.nn.softmax(x, axis=-1)
    return [x, te.compute((72, 72), lambda i, j: y[j, i] * 2.0, name="T")]


def _row_sum_prime() -> list[te.Tensor]:
    """A prime row: no divisor width, so only guarded partial sums vectorize it."""
    x = te.placeholder((11, 997), name="X")
    k = te.reduce_axis((0, 997), "k")
    return [x, te.compute((11,), lambda i: te.max(x[i, k], axis=k), name="M")]


KERNELS: dict[str, Build] = {
    "softmax_37x1001": _softmax,
    "layer_norm_509x771": _layer_norm,
    "row_sum_3x5x999": _row_sum_3d,
    "column_sum_37x1001": _column_sum,
    "normalize_3x5x999": _normalize_3d,
    "chain": _chain,
    "softmax_transposed": _softmax_transposed,
    "softmax_13x997": lambda: _softmax(13, 997),
    "row_max_11x997": _row_sum_prime,
}


@pytest.fixture(scope="module")
def hw():
    return detect_hardware()


def _func(name: str) -> tirx.PrimFunc:
    return te.create_prim_func(KERNELS[name]())


def _inputs(func: tirx.PrimFunc) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.uniform(-2, 2, [int(x) for x in p.shape]).astype(str(p.dtype)) for p in func.params[:-1]
    ]


def _run(mod: tvm.IRModule, func: tirx.PrimFunc, hw) -> np.ndarray:
    out = func.params[-1]
    args = [tvm.runtime.tensor(a) for a in _inputs(func)]
    result = tvm.runtime.tensor(np.full([int(x) for x in out.shape], np.nan, str(out.dtype)))
    tvm.compile(mod, target=cpu_target(hw)).mod["main"](*args, result)
    return result.numpy()


def _assert_matches(sch: s_tir.Schedule, func: tirx.PrimFunc, hw) -> None:
    reference = _run(tvm.IRModule({"main": func}), func, hw)
    np.testing.assert_allclose(_run(sch.mod, func, hw), reference, rtol=1e-4, atol=1e-5)


def _with(config: Config, **changes: dict) -> Config:
    values = {name: dict(v) for name, v in config.values.items()}
    for name, update in changes.items():
        values[name].update(update)
    return Config(values)


@pytest.mark.parametrize("name", list(KERNELS))
def test_static_config_is_valid_and_correct(name, hw):
    func = _func(name)
    template = build_template(func, hw)
    config = static_config(func, hw)
    template.validate(config)
    _assert_matches(apply_config(func, config, hw, template), func, hw)


def test_row_groups_come_from_the_dag():
    """Softmax: max, exp and sum are computed at the normalize stage's rows; a reduction over
    the first axis and a plain row sum (no consumer) have no anchor."""
    stages = {s.name: s for s in analyze(_func("softmax_37x1001"))}
    anchors = {name: row_anchor(stage, stages) for name, stage in stages.items()}
    assert anchors == {
        "T_softmax_maxelem": "T_softmax_norm",
        "T_softmax_exp": "T_softmax_norm",
        "T_softmax_expsum": "T_softmax_norm",
        "T_softmax_norm": None,
    }
    for name in ("column_sum_37x1001", "row_sum_3x5x999"):
        stages = {s.name: s for s in analyze(_func(name))}
        assert all(row_anchor(s, stages) is None for s in stages.values())


def test_static_softmax_is_one_parallel_row_loop(hw):
    """Every statistic sits under the normalize stage's (parallel) row loop, the reductions
    are vectorized partial sums, and the exp buffer shrinks to one row. (Enough rows that
    the normalize stage's parallel loop is its row loop alone.)"""
    func = te.create_prim_func(_softmax(67, 1001))
    config = static_config(func, hw)
    assert {config.values[s]["location"] for s in ("T_softmax_maxelem", "T_softmax_exp")} == {ROW}
    sch = apply_config(func, config, hw)
    row_loop = sch.get_sref(sch.get_loops(sch.get_sblock("T_softmax_norm"))[0])
    assert sch.get(row_loop).kind == tirx.ForKind.PARALLEL
    for block in (
        "T_softmax_maxelem",
        "T_softmax_exp",
        "T_softmax_expsum",
        "T_softmax_expsum_rf_update",
    ):
        assert sch.get_sref(sch.get_loops(sch.get_sblock(block))[0]).same_as(row_loop), block
    for block in ("T_softmax_maxelem_rf_update", "T_softmax_expsum_rf_update"):
        inner = sch.get(sch.get_loops(sch.get_sblock(block))[-1])
        assert inner.kind == tirx.ForKind.VECTORIZED and int(inner.extent) > 1, block
    lowered = sch.mod
    for step in (
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
    ):
        lowered = step(lowered)
    assert "T_softmax_exp = T.sblock_alloc_buffer((1, 1001))" in lowered.script()


def test_long_rows_vectorize_along_the_reduction(hw):
    """A row of 999 (27 x 37) is summed in partial vectors: vector adds in the LLVM IR."""
    func = _func("row_sum_3x5x999")
    config = static_config(func, hw)
    assert config.values["S"]["rfactor"] > 1
    sch = apply_config(func, config, hw)
    rf = sch.get(sch.get_loops(sch.get_sblock("S_rf_update"))[-1])
    assert rf.kind == tirx.ForKind.VECTORIZED
    ll = tvm.compile(sch.mod, target=cpu_target(hw)).mod.inspect_source("ll")
    assert "fadd <" in ll


@pytest.mark.parametrize(
    "name", ["softmax_37x1001", "layer_norm_509x771", "chain", "softmax_transposed"]
)
def test_every_location_combination_applies_and_matches(name, hw):
    """root / row (and inline where offered) for every stage with a location knob, including
    the mixes where a statistic's consumer stays at root (the statistic then stays too)."""
    func = _func(name)
    stages = analyze(func)
    template = build_template(func, hw, stages)
    base = static_config(func, hw, stages)
    knobs = {
        space.stage: space.knob("location").choices
        for space in template.stages
        if any(k.name == "location" for k in space.knobs)
    }
    combos = list(itertools.product(*knobs.values()))
    rng = random.Random(name)
    for combo in rng.sample(combos, min(len(combos), 8)):
        config = _with(base, **{s: {"location": v} for s, v in zip(knobs, combo, strict=True)})
        template.validate(config)
        _assert_matches(apply_config(func, config, hw, template, stages), func, hw)


@pytest.mark.parametrize("name", list(KERNELS))
def test_random_configs_are_correct(name, hw):
    func = _func(name)
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random(f"memory-bound-{name}")
    for _ in range(3):
        config = template.sample(rng)
        template.validate(config)
        _assert_matches(apply_config(func, config, hw, template, stages), func, hw)


def test_row_fused_schedule_replays_from_its_trace(hw):
    """Merged row loops and stacked rfactors are ordinary primitives: the exported trace
    rebuilds the same module."""
    from autosched.schedule import trace_json

    func = te.create_prim_func(_layer_norm(96, 768))
    sch = apply_config(func, static_config(func, hw), hw)
    assert "X_sum_rf_rf" in sch.mod.script()  # the tree of partial sums (768 = 12 x 64)
    again = s_tir.Schedule(func)
    s_tir.Trace.apply_json_to_schedule(trace_json(sch), again)
    tvm.ir.assert_structural_equal(sch.mod, again.mod)


@pytest.mark.parametrize(("name", "stage"), [("row_max_11x997", "M"), ("softmax_13x997", None)])
def test_every_rfactor_width_applies_and_matches_on_a_prime_row(name, stage, hw):
    """Every width the knob offers, divisor or not, at root and in the row loop, with the
    producers in the row loop or at root; the row loop stays parallel."""
    func = _func(name)
    stages = analyze(func)
    template = build_template(func, hw, stages)
    base = static_config(func, hw, stages)
    reductions = [s.stage for s in template.stages if any(k.name == "rfactor" for k in s.knobs)]
    producers = [{}] if stage else [{"location": ROW}, {"location": "root"}]
    for reduction, producer in itertools.product([stage] if stage else reductions, producers):
        widths = template.stage(reduction).knob("rfactor").choices
        assert {16, 64} <= set(widths)  # whole vectors, though 997 has no divisor
        for width in widths:
            changes = {reduction: {"rfactor": width}}
            if producer:
                changes["T_softmax_exp"] = producer
            config = _with(base, **changes)
            template.validate(config)
            sch = apply_config(func, config, hw, template, stages)
            _assert_matches(sch, func, hw)
            last = stage or "T_softmax_norm"
            row_loop = sch.get(sch.get_loops(sch.get_sblock(last))[0])
            assert row_loop.kind == tirx.ForKind.PARALLEL, (reduction, width, producer)


@pytest.mark.parametrize(("extent", "lanes"), [(997, 16), (771, 16), (1001, 16), (1001, 8)])
def test_static_rfactor_fills_vectors_when_no_divisor_does(extent, lanes):
    from autosched.templates.simple_reduction import _static_rfactor

    width = _static_rfactor(extent, lanes)
    assert width % lanes == 0 and lanes <= width <= 4 * lanes and width * 4 <= extent
    assert _static_rfactor(1000, 16) == 40  # a divisor that fills vectors still wins


@pytest.mark.parametrize("name", ["row_max_11x997", "softmax_13x997", "layer_norm_509x771"])
def test_prime_rows_get_whole_vector_partial_sums_and_a_peeled_tail(name, hw):
    """Static: full-width vector partial sums (no divisor gives one), the guard only in the
    peeled last step (whole-vector loads in the loop, no masked loads), and a correct result."""
    func = _func(name)
    config = static_config(func, hw)
    lanes = hw.vector_lanes_f32
    widths = [v["rfactor"] for v in config.values.values() if v.get("rfactor")]
    assert widths and all(w % lanes == 0 for w in widths)
    sch = apply_config(func, config, hw)
    _assert_matches(sch, func, hw)
    ll = tvm.compile(sch.mod, target=cpu_target(hw)).mod.inspect_source("ll")
    assert max(int(n) for n in re.findall(r"load <(\d+) x float>", ll)) >= lanes
    # LLVM may vectorize the peeled tail with a constant mask; a mask computed at run time
    # would be the guard tested in every vector step.
    assert not re.search(r"masked\.load\.\S+\(ptr [^,]*, <\d+ x i1> %", ll)
