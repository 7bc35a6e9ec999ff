"""The client commands: ``submit``, ``jobs``, ``watch``, ``fetch``, ``workers``, ``token``.

They talk to the service's REST API through ``autosched.client.Client``, built in one place
(``make_client``, which the package re-exports as ``autosched.cli.make_client`` so that tests
can replace it), and turn an API failure into one red line and exit status 1.
``token create --direct`` is the exception: an operator on the server writes the token
straight into the service database (e.g. the first admin token).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from rich.markup import escape
from rich.table import Table

from autosched.cli.output import console, err_console, fmt_age, fmt_ms, fmt_num, fmt_state
from autosched.cli.workload import WorkloadPath, load_workload_file
from autosched.errors import AutoschedError
from autosched.schemas import JobDetail, Scope, Strategy

if TYPE_CHECKING:
    from autosched.client import Client


def register(app: typer.Typer) -> None:
    """Add the client commands (and the ``token`` group) to the ``autosched`` app."""
    app.command()(submit)
    app.command()(jobs)
    app.command()(watch)
    app.command()(fetch)
    app.command()(workers)
    app.add_typer(token_app, name="token")


@dataclass(frozen=True)
class ApiOptions:
    """The app's global ``--url`` and ``--token`` (the context object of every command)."""

    url: str | None = None
    token: str | None = None


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
                state=fmt_state(detail.state),
                gflops=fmt_num(detail.best_gflops),
                errors=sum(detail.errors.values()),
            )

        detail = client.wait_for_job(job_id, on_update=update)
    _summary(detail)
    return detail


def _summary(job: JobDetail) -> None:
    """A finished job: one line of totals, its error if any, and a table of its workloads."""
    errors = ", ".join(f"{k} {v}" for k, v in job.errors.items() if v) or "none"
    console.print(
        f"job {job.id} {fmt_state(job.state)}: {job.trials_done}/{job.trials_total} trials, "
        f"best {fmt_num(job.best_gflops)} GFLOP/s, "
        f"speedup over static {fmt_num(job.speedup_over_static, '.2f')}x, "
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
            fmt_ms(w.best_latency),
            fmt_num(w.best_gflops),
            fmt_ms(w.static_latency),
            fmt_num(w.speedup_over_static, ".2f"),
        )
    console.print(table)


def _end_of_watch(detail: JobDetail) -> None:
    if detail.state != "succeeded":
        raise typer.Exit(1)


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
    wl = load_workload_file(workload)
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
            fmt_state(job.state),
            escape(shown),
            job.device_key,
            f"{job.trials_done}/{job.trials_total}",
            fmt_num(job.best_gflops),
            fmt_num(job.speedup_over_static, ".2f"),
            fmt_age(job.created_at),
        )
    console.print(table)


def watch(ctx: typer.Context, job: Annotated[int, typer.Argument(help="Job id")]) -> None:
    """Follow a job with a progress bar until it ends; exit 1 unless it succeeded."""
    with _api_errors(), _client(ctx) as client:
        try:
            detail = _watch(client, job)
        except KeyboardInterrupt:
            console.print(f"stopped watching; job {job} goes on")
            raise typer.Exit(130) from None
    _end_of_watch(detail)


def fetch(
    ctx: typer.Context,
    workload: WorkloadPath,
    target: Annotated[str | None, typer.Option(help="Target key (default: the server's)")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Apply, build and export the library here")
    ] = None,
) -> None:
    """Fetch a workload's best schedule (tuned, else static) and print it or build it."""
    from autosched.fetched_schedule import export_schedule
    from autosched.trace_format import format_trace

    wl = load_workload_file(workload)
    with _api_errors(), _client(ctx) as client:
        view = client.lookup_schedule(wl, target)
    source = "[green]tuned[/green]" if view.source == "tuned" else "[yellow]static[/yellow]"
    console.print(f"workload {escape(wl.name)}  key {view.workload_key}  target {view.target_key}")
    measured = f"{fmt_ms(view.latency)} ({fmt_num(view.gflops)} GFLOP/s)" if view.latency else "-"
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
            export_schedule(wl, view, out)
        gpu = view.hardware.get("gpu")
        built_for = gpu.get("arch") if isinstance(gpu, dict) else view.hardware.get("mcpu")
        console.print(f"built for {built_for}, written to {out}", style="green")


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
            f"{fmt_age(w.last_heartbeat)} ago",
        )
    console.print(table)


token_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)
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
