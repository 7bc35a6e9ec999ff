"""Main-job benchmark: static (heuristic, untuned) schedules of the kernel zoo.

For every zoo kernel, in one process: build the unscheduled PrimFunc ("naive") and the
static schedule, check the static output against the naive one, time naive, static, numpy
(matmul-like kernels) and PyTorch CPU, and print a table plus the headline targets.

    python bench/static.py                      # all zoo kernels
    python bench/static.py --kernels matmul_512,lenet --quick
    python bench/static.py --json results.json  # also write the numbers as JSON
    python bench/static.py --stat min           # report minima instead of medians

Run it on an otherwise idle machine: with one other busy process on the 2 cores, the
2-thread numpy (OpenBLAS) and PyTorch (OpenMP) baselines slow down 10-20x (their thread
barriers wait for a descheduled thread) while TVM's timings barely move, which makes every
baseline/static ratio look far better than it is. The script warns when the load is high.

Exit status: 0 when every static build matched the naive output (even if a performance
target is missed), 1 when a numerical check or a static schedule/build failed.
"""

from __future__ import annotations

import os
import sys

# TVM reads TVM_NUM_THREADS lazily at its first parallel region and otherwise uses a single
# thread on these machines; export it before anything can run TVM code.
os.environ.setdefault(
    "TVM_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
)

import argparse
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `python bench/static.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tvm
from rich.console import Console
from rich.table import Table

from autosched import zoo
from autosched.analysis import analyze
from autosched.hardware import cpu_target, detect_hardware
from bench import baselines as bl
from bench import env as benv

# Piped output (CI logs, `| tee`) would otherwise be cut to 80 columns and truncate the table.
console = Console(width=None if sys.stdout.isatty() else 160)

TEMPLATE_ABBREV = {
    "direct_compute": "D",
    "simple_reduction": "S",
    "complex_reduction": "C",
    "location_tunable": "L",
}

NAIVE_TARGET = 10.0  # matmul_1024 and conv2d kernels: static at least 10x the naive build
LENET_TARGET = 1.5  # lenet: static time at most 1.5x PyTorch's


@dataclass
class Result:
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

    @property
    def speedup(self) -> float | None:
        if self.naive_s and self.static_s:
            return self.naive_s / self.static_s
        return None

    @property
    def baseline_s(self) -> float | None:
        return self.numpy_s if bl.is_matmul_like(self.kernel) else self.torch_s

    @property
    def vs_baseline(self) -> float | None:
        # baseline_time / static_time: > 1 means the static schedule is faster.
        if self.baseline_s and self.static_s:
            return self.baseline_s / self.static_s
        return None

    @property
    def tuned_vs_baseline(self) -> float | None:
        if self.baseline_s and self.tuned_s:
            return self.baseline_s / self.tuned_s
        return None

    @property
    def gflops(self) -> float | None:
        # Pure data movement (transpose) has no FLOPs: show "-" rather than 0.0.
        return self.gflop / self.static_s if self.static_s and self.gflop > 0 else None


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
    static_schedule: Callable[..., Any],
    stat: str = "median",
    tune_trials: int = 0,
    tuned_by_service: dict[str, Any] | None = None,
) -> Result:
    entry = zoo.get(name)
    func = zoo.prim_func(name)
    gflop = float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func}))) / 1e9
    res = Result(kernel=name, family=entry.family, gflop=gflop)
    try:
        res.templates = "".join(
            TEMPLATE_ABBREV.get(str(s.meta_template), "?") for s in analyze(func)
        )
    except Exception as e:  # analysis is reported, not required, for the timings
        res.templates = "ERR"
        res.extra["analysis_error"] = repr(e)

    inputs = bl.random_inputs(name, seed)
    out_specs = bl.output_specs(func, len(inputs))

    naive = bl.build(func, target)
    (reference,) = bl.run_tvm(naive, inputs, out_specs)

    static = None
    try:
        t0 = time.perf_counter()
        sch = static_schedule(func, hw)
        static = tvm.compile(sch.mod, target=target)
        res.schedule_s = time.perf_counter() - t0
        (got,) = bl.run_tvm(static, inputs, out_specs)
        res.max_abs_err = float(np.abs(got.astype(np.float64) - reference).max())
        bl.assert_close(got, reference, name)
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
    tuned = _build_tuned(name, func, hw, target, config, inputs, out_specs, reference, res)

    res.naive_s = bl.time_tvm(
        naive, inputs, out_specs, number=1, repeat=plan.naive_repeat, min_repeat_ms=0, stat=stat
    )

    timers: dict[str, Any] = {}
    kw = {"repeat": plan.repeat, "min_repeat_ms": plan.min_repeat_ms}
    if static is not None:
        timers["static"] = lambda: bl.tvm_samples(static, inputs, out_specs, number=1, **kw)
    if tuned is not None:
        timers["tuned"] = lambda: bl.tvm_samples(tuned, inputs, out_specs, number=1, **kw)
    np_fn = bl.numpy_fn(name)
    if np_fn is not None:
        timers["numpy"] = lambda: bl.numpy_samples(np_fn, inputs, **kw)
    if benv.torch_available():
        t_fn = bl.torch_fn(name)
        timers["torch"] = lambda: bl.torch_samples(t_fn, inputs, **kw)
    medians, _ = bl.interleaved(timers, plan.rounds, stat)
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


def _build_tuned(name, func, hw, target, config, inputs, out_specs, reference, res: Result) -> Any:
    """Rebuild the best tuned config here and check it again against the naive output."""
    if config is None:
        return None
    from autosched.schedule import apply_config

    tuned = tvm.compile(apply_config(func, config, hw).mod, target=target)
    (got,) = bl.run_tvm(tuned, inputs, out_specs)
    try:
        bl.assert_close(got, reference, name)
    except AssertionError:
        res.tuned_check = "FAIL"
        console.print(f"[red]FAIL[/] {name}: tuned output differs from naive")
        return None
    res.tuned_check = "ok"
    return tuned


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×" if v < 100 else f"{v:.0f}×"


def print_table(results: list[Result], stat: str) -> None:
    what = "static and tuned" if any(r.tuned_s for r in results) else "static"
    t = Table(title=f"autosched {what} schedules vs naive TVM, numpy and PyTorch ({stat}s)")
    t.add_column("kernel")
    t.add_column("stages")
    t.add_column("check")
    t.add_column("GFLOP/s", justify="right")
    t.add_column("naive ms", justify="right")
    t.add_column("static ms", justify="right")
    t.add_column("vs naive", justify="right")
    tuned = any(r.tuned_s for r in results)
    if tuned:
        t.add_column("tuned ms", justify="right")
        t.add_column("tuned vs static", justify="right")
    t.add_column("numpy ms", justify="right")
    t.add_column("torch ms", justify="right")
    t.add_column("baseline/static", justify="right")
    if tuned:
        t.add_column("baseline/tuned", justify="right")
    for r in results:
        check = {"ok": "[green]ok[/]", "FAIL": "[red]FAIL[/]", "ERROR": "[red]ERROR[/]"}.get(
            r.check, r.check
        )
        base = " np" if bl.is_matmul_like(r.kernel) else " pt"
        tuned_cells = []
        if tuned:
            ratio = r.static_s / r.tuned_s if r.static_s and r.tuned_s else None
            tuned_cells = [_ms(r.tuned_s), _x(ratio)]
        tail = []
        if tuned:
            v = r.tuned_vs_baseline
            tail = ["-" if v is None else f"{v:.2f}{base}"]
        t.add_row(
            r.kernel,
            r.templates,
            check,
            "-" if r.gflops is None else f"{r.gflops:.1f}",
            _ms(r.naive_s),
            _ms(r.static_s),
            _x(r.speedup),
            *tuned_cells,
            _ms(r.numpy_s),
            _ms(r.torch_s),
            "-" if r.vs_baseline is None else f"{r.vs_baseline:.2f}{base}",
            *tail,
        )
    console.print(t)
    console.print(
        "stages: one letter per stage, D direct compute, S simple reduction, "
        "C complex reduction, L location-tunable. baseline/static = baseline time / static "
        "time (> 1: autosched faster); baseline is numpy (np) for matmul-like kernels, "
        "PyTorch (pt) otherwise."
    )


def print_headlines(results: list[Result]) -> None:
    by_name = {r.kernel: r for r in results}

    def verdict(ok: bool | None) -> str:
        return "[yellow]n/a[/]" if ok is None else "[green]met[/]" if ok else "[red]missed[/]"

    console.print("\n[bold]Targets[/]")
    has_target = any(n in ("matmul_1024", "lenet") or n.startswith("conv2d") for n in by_name)
    if not has_target:
        console.print("(no target kernel in this run: matmul_1024, conv2d_*, lenet)")
    for name in ["matmul_1024"] + [n for n in by_name if n.startswith("conv2d")]:
        r = by_name.get(name)
        if r is None:
            continue
        sp = r.speedup
        ok = None if sp is None else sp >= NAIVE_TARGET
        console.print(
            f"{name} static vs naive: {_x(sp)} (target ≥ {NAIVE_TARGET:.0f}×) {verdict(ok)}"
        )
    r = by_name.get("lenet")
    if r is not None:
        ratio = r.static_s / r.torch_s if r.static_s and r.torch_s else None
        ok = None if ratio is None else ratio <= LENET_TARGET
        shown = "-" if ratio is None else f"{ratio:.2f}"
        console.print(
            f"lenet static vs PyTorch: static/torch time = {shown} "
            f"(target ≤ {LENET_TARGET}) {verdict(ok)}"
        )
        if r.tuned_s and r.torch_s:
            ratio = r.tuned_s / r.torch_s
            console.print(
                f"lenet tuned vs PyTorch: tuned/torch time = {ratio:.2f} (target < 1) "
                f"{verdict(ratio < 1)}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", help="comma-separated zoo names (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier numbers)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="how to reduce the timing samples (min is less sensitive to other load)",
    )
    ap.add_argument(
        "--tune", type=int, default=0, metavar="N", help="also tune each kernel with N trials"
    )
    ap.add_argument(
        "--service",
        metavar="URL",
        help="tune through a running autosched service (REST API + workers) instead of "
        "in this process: submit every kernel, watch the jobs, fetch the tuned schedules",
    )
    args = ap.parse_args(argv)

    names = zoo.names() if not args.kernels else [k.strip() for k in args.kernels.split(",")]
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:  # fail fast, before minutes of benchmarking, on a typo
        console.print(f"unknown kernels: {', '.join(unknown)}; known: {', '.join(zoo.names())}")
        return 2

    try:
        from autosched.static import static_schedule
    except ImportError as e:
        console.print(f"[red]cannot import autosched.static.static_schedule[/]: {e}")
        return 2

    bl.setup_threads()
    hw = detect_hardware()
    target = cpu_target(hw)
    plan = Plan.make(args.quick)

    env = benv.environment(hw, target)
    for k, v in env.items():
        console.print(f"[bold]{k}[/]: {v}", highlight=False)
    if env["TVM_NUM_THREADS"] != str(hw.num_cores):
        console.print(
            f"[yellow]note[/]: TVM_NUM_THREADS={env['TVM_NUM_THREADS']} but "
            f"{hw.num_cores} physical cores detected"
        )

    tuned_by_service = None
    if args.service and args.tune > 0:
        from bench.via_service import tune_through_service

        # All tuning happens before any timing here, so the worker never competes with it.
        tuned_by_service = tune_through_service(args.service, names, args.tune, console)

    benv.warn_if_busy(hw.num_cores)
    results: list[Result] = []
    for n in names:
        t0 = time.perf_counter()
        with console.status(f"benchmarking {n} ..."):
            r = bench_kernel(
                n, hw, target, plan, args.seed, static_schedule, args.stat, args.tune,
                tuned_by_service,
            )  # fmt: skip
        results.append(r)
        console.print(
            f"{n}: check {r.check}, naive {_ms(r.naive_s)} ms, static {_ms(r.static_s)} ms, "
            f"tuned {_ms(r.tuned_s)} ms ({r.tuned_check}, tuning {r.tune_wall_s or 0:.1f} s), "
            f"numpy {_ms(r.numpy_s)} ms, torch {_ms(r.torch_s)} ms "
            f"(schedule+compile {_ms(r.schedule_s)} ms; {time.perf_counter() - t0:.1f} s)",
            highlight=False,
        )

    print_table(results, args.stat)
    print_headlines(results)
    benv.warn_if_busy(hw.num_cores, after=True)

    if args.json:
        doc = {
            "environment": env,
            "plan": asdict(plan),
            "stat": args.stat,
            "results": [
                asdict(r)
                | {
                    "speedup_vs_naive": r.speedup,
                    "baseline_over_static": r.vs_baseline,
                    "gflops": r.gflops,
                }
                for r in results
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2))

    failed = [r.kernel for r in results if "FAIL" in (r.check, r.tuned_check) or r.check == "ERROR"]
    if failed:
        console.print(f"[red]numerical check failed for: {', '.join(failed)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
