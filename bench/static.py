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

This module parses the command line and prints the tables and targets; measuring one
kernel is in ``bench/static_kernel.py``, shared formats in ``bench/report.py``.

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
from dataclasses import asdict
from pathlib import Path

# `python bench/static.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosched import zoo
from autosched.hardware import cpu_target, detect_hardware
from bench import env as benv
from bench import harness, report, roofline
from bench.static_kernel import Plan, Result, bench_kernel

console = report.make_console(160)

NAIVE_TARGET = 10.0  # matmul_1024 and conv2d kernels: static at least 10x the naive build
LENET_TARGET = 1.5  # lenet: static time at most 1.5x PyTorch's


def best_s(r: Result) -> float | None:
    """autosched's best time for the kernel: static, or tuned when that is faster."""
    return min((s for s in (r.static_s, r.tuned_s) if s), default=None)


def print_table(
    results: list[Result], stat: str, roofs: dict[str, roofline.RoofShare | None]
) -> None:
    tuned = any(r.tuned_s for r in results)
    what = "static and tuned" if tuned else "static"
    columns: list[tuple[str, report.Justify]] = [
        ("kernel", "left"),
        ("stages", "left"),
        ("check", "left"),
        ("GFLOP/s", "right"),
        ("roof", "right"),
        ("naive ms", "right"),
        ("static ms", "right"),
        ("vs naive", "right"),
    ]
    if tuned:
        columns += [("tuned ms", "right"), ("tuned vs static", "right")]
    columns += [("numpy ms", "right"), ("torch ms", "right"), ("baseline/static", "right")]
    if tuned:
        columns += [("baseline/tuned", "right")]
    t = report.table(
        f"autosched {what} schedules vs naive TVM, numpy and PyTorch ({stat}s)", columns
    )
    for r in results:
        tuned_cells = (
            [report.ms(r.tuned_s), report.times(report.over(r.static_s, r.tuned_s))]
            if tuned
            else []
        )
        tail = [report.baseline_cell(r.tuned_vs_baseline, r.kernel)] if tuned else []
        t.add_row(
            r.kernel,
            r.templates,
            report.check_cell(r.check),
            report.rate(r.gflops),
            report.roof_cell(roofs[r.kernel]),
            report.ms(r.naive_s),
            report.ms(r.static_s),
            report.times(r.speedup),
            *tuned_cells,
            report.ms(r.numpy_s),
            report.ms(r.torch_s),
            report.baseline_cell(r.vs_baseline, r.kernel),
            *tail,
        )
    console.print(t)
    console.print(
        "stages: one letter per stage, D direct compute, S simple reduction, "
        "C complex reduction, L location-tunable. baseline/static = baseline time / static "
        "time (> 1: autosched faster); baseline is numpy (np) for matmul-like kernels, "
        "PyTorch (pt) otherwise. " + report.ROOF_LEGEND + " It is for the best of static and "
        "tuned; GFLOP/s is the static schedule's."
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
            f"{name} static vs naive: {report.times(sp)} "
            f"(target ≥ {NAIVE_TARGET:.0f}×) {verdict(ok)}"
        )
    r = by_name.get("lenet")
    if r is not None:
        static_over_torch = report.over(r.static_s, r.torch_s)
        ok = None if static_over_torch is None else static_over_torch <= LENET_TARGET
        console.print(
            f"lenet static vs PyTorch: static/torch time = {report.ratio(static_over_torch)} "
            f"(target ≤ {LENET_TARGET}) {verdict(ok)}"
        )
        if r.tuned_s and r.torch_s:
            tuned_over_torch = r.tuned_s / r.torch_s
            console.print(
                f"lenet tuned vs PyTorch: tuned/torch time = {tuned_over_torch:.2f} (target < 1) "
                f"{verdict(tuned_over_torch < 1)}"
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
    if report.reject_unknown_kernels(console, names):
        return 2

    harness.setup_threads()
    hw = detect_hardware()
    target = cpu_target(hw)
    plan = Plan.make(args.quick)

    env = benv.environment(hw, target)
    report.print_environment(console, env)
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
    with console.status("measuring the roofline ..."):
        machine = roofline.measure_machine(hw, target)
    report.print_roofline(console, machine)

    results: list[Result] = []
    for n in names:
        t0 = time.perf_counter()
        with console.status(f"benchmarking {n} ..."):
            r = bench_kernel(
                n, hw, target, plan, args.seed, args.stat, args.tune,
                tuned_by_service, console=console,
            )  # fmt: skip
        results.append(r)
        console.print(
            f"{n}: check {r.check}, naive {report.ms(r.naive_s)} ms, "
            f"static {report.ms(r.static_s)} ms, tuned {report.ms(r.tuned_s)} ms "
            f"({r.tuned_check}, tuning {r.tune_wall_s or 0:.1f} s), "
            f"numpy {report.ms(r.numpy_s)} ms, torch {report.ms(r.torch_s)} ms "
            f"(schedule+compile {report.ms(r.schedule_s)} ms; {time.perf_counter() - t0:.1f} s)",
            highlight=False,
        )

    roofs = {
        r.kernel: roofline.place_zoo_kernel(machine, r.kernel, r.gflop, best_s(r)) for r in results
    }
    print_table(results, args.stat, roofs)
    print_headlines(results)
    benv.warn_if_busy(hw.num_cores, after=True)

    if args.json:
        doc = {
            "environment": env,
            "plan": asdict(plan),
            "stat": args.stat,
            "roofline": asdict(machine) | {"ridge": machine.ridge},
            "results": [
                asdict(r)
                | {
                    "speedup_vs_naive": r.speedup,
                    "baseline_over_static": r.vs_baseline,
                    "gflops": r.gflops,
                    "roof": asdict(roof) if (roof := roofs[r.kernel]) else None,
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
