"""The ``autosched`` command line: inspect, analyze and statically schedule workloads."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autosched.errors import AutoschedError
from autosched.schemas import JobDetail, JobView, Scope, Strategy

if TYPE_CHECKING:
    from autosched.client import Client

app = typer.Typer(help="Auto-scheduling for TVM compute declarations.", no_args_is_help=True)
# Wide enough for the analysis table when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
WorkloadPath = Annotated[Path, typer.Argument(help="A compute declaration in the wire format")]


def _load(path: Path):
    from autosched.wire import load_workload

    try:
        return load_workload(path)
    except (AutoschedError, OSError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err


@app.command()
def zoo() -> None:
    """List the example kernels."""
    from autosched import zoo as kernels

    table = Table("name", "family", "description")
    for name in kernels.names():
        entry = kernels.get(name)
        table.add_row(name, entry.family, entry.description)
    console.print(table)


@app.command()
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


@app.command()
def analyze(workload: WorkloadPath) -> None:
    """Print every stage's iteration kinds, meta-template (and why), producers, consumers."""
    from autosched.analysis import analyze as analyze_func

    wl = _load(workload)
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


@app.command()
def schedule(
    workload: WorkloadPath,
    static: Annotated[bool, typer.Option("--static", help="Fill knobs from hardware only")] = True,
    config_out: Annotated[
        Path | None, typer.Option("--config-out", help="Config JSON path (default: beside input)")
    ] = None,
    trace_out: Annotated[Path | None, typer.Option(help="Also write the TVM trace JSON")] = None,
) -> None:
    """Schedule a workload statically: print the scheduled TIR and write the config."""
    from autosched.analysis import analyze as analyze_func
    from autosched.hardware import detect_hardware
    from autosched.schedule import apply_config, build_template, static_config, trace_json

    if not static:
        console.print("[red]error:[/red] only --static scheduling exists so far (tuning: later)")
        raise typer.Exit(2)
    wl = _load(workload)
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


@app.command()
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
    wl = _load(workload)
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


# Service commands: talk to the API through autosched.client (one factory, so tests can mock).


@dataclass(frozen=True)
class ApiOptions:
    url: str | None = None
    token: str | None = None


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="AUTOSCHED_API_URL", help="API base URL", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="AUTOSCHED_API_TOKEN", help="Bearer token", show_default=False
        ),
    ] = None,
) -> None:
    """Auto-scheduling for TVM compute declarations."""
    ctx.obj = ApiOptions(url, token)


def make_client(url: str | None = None, token: str | None = None) -> Client:
    """The one place the CLI builds a client; unset options fall back to settings."""
    from autosched.client import Client

    return Client(url, token)


def _client(ctx: typer.Context) -> Client:
    opts = ctx.find_object(ApiOptions) or ApiOptions()
    return make_client(opts.url, opts.token)


@contextmanager
def _api_errors() -> Iterator[None]:
    """Print a failure as one red line and exit 1: the server's message needs no traceback."""
    from pydantic import ValidationError

    try:
        yield
    except (AutoschedError, TimeoutError, OSError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from err
    except ValidationError as err:
        console.print(f"[red]error:[/red] unexpected answer from the API: {escape(str(err))}")
        raise typer.Exit(1) from err


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4f} ms"


def _age(when: datetime | None) -> str:
    if when is None:
        return "-"
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    secs = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _speedup(job: JobView) -> float | None:
    """All workloads' static latency over their tuned one (None until each has both)."""
    pairs = [(w.static_latency, w.best_latency) for w in job.workloads]
    if not pairs or any(s is None or b is None or b <= 0 for s, b in pairs):
        return None
    return sum(s for s, _ in pairs) / sum(b for _, b in pairs)  # type: ignore[misc]


_STATE_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


def _state(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _watch(client: Client, job_id: int) -> JobDetail:
    """Follow a job with a progress bar until it ends, then print its summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn(f"job {job_id} " + "{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[gflops]} GFLOP/s  errors {task.fields[errors]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=None, state="...", gflops="-", errors=0)

        def update(detail: JobDetail) -> None:
            bar.update(
                task,
                total=detail.trials_total,
                completed=detail.trials_done,
                state=_state(detail.state),
                gflops=_num(detail.best_gflops),
                errors=sum(detail.errors.values()),
            )

        detail = client.wait_for_job(job_id, on_update=update)
    _summary(detail)
    return detail


def _summary(job: JobDetail) -> None:
    errors = ", ".join(f"{k} {v}" for k, v in job.errors.items() if v) or "none"
    console.print(
        f"job {job.id} {_state(job.state)}: {job.trials_done}/{job.trials_total} trials, "
        f"best {_num(job.best_gflops)} GFLOP/s, speedup over static {_num(_speedup(job), '.2f')}x, "
        f"errors {errors}"
    )
    if job.error:
        console.print(f"[red]{escape(job.error)}[/red]")
    table = Table("workload", "key", "trials", "best", "GFLOP/s", "static", "speedup")
    for w in job.workloads:
        table.add_row(
            w.name,
            w.workload_key[:12],
            str(w.trials_done),
            _ms(w.best_latency),
            _num(w.best_gflops),
            _ms(w.static_latency),
            _num(w.speedup_over_static, ".2f"),
        )
    console.print(table)


def _end_of_watch(detail: JobDetail) -> None:
    if detail.state != "succeeded":
        raise typer.Exit(1)


@app.command()
def submit(
    ctx: typer.Context,
    workload: WorkloadPath,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials per workload")] = 64,
    device_key: Annotated[str | None, typer.Option(help="Queue of the workers to use")] = None,
    target: Annotated[
        str | None, typer.Option(help="A target key (default: this machine's)")
    ] = None,
    strategy: Annotated[Strategy, typer.Option(help="Search strategy")] = "evolutionary",
    priority: Annotated[int, typer.Option(min=-100, max=100)] = 0,
    seed: int = 0,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends")] = False,
) -> None:
    """Queue a tuning job on the service and print its id."""
    if device_key and target:
        console.print("[red]error:[/red] give --device-key or --target, not both")
        raise typer.Exit(2)
    wl = _load(workload)
    if not device_key and not target:
        from autosched.hardware import detect_hardware

        target = detect_hardware().target_key
    with _api_errors(), _client(ctx) as client:
        job = client.submit_job(
            [wl],
            device_key=device_key,
            target=target,
            trials=trials,
            strategy=strategy,
            priority=priority,
            seed=seed,
        )
        typer.echo(job.id)
        if watch:
            _end_of_watch(_watch(client, job.id))


@app.command()
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
) -> None:
    """List tuning jobs."""
    with _api_errors(), _client(ctx) as client:
        listed = client.jobs(state)
    table = Table(
        "id", "state", "workloads", "device", "trials", "best GFLOP/s", "vs static", "age"
    )
    for job in listed:
        names = [w.name for w in job.workloads]
        shown = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
        table.add_row(
            str(job.id),
            _state(job.state),
            escape(shown),
            job.device_key,
            f"{job.trials_done}/{job.trials_total}",
            _num(job.best_gflops),
            _num(_speedup(job), ".2f"),
            _age(job.created_at),
        )
    console.print(table)


@app.command()
def watch(ctx: typer.Context, job: Annotated[int, typer.Argument(help="Job id")]) -> None:
    """Follow a job with a progress bar until it ends; exit 1 unless it succeeded."""
    with _api_errors(), _client(ctx) as client:
        try:
            detail = _watch(client, job)
        except KeyboardInterrupt:
            console.print(f"stopped watching; job {job} goes on")
            raise typer.Exit(130) from None
    _end_of_watch(detail)


@app.command()
def fetch(
    ctx: typer.Context,
    workload: WorkloadPath,
    target: Annotated[str | None, typer.Option(help="Target key (default: the server's)")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Apply, build and export the library here")
    ] = None,
) -> None:
    """Fetch a workload's best schedule (tuned, else static) and print it or build it."""
    from autosched.client import build_schedule
    from autosched.trace_format import format_trace

    wl = _load(workload)
    with _api_errors(), _client(ctx) as client:
        view = client.lookup_schedule(wl, target)
    source = "[green]tuned[/green]" if view.source == "tuned" else "[yellow]static[/yellow]"
    console.print(f"workload {escape(wl.name)}  key {view.workload_key}  target {view.target_key}")
    measured = f"{_ms(view.latency)} ({_num(view.gflops)} GFLOP/s)" if view.latency else "-"
    console.print(f"source {source}  latency {measured}  device {view.device_key or '-'}")
    console.print("[bold]config[/bold]")
    stages = view.config.get("stages")
    if isinstance(stages, dict):
        for stage, knobs in stages.items():
            values = ", ".join(f"{k}={v}" for k, v in knobs.items())
            console.print(f"  {stage}: {values}", markup=False, highlight=False)
    else:
        console.print_json(data=view.config)
    console.print("[bold]trace[/bold]")
    for line in format_trace(view.trace):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        with _api_errors():
            build_schedule(wl, view).export_library(str(out))
        console.print(f"built for {view.hardware.get('mcpu')}, written to {out}", style="green")


@app.command()
def workers(ctx: typer.Context) -> None:
    """List the registered workers of the device farm."""
    with _api_errors(), _client(ctx) as client:
        listed = client.workers()
    table = Table("id", "device", "target", "state", "host", "queue", "trials", "errors", "seen")
    for w in listed:
        state = "[green]online[/green]" if w.state == "online" else f"[red]{w.state}[/red]"
        table.add_row(
            w.id,
            w.device_key,
            w.target_key,
            state,
            w.hostname or "–",  # hidden from anonymous readers
            str(w.queue_depth),
            str(w.trials_done),
            str(w.errors),
            f"{_age(w.last_heartbeat)} ago",
        )
    console.print(table)


token_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)
app.add_typer(token_app, name="token")
ScopeChoice = StrEnum("ScopeChoice", {s: s for s in get_args(Scope)})  # type: ignore[misc]


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str,
    scope: Annotated[list[ScopeChoice], typer.Option("--scope", help="Repeat for several")],
    device_key: Annotated[
        list[str] | None,
        typer.Option(
            "--device-key",
            help="A device key a worker token may register workers for (repeat for several; "
            "a worker token without one registers nothing)",
        ),
    ] = None,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Write to the service database directly (an operator on the server, e.g. "
            "for the first admin token); otherwise through the API with an admin token",
        ),
    ] = False,
) -> None:
    """Create a token and print it, the only time (only its hash is stored)."""
    scopes = [s.value for s in scope]
    keys = list(device_key or [])
    if direct:
        from pydantic import ValidationError

        from autosched.db import session_factory, session_scope, upgrade_database
        from autosched.schemas import TokenCreate
        from autosched.service.tokens import create_token
        from autosched.settings import get_settings

        url = get_settings().resolved_database_url
        upgrade_database(url)
        try:
            TokenCreate(name=name, scopes=scopes, device_keys=keys)  # the API's own bounds
        except ValidationError as err:
            err_console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from None
        with session_scope(session_factory(url)) as session:
            created = create_token(session, name, scopes, keys)
    else:
        with _api_errors(), _client(ctx) as client:
            if client.token is None:
                err_console.print(
                    "[yellow]no token configured (--token, AUTOSCHED_API_TOKEN)[/yellow]"
                )
            created = client.create_token(name, scopes, keys)
    bound = f" device keys {', '.join(created.device_keys)}" if created.device_keys else ""
    err_console.print(
        f"token {created.id} {created.name!r} scopes {', '.join(created.scopes)}{bound}; "
        "it is shown once: store it now"
    )
    typer.echo(created.token)


#: Entry points (pyproject.toml) that add the processes' commands: ``api``, ``scheduler``,
#: ``up``, ``down`` and ``db`` (``services.cli``) and ``worker`` (``workers.cli``). The
#: library names none of those packages; an installed distribution declares them.
COMMANDS_ENTRY_POINTS = "autosched.commands"


def _register_server_commands() -> None:
    from importlib.metadata import entry_points

    for entry_point in sorted(entry_points(group=COMMANDS_ENTRY_POINTS), key=lambda e: e.name):
        entry_point.load()(app)


_register_server_commands()

if __name__ == "__main__":
    app()
