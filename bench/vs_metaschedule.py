"""Benchmark: autosched's tuner against TVM MetaSchedule at the same trial budget.

For every kernel, in one process on one machine with one TVM_NUM_THREADS: tune with
autosched (``autosched.tune.tune``) and with MetaSchedule (``ms.tune_tir``) at the same
number of trials, then re-time both winners with the same timer (time_evaluator, cache
flush of every argument but the first, median), alternating them in rounds so that noise
hits both alike, check both against the unscheduled ("naive") build, and time numpy
(matmul-like kernels) and PyTorch CPU next to them.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/vs_metaschedule.py
    ... --kernels matmul_512 --trials 16 --quick          # a quick smoke run
    ... --extra-256 matmul_1024,conv2d_resnet_c2           # those also at 256 trials
    ... --lenet                                            # also tune LeNet vs PyTorch
    ... --json out.json                                    # also dump the numbers
    ... --trials 1000 --curve --kernels conv2d_bias_relu   # large budget, tuning curves

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (as scripts/run.sh does): this machine's
environment forces an old Haswell kernel on OpenBLAS, which would make the numpy baseline
slower than it really is. Run it on an otherwise idle machine: both tuners measure on the
same 2 cores.

MetaSchedule needs ``cloudpickle`` (its process pools pickle the build function) besides
``xgboost`` and ``psutil``. Its default builder imports ``tvm.s_tir.tensor_intrin`` in every
fresh worker (~30 s a batch); this script passes a build function that skips that import
(plain fp32 CPU kernels use no tensor intrinsics), and imports the intrinsics once in the
main process up front (TuneContext does it anyway) so that the one-off cost is reported
separately instead of being charged to the first kernel.

This module parses the command line and prints the tables and targets; measuring one
kernel is in ``bench/tune_both.py``, shared formats in ``bench/report.py``.

Exit status: 0 when every winner that was built matched the naive output, 1 otherwise.
"""

from __future__ import annotations

import os
import sys

# TVM reads TVM_NUM_THREADS lazily at its first parallel region and otherwise uses a single
# thread on these machines; export it before anything can run TVM code (the tuners'
# measurement processes inherit it).
os.environ.setdefault(
    "TVM_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
)

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# `python bench/vs_metaschedule.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvm

from autosched.hardware import cpu_target, detect_hardware
from bench import env as benv
from bench import harness, report, roofline, tuning_curve
from bench.tune_both import Plan, Row, bench_one, time_oneoff_imports

console = report.make_console(180)

DEFAULT_KERNELS = [
    "matmul_512",
    "matmul_1024",
    "dense_bias_relu",
    "batch_matmul",
    "conv2d_resnet_c2",
    "conv2d_resnet_c3",
    "depthwise_conv2d",
    "softmax",
    "layer_norm",
]
MS_TARGET, MS_GOAL = 1.0, 1.1  # geomean of MS time / autosched time
BLAS_TARGET, BLAS_GOAL = 0.8, 0.9  # matmul_1024: numpy time / autosched time


def print_table(
    rows: list[Row], trials: int, roofs: dict[tuple[str, int], roofline.RoofShare | None]
) -> None:
    """``roofs``: autosched's place on the roofline by (kernel, trials)."""
    t = report.table(
        f"autosched vs MetaSchedule at {trials} trials (re-timed here, medians)",
        [
            ("kernel", "left"),
            ("GFLOP/s as", "right"),
            ("roof as", "right"),
            ("autosched ms", "right"),
            ("MS ms", "right"),
            ("MS/as", "right"),
            ("as tune s", "right"),
            ("MS tune s", "right"),
            ("numpy ms", "right"),
            ("torch ms", "right"),
            ("base/as", "right"),
            ("check as/MS", "left"),
            ("trials as/MS", "right"),
        ],
    )
    for r in rows:
        ms_over_as = r.ms_over_as
        ratio_s = report.ratio(ms_over_as)
        if ms_over_as is not None:
            ratio_s = f"[green]{ratio_s}[/]" if ms_over_as >= 1 else f"[red]{ratio_s}[/]"
        t.add_row(
            r.kernel,
            report.rate(report.over(r.gflop, r.as_s)),
            report.roof_cell(roofs[r.kernel, r.trials]),
            report.ms(r.as_s),
            report.ms(r.ms_s),
            ratio_s,
            report.sec(r.as_tune_s),
            report.sec(r.ms_tune_s),
            report.ms(r.numpy_s),
            report.ms(r.torch_s),
            report.baseline_cell(r.base_over_as, r.kernel),
            f"{report.check_cell(r.as_check)}/{report.check_cell(r.ms_check)}",
            f"{r.as_trials}/{r.ms_trials}",
        )
    console.print(t)


def print_errors(rows: list[Row]) -> None:
    for r in rows:
        for who, err in (("autosched", r.as_error), ("MetaSchedule", r.ms_error)):
            if err:
                console.print(
                    f"[red]{who}[/] {r.kernel}@{r.trials}: {err}", markup=True, highlight=False
                )
        if r.extra.get("as_trial_errors") or r.extra.get("ms_failed_trials"):
            console.print(
                f"{r.kernel}@{r.trials}: failed trials autosched "
                f"{r.extra.get('as_trial_errors', {})}, MS {r.extra.get('ms_failed_trials', 0)}",
                highlight=False,
            )


def print_headlines(rows: list[Row], trials: int) -> dict[str, Any]:
    main = [r for r in rows if r.trials == trials]
    gm = report.geomean([r.ms_over_as for r in main if r.ms_over_as])
    n = sum(1 for r in main if r.ms_over_as)

    def verdict(v: float | None, target: float, goal: float) -> str:
        if v is None:
            return "[yellow]n/a[/]"
        if v >= goal:
            return "[green]goal met[/]"
        return "[green]target met[/]" if v >= target else "[red]missed[/]"

    console.print("\n[bold]Targets[/]")
    console.print(
        f"geomean vs MetaSchedule @{trials}: {report.ratio(gm)} over {n} kernels "
        f"(target ≥ {MS_TARGET}, goal {MS_GOAL}) {verdict(gm, MS_TARGET, MS_GOAL)}",
        highlight=False,
    )
    as_total = sum(r.as_tune_s or 0.0 for r in main)
    ms_total = sum(r.ms_tune_s or 0.0 for r in main)
    console.print(
        f"tuning wall time @{trials}: autosched total {as_total:.1f} s vs MS total "
        f"{ms_total:.1f} s",
        highlight=False,
    )
    for r in rows:
        if r.trials != trials:
            console.print(
                f"{r.kernel} @{r.trials}: MS/autosched {report.ratio(r.ms_over_as)}, tuning wall "
                f"autosched {report.sec(r.as_tune_s)} s vs MS {report.sec(r.ms_tune_s)} s",
                highlight=False,
            )
    blas = {}
    for r in rows:
        if r.kernel == "matmul_1024" and r.numpy_s and r.as_s:
            speed = blas[r.trials] = r.numpy_s / r.as_s
            console.print(
                f"matmul_1024 vs OpenBLAS @{r.trials}: autosched/numpy speed ratio {speed:.2f} "
                f"(target ≥ {BLAS_TARGET}, goal {BLAS_GOAL}) "
                f"{verdict(speed, BLAS_TARGET, BLAS_GOAL)}",
                highlight=False,
            )
    return {
        "geomean_ms_over_autosched": gm,
        "geomean_kernels": n,
        "autosched_tune_total_s": as_total,
        "ms_tune_total_s": ms_total,
        "matmul_1024_numpy_over_autosched": blas,
    }


# --------------------------------------------------------------------------------------
# LeNet
# --------------------------------------------------------------------------------------


def bench_lenet(
    trials: int, hw: Any, target: tvm.target.Target, plan: Plan, seed: int, torch_ok: bool
) -> dict[str, Any]:
    row = bench_one(
        "lenet", trials, hw, target, plan, seed, console, run_ms=False, torch_ok=torch_ok
    )
    as_over_torch = report.over(row.as_s, row.torch_s)
    console.print(
        f"\n[bold]LeNet[/] @{trials} trials: autosched {report.ms(row.as_s)} ms "
        f"(check {report.check_cell(row.as_check)}, tuning {report.sec(row.as_tune_s)} s, "
        f"{row.as_trials} trials) vs PyTorch {report.ms(row.torch_s)} ms: "
        f"autosched/torch time = {report.ratio(as_over_torch)} (< 1: autosched faster)",
        highlight=False,
    )
    if row.as_error:
        console.print(f"[red]autosched[/] lenet: {row.as_error}", highlight=False)
    return asdict(row) | {"autosched_over_torch": as_over_torch}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", help=f"comma-separated zoo names (default: {DEFAULT_KERNELS})")
    ap.add_argument("--trials", type=int, default=64, help="trial budget of both tuners")
    ap.add_argument(
        "--extra-256",
        default="",
        metavar="K1,K2",
        help="also run these kernels at 256 trials (e.g. matmul_1024,conv2d_resnet_c2)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer timing repeats (noisier)")
    ap.add_argument("--lenet", action="store_true", help="also tune LeNet vs PyTorch")
    ap.add_argument("--lenet-trials", type=int, default=64)
    ap.add_argument("--no-ms", action="store_true", help="skip MetaSchedule (autosched only)")
    ap.add_argument(
        "--curve",
        action="store_true",
        help="print the tuning curves' end points (best after 64, 128, 256, 512, 1000 "
        "trials); on by default above 64 trials, always in the JSON",
    )
    ap.add_argument("--seed", type=int, default=0, help="tuner seed and input seed")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    names = [k.strip() for k in args.kernels.split(",")] if args.kernels else DEFAULT_KERNELS
    extra = [k.strip() for k in args.extra_256.split(",") if k.strip()]
    if report.reject_unknown_kernels(console, names + extra):
        return 2

    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            console.print(
                f"[yellow]warning[/]: {var}={os.environ[var]} is set: numpy's OpenBLAS runs a "
                "forced (older) kernel and the numpy baseline looks slower than it is; run "
                "via `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                "bench/vs_metaschedule.py ...`"
            )

    harness.setup_threads()
    hw = detect_hardware()
    target = cpu_target(hw)
    plan = Plan.make(args.quick)
    torch_ok = benv.torch_available()
    env = benv.environment(hw, target)
    report.print_environment(console, env)
    benv.warn_if_busy(hw.num_cores)
    with console.status("measuring the roofline ..."):
        machine = roofline.measure_machine(hw, target)
    report.print_roofline(console, machine)

    run_ms = not args.no_ms
    oneoff = time_oneoff_imports(console, metaschedule=run_ms)

    jobs = [(n, args.trials) for n in names] + [(n, 256) for n in extra if args.trials != 256]
    rows: list[Row] = []
    t_all = time.perf_counter()
    for n, trials in jobs:
        t0 = time.perf_counter()
        with console.status(f"{n} @{trials} trials ..."):
            r = bench_one(
                n, trials, hw, target, plan, args.seed, console, run_ms=run_ms, torch_ok=torch_ok
            )
        rows.append(r)
        console.print(
            f"{n} @{trials}: autosched {report.ms(r.as_s)} ms ({r.as_check}, "
            f"tune {report.sec(r.as_tune_s)} s, tuned {report.ms(r.as_tuned_s)} ms) | "
            f"MS {report.ms(r.ms_s)} ms ({r.ms_check}, tune {report.sec(r.ms_tune_s)} s, "
            f"tuned {report.ms(r.ms_tuned_s)} ms) | MS/as {report.ratio(r.ms_over_as)} | "
            f"numpy {report.ms(r.numpy_s)} torch {report.ms(r.torch_s)} ms "
            f"[{time.perf_counter() - t0:.0f} s]",
            highlight=False,
            markup=False,
        )

    roofs = {
        (r.kernel, r.trials): roofline.place_zoo_kernel(machine, r.kernel, r.gflop, r.as_s)
        for r in rows
    }
    for trials in sorted({t for _, t in jobs}):
        print_table([r for r in rows if r.trials == trials], trials, roofs)
    console.print(
        "MS/as = MetaSchedule time / autosched time (> 1: autosched faster). base/as = "
        "baseline time / autosched time, baseline numpy (np) for matmul-like kernels, PyTorch "
        "(pt) otherwise. tune s = wall time of tune() / tune_tir(). " + report.ROOF_LEGEND
    )
    if args.curve or max(t for _, t in jobs) > 64:
        tuning_curve.print_curves(console, rows)
    print_errors(rows)
    summary = print_headlines(rows, args.trials)

    lenet = None
    if args.lenet:
        with console.status(f"lenet @{args.lenet_trials} trials ..."):
            lenet = bench_lenet(args.lenet_trials, hw, target, plan, args.seed, torch_ok)
    console.print(f"total wall time {time.perf_counter() - t_all:.0f} s", highlight=False)

    if args.json:
        doc = {
            "environment": env,
            "plan": asdict(plan),
            "one_off_s": oneoff,
            "roofline": asdict(machine) | {"ridge": machine.ridge},
            "summary": summary,
            "rows": [
                asdict(r)
                | {
                    "ms_over_autosched": r.ms_over_as,
                    "baseline_over_as": r.base_over_as,
                    "autosched_roof": asdict(roof) if (roof := roofs[r.kernel, r.trials]) else None,
                }
                for r in rows
            ],
            "lenet": lenet,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))

    checks = [c for r in rows for c in (r.as_check, r.ms_check)]
    if lenet:
        checks.append(lenet["as_check"])
    return 1 if "FAIL" in checks else 0


if __name__ == "__main__":
    sys.exit(main())
