"""Explain MetaSchedule's best schedule in autosched's terms, and list what no autosched
config can produce.

For each zoo kernel: tune with MetaSchedule as bench/vs_metaschedule.py does, take the best
record's trace, interpret it (``bench.ms_trace``: per block its tiling levels and factors,
loop order, cache stages and where they are computed, compute-at and inlining, layout steps,
parallel / vectorize / unroll), and compare it with the kernel's autosched template
(``bench.ms_gaps``). A short autosched tune's best config is applied and explained the same
way (its schedule is an s_tir trace too), so the two can be read side by side.

    python bench/explain_ms.py --kernels conv2d_resnet_c4_s2,matmul_awkward --trials 64
    ... --ms-dir /tmp/ms             # keep MetaSchedule's databases there; reuse them if present
    ... --as-trials 0                # autosched's static config instead of a tune
    ... --top 8                      # also count the gaps over MS's 8 fastest records
    ... --json out.json

Timings printed are the tuners' own measurements on a possibly shared machine: indicative.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault(
    "TVM_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
)

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvm

from autosched import zoo
from autosched.hardware import HardwareParams, cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.wire import Workload
from bench import report
from bench.ms_gaps import Gap, describe, find_gaps, summary
from bench.ms_trace import TraceModel, interpret
from bench.tune_both import Row, tune_autosched, tune_metaschedule
from bench.tuning_curve import MS_FAILED_S, end_points, ms_latencies

DEFAULT_KERNELS = ["conv2d_resnet_c4_s2", "conv2d_bias_relu", "matmul_awkward"]
console = report.make_console(160)


def ms_best_schedule(
    func: tvm.tirx.PrimFunc, target: tvm.target.Target, trials: int, seed: int, work_dir: Path
) -> tuple[Any, Row]:
    """MetaSchedule's best schedule of ``func``, from the database in ``work_dir`` when one
    is there (a previous run), else from a fresh tune that leaves its database there."""
    from tvm.s_tir import meta_schedule as ms

    row = Row(kernel=work_dir.name, trials=trials, gflop=report.gflop(func))
    if (work_dir / "database_tuning_record.json").exists():
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        latencies = ms_latencies(work_dir)
        row.ms_trials = len(latencies)
        row.ms_curve = end_points(latencies, len(latencies))
        row.ms_tuned_s = min((x for x in latencies if x is not None), default=None)
        return ms.tir_integration.compile_tir(db, func, target), row
    work_dir.mkdir(parents=True, exist_ok=True)
    return tune_metaschedule(func, target, trials, seed, row, work_dir=str(work_dir)), row


def ms_top_traces(work_dir: Path, k: int) -> list[tuple[float, Any]]:
    """The ``k`` fastest valid records' (mean seconds, trace): a JSON database lists its
    records fastest first. Each stored trace includes its postprocessing steps."""
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    out: list[tuple[float, Any]] = []
    for record in db.get_all_tuning_records():
        secs = [float(x) for x in record.run_secs or []]
        if secs and sum(secs) / len(secs) < MS_FAILED_S:
            out.append((sum(secs) / len(secs), record.trace))
    return sorted(out, key=lambda r: r[0])[:k]


def gap_frequency(
    func: tvm.tirx.PrimFunc, traces: list[tuple[float, Any]], hw: HardwareParams
) -> dict[str, int]:
    """How many of the traces have each gap (feature and block): what MetaSchedule's good
    region keeps using, not just what its single best record happened to pick."""
    template = build_template(func, hw)
    counts: dict[str, int] = {}
    for _, trace in traces:
        for key in {f"{g.feature} {g.block}" for g in find_gaps(interpret(func, trace), template)}:
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def autosched_schedule(
    name: str, func: tvm.tirx.PrimFunc, trials: int, hw: HardwareParams, seed: int
) -> tuple[Any, Row]:
    row = Row(kernel=name, trials=trials, gflop=report.gflop(func))
    if trials > 0:
        config = tune_autosched(name, zoo.tensors(name), trials, hw, seed, row)
    else:
        config = static_config(func, hw)
    if config is None:
        return None, row
    row.extra["as_best_config"] = config.to_json()
    return apply_config(func, config, hw), row


def print_model(title: str, model: TraceModel) -> None:
    console.print(f"[bold]{title}[/]", highlight=False)
    for v in describe(model):
        line = f"  {v.name} [{v.role}] {v.location}"
        if v.tiling:
            line += "\n    tiling " + ", ".join(f"{a} {f}" for a, f in v.tiling.items())
            line += f"\n    order {v.order}"
        if v.loops:
            line += "\n    loops " + " ".join(v.loops)
        if v.unroll:
            line += "\n    unroll " + "; ".join(v.unroll)
        console.print(line, highlight=False, markup=False)
    if model.root_hints:
        console.print(f"  root hints {model.root_hints}", highlight=False, markup=False)
    if model.layout_steps:
        console.print(f"  layout {model.layout_steps}", highlight=False, markup=False)


def print_gaps(gaps: list[Gap]) -> None:
    if not gaps:
        console.print("[green]every step above has an autosched config[/]")
    for g in gaps:
        console.print(f"  [red]{g.feature}[/] {g.block}: {g.detail}", highlight=False)


def explain_kernel(
    name: str, args: argparse.Namespace, hw: HardwareParams, target: tvm.target.Target
) -> dict[str, Any]:
    func = Workload.from_tensors(zoo.tensors(name), name).prim_func
    out: dict[str, Any] = {"kernel": name, "description": zoo.get(name).description}
    console.rule(f"{name}: {zoo.get(name).description}")

    t0 = time.perf_counter()
    ms_sch, ms_row = ms_best_schedule(func, target, args.trials, args.seed, args.ms_dir / name)
    out["ms"] = {
        "tune_s": ms_row.ms_tune_s,
        "tuned_best_s": ms_row.ms_tuned_s,
        "wall_s": time.perf_counter() - t0,
    }
    if ms_sch is None:
        console.print("[red]MetaSchedule found no valid schedule[/]")
    else:
        ms_model = interpret(func, ms_sch.trace)
        print_model(
            f"MetaSchedule (tuned best {report.ms(ms_row.ms_tuned_s)} ms, indicative)", ms_model
        )
        gaps = find_gaps(ms_model, build_template(func, hw))
        console.print("[bold]what no autosched config can produce[/]")
        print_gaps(gaps)
        out["ms"] |= {"schedule": summary(ms_model), "gaps": [g.__dict__ for g in gaps]}
        if args.top > 1:
            top = ms_top_traces(args.ms_dir / name, args.top)
            freq = gap_frequency(func, top, hw)
            console.print(f"[bold]gaps among MetaSchedule's {len(top)} fastest records[/]")
            for key, n in freq.items():
                console.print(f"  {n}/{len(top)} {key}", highlight=False)
            out["ms"]["top_gap_frequency"] = {"records": len(top), "counts": freq}

    as_sch, as_row = autosched_schedule(name, func, args.as_trials, hw, args.seed)
    out["autosched"] = {"tune_s": as_row.as_tune_s, "tuned_best_s": as_row.as_tuned_s}
    if as_sch is not None:
        as_model = interpret(func, as_sch.trace)
        what = f"{args.as_trials} trials" if args.as_trials else "static config"
        print_model(
            f"autosched ({what}, tuned best {report.ms(as_row.as_tuned_s)} ms, indicative)",
            as_model,
        )
        out["autosched"] |= {
            "schedule": summary(as_model),
            "config": as_row.extra.get("as_best_config"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", help=f"comma-separated zoo names (default: {DEFAULT_KERNELS})")
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule's trial budget")
    ap.add_argument("--as-trials", type=int, default=64, help="autosched's budget (0: static)")
    ap.add_argument("--ms-dir", type=Path, help="keep (and reuse) MetaSchedule's databases here")
    ap.add_argument(
        "--top", type=int, default=8, help="also count gaps over MS's fastest N records"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the explanations to this JSON file")
    args = ap.parse_args(argv)
    names = [k.strip() for k in args.kernels.split(",")] if args.kernels else DEFAULT_KERNELS
    if report.reject_unknown_kernels(console, names):
        return 2
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    if args.ms_dir is None:
        import tempfile

        args.ms_dir = Path(tempfile.mkdtemp(prefix="explain-ms-"))
    hw = detect_hardware()
    target = cpu_target(hw)
    results = [explain_kernel(n, args, hw, target) for n in names]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
