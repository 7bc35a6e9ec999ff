"""One zoo kernel: naive, static and tuned builds, checked and timed against the baselines.

The measuring half of ``bench/static.py`` (which parses the command line and prints the
tables). The static schedule is built and checked against the unscheduled ("naive") build;
a tuned config, tuned here or fetched from a service, is rebuilt and checked the same way;
then all of them are timed in interleaved rounds with numpy and PyTorch.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import tvm
from rich.console import Console

from autosched import zoo
from autosched.analysis import analyze
from autosched.schedule import static_schedule
from bench import env as benv
from bench import harness
from bench.baselines import assert_close
from bench.report import BaselineTimes, FieldRatio, gflop

# One letter per stage in the table's "stages" column.
TEMPLATE_ABBREV = {
    "direct_compute": "D",
    "simple_reduction": "S",
    "complex_reduction": "C",
    "location_tunable": "L",
}


@dataclass
class Result(BaselineTimes):
    kernel: str
    family: str
    gflop: float
    templates: str = ""
    naive_s: float | None = None
    static_s: float | None = None
    numpy_s: float | None = None
    torch_s: float | None = None
    schedule_s: float | None = None  # static_schedule + tvm.compile wall time
    tuned_s: float | None = None  # best tuned config (run with --tune N)
    tune_wall_s: float | None = None
    tuned_check: str = "-"
    check: str = "-"  # ok / FAIL / ERROR / -
    error: str = ""
    max_abs_err: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    speedup = FieldRatio("naive_s", "static_s")
    # baseline time / static time: > 1 means the static schedule is faster.
    vs_baseline = FieldRatio("baseline_s", "static_s")
    tuned_vs_baseline = FieldRatio("baseline_s", "tuned_s")
    # Pure data movement (transpose) has no FLOPs: None ("-") rather than 0.0.
    gflops = FieldRatio("gflop", "static_s")


@dataclass(frozen=True)
class Plan:
    """Repeat counts; the naive builds are slow (matmul_1024: ~4 s a call)."""

    naive_repeat: int
    rounds: int  # interleaved rounds of static/numpy/torch, so noise bursts hit all alike
    repeat: int  # repeats per round
    min_repeat_ms: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(1, 2, 3, 20) if quick else cls(3, 3, 5, 50)


def bench_kernel(
    name: str,
    hw: Any,
    target: tvm.target.Target,
    plan: Plan,
    seed: int,
    stat: str = "median",
    tune_trials: int = 0,
    tuned_by_service: dict[str, Any] | None = None,
    *,
    console: Console,
) -> Result:
    """Build, check and time one zoo kernel's naive, static and (given a config from
    ``tune_trials`` or ``tuned_by_service``) tuned versions next to numpy and PyTorch."""
    func = zoo.prim_func(name)
    res = Result(kernel=name, family=zoo.get(name).family, gflop=gflop(func))
    try:
        res.templates = "".join(
            TEMPLATE_ABBREV.get(str(s.meta_template), "?") for s in analyze(func)
        )
    except Exception as e:  # analysis is reported, not required, for the timings
        res.templates = "ERR"
        res.extra["analysis_error"] = repr(e)

    case = harness.Case.make(name, func, target, seed)

    static = None
    try:
        t0 = time.perf_counter()
        sch = static_schedule(func, hw)
        static = tvm.compile(sch.mod, target=target)
        res.schedule_s = time.perf_counter() - t0
        got = case.output(static)
        res.max_abs_err = case.max_abs_err(got)
        assert_close(got, case.reference, name)
        res.check = "ok"
    except AssertionError as e:
        res.check = "FAIL"
        res.error = str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
        console.print(f"[red]FAIL[/] {name}: static output differs from naive")
        # assert_allclose messages contain "[...]" that rich would parse as markup.
        console.print(str(e), markup=False, highlight=False)
    except Exception as e:
        res.check = "ERROR"
        res.error = f"{type(e).__name__}: {e}".splitlines()[0]
        static = None
        console.print(f"[red]ERROR[/] {name}: static schedule/build failed")
        console.print(traceback.format_exc(), markup=False, highlight=False)

    if tuned_by_service is not None:
        config, res.tune_wall_s = tuned_by_service.get(name, (None, None))
    else:
        config = _tune(name, hw, tune_trials, res)
    tuned = _build_tuned(func, hw, target, config, case, res, console)

    naive_samples = harness.tvm_samples(
        case.naive, case.inputs, case.out_specs, repeat=plan.naive_repeat, min_repeat_ms=0
    )
    res.naive_s = harness.summarize(naive_samples, stat)

    timers = harness.samplers(
        case,
        {"static": static, "tuned": tuned},
        repeat=plan.repeat,
        min_repeat_ms=plan.min_repeat_ms,
        torch_ok=benv.torch_available(),
    )
    medians, _ = harness.interleaved(timers, plan.rounds, stat)
    res.static_s = medians.get("static")
    res.tuned_s = medians.get("tuned")
    res.numpy_s = medians.get("numpy")
    res.torch_s = medians.get("torch")
    return res


def _tune(name: str, hw: Any, trials: int, res: Result) -> Any:
    """Tune in this process with autosched's engine (sandboxed build + measure, fresh
    records); returns the best verified config or None."""
    if trials <= 0:
        return None
    import tempfile

    from autosched.tune.tune import tune
    from autosched.wire import Workload

    workload = Workload.from_tensors(zoo.tensors(name), name)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autosched-bench-") as work_dir:
        result = tune(workload, trials, hw=hw, work_dir=work_dir)
    res.tune_wall_s = time.perf_counter() - t0
    if result.best_config is None:
        res.tuned_check = "ERROR"
    return result.best_config


def _build_tuned(
    func: tvm.tirx.PrimFunc,
    hw: Any,
    target: tvm.target.Target,
    config: Any,
    case: harness.Case,
    res: Result,
    console: Console,
) -> Any:
    """Rebuild the best tuned config here and check it again against the naive output."""
    if config is None:
        return None
    from autosched.schedule import apply_config

    tuned = tvm.compile(apply_config(func, config, hw).mod, target=target)
    try:
        case.check(tuned)
    except AssertionError:
        res.tuned_check = "FAIL"
        console.print(f"[red]FAIL[/] {case.name}: tuned output differs from naive")
        return None
    res.tuned_check = "ok"
    return tuned
