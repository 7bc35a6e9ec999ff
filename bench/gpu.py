"""Benchmark on a GPU host: autosched vs MetaSchedule (CUDA) and vs PyTorch (cuBLAS/cuDNN).

For every kernel (``bench/gpu_kernels.py``: fp32 and fp16 matmuls at 1024³, 4096³ and
BERT-base shapes, ResNet-50 conv layers, depthwise conv, softmax, layer norm), in one
process on ``cuda:0``: tune with autosched (``tune``, CUDA meta-templates, runner on
``cuda:0``) and with MetaSchedule (``tune_tir`` with the CUDA target and its default rules,
which on sm_75+ include its tensor-core rules) at the same trial budget, check both winners
and the PyTorch op against the reference, then time all three with the same timer (CUDA
events, L2 flushed before every sample, interleaved rounds, median). A wrong answer is
reported as such and never timed. Both tuners compile candidates on all the host's CPUs
(MetaSchedule's builder is given as many workers as autosched's has) and measure them on
the one GPU, so their tuning wall times compare like with like.

    python -m bench.gpu                                  # the default kernels, 64 trials
    python -m bench.gpu --trials 16 --out gpu_table.md   # also write the table as markdown
    python -m bench.gpu --kernels matmul_4096,softmax_4096 --no-metaschedule
    python -m bench.gpu --dry-run                        # no GPU needed: compile the plan

``--dry-run`` compiles every kernel's static autosched schedule for the GPU's arch (the
device's when there is one, else ``--gpu-tag``) and lists the plan; it needs neither torch,
MetaSchedule nor a GPU. Without a CUDA device and without ``--dry-run`` the script exits
with status 2. The timer uses torch's CUDA events, so a measuring run needs torch even with
``--no-torch`` (which only drops the PyTorch column).

The targets (stated at 64 trials per kernel) are printed as met or missed: geomean speed
≥ 1.0× MetaSchedule, fp32 matmul 4096³ ≥ 0.7× cuBLAS, conv2d ≥ 0.8× cuDNN (geomean of the
conv2d kernels), softmax and layer norm ≥ 0.8× PyTorch, autosched's total tuning wall time
≤ 0.5× MetaSchedule's.

This module measures and prints; the rows, targets and tables are in ``bench/gpu_report.py``,
the dry run in ``bench/gpu_plan.py``, the kernels in ``bench/gpu_kernels.py`` and how a
kernel is run and timed on the device in ``bench/gpu_measure.py``.

Exit status: 0 when every winner and baseline that ran matched the reference, 1 when one
did not (or a dry-run build failed), 2 for a bad command line or a missing GPU or torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

# `python bench/gpu.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvm

from autosched.gpu_hardware import detect_gpu_hardware
from autosched.hardware import HardwareParams, cpu_target
from autosched.host_description import cuda_devices
from bench import env as benv
from bench import harness, report
from bench.gpu_kernels import DEFAULT_KERNELS, KERNELS, GpuKernel, unknown
from bench.gpu_plan import dry_run
from bench.gpu_report import (
    LEGEND,
    RESULT_COLUMNS,
    GpuRow,
    error_lines,
    print_table,
    result_cells,
    targets,
    write_markdown,
)
from bench.tune_both import Plan, build_and_check, describe_error, time_oneoff_imports

console = report.make_console(200)

DEFAULT_TRIALS = 64  # the budget the targets are stated at
DEFAULT_GPU_TAG = "nvidia/nvidia-h100"  # sm_90, the lent H200's arch, for --dry-run
NO_GPU = (
    "no CUDA device found: bench/gpu.py measures on cuda:0. Run it on a GPU host, or pass "
    "--dry-run to compile every kernel's static schedule for the GPU's arch without one."
)
NO_TORCH = (
    "PyTorch is not installed: bench/gpu.py times every contender with torch's CUDA events "
    "(--no-torch only drops the PyTorch baselines). Install torch with CUDA, or --dry-run."
)

# --------------------------------------------------------------------------------------
# Measuring one kernel
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    hw: HardwareParams
    target: tvm.target.Target
    trials: int
    plan: Plan
    seed: int
    run_ms: bool
    run_torch: bool
    builder_workers: int


def bench_kernel(kernel: GpuKernel, setup: Setup, timer: Any) -> GpuRow:
    from autosched.schedule import apply_config
    from bench.gpu_measure import DeviceCase
    from bench.tune_both import tune_autosched, tune_metaschedule

    hw, target, trials, seed = setup.hw, setup.target, setup.trials, setup.seed
    case = DeviceCase.make(kernel, hw, seed)
    row = GpuRow(
        kernel=kernel.name,
        trials=trials,
        gflop=report.gflop(case.func),
        family=kernel.family,
        description=kernel.description,
    )

    def autosched_winner() -> Any:
        # tune() measures on cuda:0 for a "cuda" hw: LocalMeasurer(LocalBuilder(work_dir),
        # LocalRunner(work_dir, device="cuda:0")), its builder on all the host's CPUs.
        config = tune_autosched(kernel.name, case.tensors, trials, hw, seed, row)
        if config is None:
            raise RuntimeError("no trial verified")
        row.extra["as_best_config"] = config.to_json()
        return tvm.compile(apply_config(case.func, config, hw).mod, target=target)

    def metaschedule_winner() -> Any:
        sch = tune_metaschedule(
            case.func, target, trials, seed, row, builder_workers=setup.builder_workers
        )
        if sch is None:
            raise RuntimeError("compile_tir found no valid record")
        return tvm.compile(sch.mod, target=target)

    kw = {"repeat": setup.plan.repeat, "min_repeat_ms": setup.plan.min_repeat_ms}
    samplers: dict[str, Callable[[], list[float]]] = {}
    as_lib, row.as_check, row.as_error, err = build_and_check(autosched_winner, case, console)
    row.extra["as_max_abs_err"] = err
    if as_lib is not None and row.as_check == "ok":  # a wrong answer is never timed
        samplers["as"] = partial(timer.samples, case.tvm_call(as_lib)[0], **kw)
    if setup.run_ms:
        ms_lib, row.ms_check, row.ms_error, err = build_and_check(
            metaschedule_winner, case, console
        )
        row.extra["ms_max_abs_err"] = err
        if ms_lib is not None and row.ms_check == "ok":
            samplers["ms"] = partial(timer.samples, case.tvm_call(ms_lib)[0], **kw)
    if setup.run_torch:
        try:
            call, out = case.torch_call()
            row.extra["torch_max_abs_err"] = case.check_output(out.cpu().numpy())
            row.torch_check = "ok"
            samplers["torch"] = partial(timer.torch_samples, call, **kw)
        except AssertionError as e:
            row.torch_check, row.torch_error = "FAIL", describe_error(e)
        except Exception as e:
            row.torch_check, row.torch_error = "ERROR", describe_error(e)

    med, samples = harness.interleaved(samplers, setup.plan.rounds)
    row.extra["samples_ms"] = {k: [round(x * 1e3, 5) for x in v] for k, v in samples.items()}
    row.as_s, row.ms_s, row.torch_s = med.get("as"), med.get("ms"), med.get("torch")
    return row


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="budget of both tuners")
    ap.add_argument(
        "--kernels",
        help=f"comma-separated names (default: {','.join(DEFAULT_KERNELS)}; "
        f"all: {','.join(KERNELS)})",
    )
    ap.add_argument("--out", type=Path, help="also write the table(s) as markdown to this file")
    ap.add_argument("--json", type=Path, help="also write every number to this JSON file")
    ap.add_argument("--no-metaschedule", action="store_true", help="skip MetaSchedule")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU needed: compile each kernel's static autosched schedule and list the plan",
    )
    ap.add_argument(
        "--gpu-tag",
        default=DEFAULT_GPU_TAG,
        help="TVM target tag whose GPU a dry run builds for when there is no CUDA device",
    )
    ap.add_argument("--quick", action="store_true", help="fewer timing rounds (noisier)")
    ap.add_argument("--seed", type=int, default=0, help="tuner seed and input seed")
    args = ap.parse_args(argv)
    if args.trials < 1:
        ap.error("--trials must be at least 1")
    return args


def kernel_names(arg: str | None) -> list[str]:
    return [k.strip() for k in arg.split(",") if k.strip()] if arg else list(DEFAULT_KERNELS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = kernel_names(args.kernels)
    bad = unknown(names)
    if bad:
        console.print(f"unknown kernels: {', '.join(bad)}; known: {', '.join(KERNELS)}")
        return 2
    if args.dry_run:
        return dry_run(console, names, args)
    if not cuda_devices():
        console.print(f"[red]{NO_GPU}[/]")
        return 2
    if not benv.torch_available():
        console.print(f"[red]{NO_TORCH}[/]")
        return 2
    return measure(names, args)


def measure(names: Sequence[str], args: argparse.Namespace) -> int:
    from autosched.tune.resources import usable_cpus
    from bench.gpu_measure import EventTimer, setup_torch

    hw = detect_gpu_hardware(device=0)
    assert hw.gpu is not None
    target = cpu_target(hw)
    timer = EventTimer(hw.gpu.l2_bytes)
    env = benv.environment(hw, target) | setup_torch() | {"timer": timer.describe()}
    report.print_environment(console, env)
    setup = Setup(
        hw,
        target,
        args.trials,
        Plan.make(args.quick),
        args.seed,
        run_ms=not args.no_metaschedule,
        run_torch=not args.no_torch,
        builder_workers=usable_cpus(),
    )

    oneoff = time_oneoff_imports(console, metaschedule=setup.run_ms)

    rows: list[GpuRow] = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        kernel = KERNELS[name]
        try:
            with console.status(f"{name} @{args.trials} trials ..."):
                r = bench_kernel(kernel, setup, timer)
        except Exception as e:  # a failure outside the tuners (reference, device): go on
            console.print(traceback.format_exc(), markup=False, highlight=False)
            r = GpuRow(name, args.trials, 0.0, family=kernel.family, as_check="ERROR")
            r.as_error = f"benchmark failed: {describe_error(e)}"
        rows.append(r)
        console.print(
            f"{name}: autosched {report.ms(r.as_s)} ms ({r.as_check}, tune "
            f"{report.sec(r.as_tune_s)} s) | MS {report.ms(r.ms_s)} ms ({r.ms_check}, tune "
            f"{report.sec(r.ms_tune_s)} s) | PyTorch {report.ms(r.torch_s)} ms "
            f"({r.torch_check}) [{time.perf_counter() - t0:.0f} s]",
            highlight=False,
            markup=False,
        )

    title = (
        f"autosched vs MetaSchedule and PyTorch on {env.get('gpu', 'cuda:0')}, {args.trials} trials"
    )
    cells = result_cells(rows)
    print_table(console, title, RESULT_COLUMNS, cells)
    console.print(LEGEND)
    goals = targets(rows)
    trials_note = (
        ""
        if args.trials == DEFAULT_TRIALS
        else f" (stated at {DEFAULT_TRIALS} trials; this run: {args.trials})"
    )
    target_lines = [f"Targets{trials_note}:"] + [f"- {t.line()}" for t in goals]
    errors = error_lines(rows)
    for line in [*target_lines, *errors]:
        console.print(line, highlight=False)
    console.print(f"total wall time {time.perf_counter() - t_all:.0f} s", highlight=False)

    if args.out:
        notes = [LEGEND, "", *target_lines, "", *(f"- {e}" for e in errors)]
        write_markdown(
            args.out, "autosched GPU benchmark", env, [(title, RESULT_COLUMNS, cells)], notes
        )
    if args.json:
        doc = {
            "environment": env,
            "plan": asdict(setup.plan),
            "one_off_s": oneoff,
            "targets": [asdict(t) | {"verdict": t.verdict} for t in goals],
            "rows": [
                asdict(r)
                | {
                    "speed_vs_metaschedule": r.ms_over_as,
                    "speed_vs_torch": r.base_over_as,
                    "tune_over_metaschedule": r.tune_over_ms,
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    checks = [c for r in rows for c in (r.as_check, r.ms_check, r.torch_check)]
    return 1 if "FAIL" in checks else 0


if __name__ == "__main__":
    sys.exit(main())
