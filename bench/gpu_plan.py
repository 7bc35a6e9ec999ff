"""``bench/gpu.py --dry-run``: the plan, compiled. Every kernel's static autosched schedule
is built for the GPU's arch (the device's, else a target tag's) without a GPU, torch or
MetaSchedule."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import tvm
from rich.console import Console

from autosched.gpu_hardware import detect_gpu_hardware
from autosched.hardware import HardwareParams, cpu_target
from autosched.host_description import cuda_devices
from bench import report
from bench.gpu_kernels import KERNELS, GpuKernel
from bench.gpu_report import Cells, Columns, print_table, write_markdown
from bench.tune_both import describe_error

PLAN_COLUMNS: Columns = [
    ("kernel", "left"),
    ("family", "left"),
    ("what", "left"),
    ("GFLOP", "right"),
    ("stages (meta-template)", "left"),
    ("space", "right"),
    ("build s", "right"),
    ("static schedule", "left"),
]


def plan_cells(kernel: GpuKernel, hw: HardwareParams, target: tvm.target.Target) -> Cells:
    """Analyze a kernel, build its autosched template and compile its static schedule."""
    from autosched.analysis import analyze
    from autosched.schedule import apply_config, build_template, static_config
    from autosched.wire import Workload

    func = Workload.from_tensors(kernel.build(), kernel.name).prim_func
    stages = analyze(func)
    space, status = "-", "[green]ok[/]"
    t0 = time.perf_counter()
    try:
        space = f"{build_template(func, hw, stages).size():.1e}"
        config = static_config(func, hw, stages)
        tvm.compile(apply_config(func, config, hw, stages=stages).mod, target=target)
    except Exception as e:
        status = f"[red]ERROR[/] {describe_error(e)}"
    return [
        kernel.name,
        kernel.family,
        kernel.description,
        f"{report.gflop(func):.3f}",
        ", ".join(f"{s.name} ({s.meta_template})" for s in stages),
        space,
        f"{time.perf_counter() - t0:.1f}",
        status,
    ]


def dry_run(console: Console, names: Sequence[str], args: argparse.Namespace) -> int:
    """Compile and list the plan; 1 when a static schedule failed to build."""
    on_device = bool(cuda_devices())
    hw = detect_gpu_hardware(device=0) if on_device else detect_gpu_hardware(tag=args.gpu_tag)
    assert hw.gpu is not None  # detect_gpu_hardware always describes a GPU
    target = cpu_target(hw)
    env = {
        "mode": "dry run: static autosched schedules compiled, nothing tuned or timed",
        "GPU parameters from": "cuda:0" if on_device else f"target tag {args.gpu_tag}",
        "target key": hw.target_key,
        "target": str(target),
        "tvm": tvm.__version__,
    }
    report.print_environment(console, env)
    title = f"plan: {len(names)} kernels, autosched vs MetaSchedule at {args.trials} trials each"
    rows = []
    for name in names:
        with console.status(f"{name}: static schedule, CUDA build ..."):
            rows.append(plan_cells(KERNELS[name], hw, target))
    print_table(console, title, PLAN_COLUMNS, rows)
    failed = [r[0] for r in rows if not r[-1].startswith("[green]")]
    summary = f"{len(rows) - len(failed)} of {len(rows)} static schedules built for {hw.gpu.arch}"
    summary += f"; failed: {', '.join(failed)}" if failed else ""
    console.print(summary, highlight=False)
    if args.out:
        write_markdown(
            args.out,
            "autosched GPU benchmark: dry run",
            env,
            [(title, PLAN_COLUMNS, rows)],
            [summary],
        )
    return 1 if failed else 0
