"""The library commands: ``zoo``, ``export``, ``analyze``, ``schedule`` and ``tune``.

Each runs the library on this machine (no service involved): list and export the example
kernels, analyze a workload's stages, schedule it statically, or tune it by measuring
candidates here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from autosched.cli.output import console
from autosched.cli.workload import WorkloadPath, load_workload_file
from autosched.errors import AutoschedError


def register(app: typer.Typer) -> None:
    """Add the library commands to the ``autosched`` app."""
    app.command()(zoo)
    app.command()(export)
    app.command()(analyze)
    app.command()(schedule)
    app.command()(tune)


def zoo() -> None:
    """List the example kernels."""
    from autosched import zoo as kernels

    table = Table("name", "family", "description")
    for name in kernels.names():
        entry = kernels.get(name)
        table.add_row(name, entry.family, entry.description)
    console.print(table)


def export(
    name: str,
    output: Annotated[Path | None, typer.Option("-o", help="Write here, not stdout")] = None,
) -> None:
    """Write a zoo kernel as a wire-format JSON document."""
    from autosched import zoo as kernels
    from autosched.wire import serialize

    try:
        doc = serialize(kernels.tensors(name), name=name)
    except AutoschedError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    text = json.dumps(doc, indent=1)
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text + "\n")


def analyze(workload: WorkloadPath) -> None:
    """Print every stage's iteration kinds, meta-template (and why), producers, consumers."""
    from autosched.analysis import analyze as analyze_func

    wl = load_workload_file(workload)
    console.print(f"workload [bold]{wl.name}[/bold]  key {wl.key}")
    table = Table("stage", "iters", "extents", "meta-template", "why", "producers", "consumers")
    for s in analyze_func(wl.prim_func):
        table.add_row(
            s.name,
            s.iter_kinds,
            "x".join(map(str, s.extents)),
            str(s.meta_template),
            s.reason,
            ", ".join(s.producers) or "-",
            ", ".join(s.consumers) or "-",
        )
    console.print(table)


def schedule(
    workload: WorkloadPath,
    config_out: Annotated[
        Path | None, typer.Option("--config-out", help="Config JSON path (default: beside input)")
    ] = None,
    trace_out: Annotated[Path | None, typer.Option(help="Also write the TVM trace JSON")] = None,
) -> None:
    """Schedule a workload statically: print the scheduled TIR and write the config."""
    from autosched.analysis import analyze as analyze_func
    from autosched.hardware import detect_hardware
    from autosched.schedule import apply_config, build_template, static_config, trace_json

    wl = load_workload_file(workload)
    hw = detect_hardware()
    stages = analyze_func(wl.prim_func)
    template = build_template(wl.prim_func, hw, stages)
    config = static_config(wl.prim_func, hw, stages)
    try:
        sch = apply_config(wl.prim_func, config, hw, template, stages)
    except AutoschedError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    sys.stdout.write(sch.mod.script() + "\n")
    doc = {
        "workload_key": wl.key,
        "hardware": hw.to_json(),
        "template": template.to_json(),
        "config": config.to_json(),
    }
    out = config_out or workload.with_suffix(".config.json")
    out.write_text(json.dumps(doc, indent=1))
    console.print(f"config written to {out}", style="green")
    if trace_out:
        trace_out.write_text(json.dumps(trace_json(sch)))
        console.print(f"trace written to {trace_out}", style="green")


def tune(
    workload: WorkloadPath,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trial budget (total)")] = 64,
    records: Annotated[
        Path | None, typer.Option(help="Records file (default: WORKLOAD.records.jsonl)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--fresh", help="Continue from existing records")
    ] = True,
    threads: Annotated[int | None, typer.Option(help="TVM_NUM_THREADS for measurement")] = None,
    strategy: Annotated[str, typer.Option(help="evolutionary or random")] = "evolutionary",
    seed: int = 0,
    config_out: Annotated[Path | None, typer.Option(help="Best config JSON path")] = None,
) -> None:
    """Tune a workload: build and measure candidates, print progress and the best config."""
    import math
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from autosched.hardware import detect_hardware
    from autosched.tune.database import JSONDatabase
    from autosched.tune.tune import tune as run_tune

    if strategy not in ("evolutionary", "random"):
        console.print(f"[red]error:[/red] unknown strategy {strategy!r}")
        raise typer.Exit(2)
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    wl = load_workload_file(workload)
    records = records or workload.with_suffix(".records.jsonl")
    if not resume and records.exists():
        records.unlink()
    hw = detect_hardware(num_cores=threads) if threads else detect_hardware()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[gflops]:.1f} GFLOP/s  errors {task.fields[errors]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(wl.name, total=trials, gflops=0.0, errors=0)

        def on_batch(p) -> None:
            bar.update(
                task, completed=p.trials_done, gflops=p.best_gflops, errors=sum(p.errors.values())
            )

        result = run_tune(
            wl,
            trials,
            hw=hw,
            strategy=strategy,  # type: ignore[arg-type]
            database=JSONDatabase(records),
            seed=seed,
            on_batch=on_batch,
        )
    statuses: dict[str, int] = {}
    for r in result.history:
        statuses[str(r.result.status)] = statuses.get(str(r.result.status), 0) + 1
    console.print(
        f"{len(result.history)} trials measured now, {result.resumed_trials} from records; "
        f"statuses {statuses}"
    )
    if result.best_config is None or not math.isfinite(result.best_latency):
        console.print("[red]no verified config[/red]")
        raise typer.Exit(1)
    from autosched.analysis import flops

    gflops = flops(wl.prim_func) / result.best_latency / 1e9
    console.print(f"best: {result.best_latency * 1e3:.4f} ms ({gflops:.1f} GFLOP/s), verified")
    out = config_out or workload.with_suffix(".best.json")
    out.write_text(
        json.dumps(
            {
                "workload_key": result.workload_key,
                "target": result.target,
                "latency": result.best_latency,
                "config": result.best_config.to_json(),
            },
            indent=1,
        )
    )
    console.print(f"best config written to {out}", style="green")
