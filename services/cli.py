"""The service's commands of ``autosched``: ``api``, ``scheduler``, ``up``, ``down``, ``db``.

``up`` runs everything on this machine (embedded default); ``api`` and ``scheduler`` run one
process each, as docker-compose and Kubernetes do (``worker`` is the workers' own command,
``workers/cli.py``). The library's CLI (``autosched.cli``) finds ``register`` through the
``autosched.commands`` entry points (pyproject.toml), so it never imports this package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
db_app = typer.Typer(help="The service database.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the service's commands to the ``autosched`` app (an entry point)."""
    app.command()(api)
    app.command()(scheduler)
    app.command()(up)
    app.command()(down)
    app.add_typer(db_app, name="db")


def api() -> None:
    """Run the REST API (uvicorn) on AUTOSCHED_API_HOST:AUTOSCHED_API_PORT."""
    from services.api.app import serve

    serve()


def scheduler() -> None:
    """Run the job scheduler: search loops of all jobs, dispatch to device queues."""
    from services.scheduler.main import run_scheduler

    run_scheduler()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to head, under a lock: concurrent runs wait for each other, and
    the later ones find it at head. Services check the schema on start."""
    from autosched.db.migrate import EXIT_SCHEMA, upgrade_database
    from autosched.errors import SchemaError
    from autosched.settings import get_settings

    url = get_settings().resolved_database_url
    try:
        changed = upgrade_database(url)
    except SchemaError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_SCHEMA) from None
    console.print(f"database {'migrated to' if changed else 'already at'} head: {_redact(url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _pid_file() -> Path:
    from autosched.settings import get_settings

    return get_settings().data_dir / "up.pid"


def up(
    device_key: Annotated[
        list[str] | None,
        typer.Option(help="One local worker per key (default: one, keyed by this CPU)"),
    ] = None,
    gpu: Annotated[
        list[str] | None,
        typer.Option(help="Also a GPU worker for this CUDA device (cuda:0); repeat per card"),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return")
    ] = False,
) -> None:
    """Run the whole service here: API, scheduler and a local CPU worker (and GPU workers).

    With no DATABASE_URL/REDIS_URL it needs no servers (SQLite + an SQLite broker under
    AUTOSCHED_DATA_DIR, default .autosched/); with both set it uses PostgreSQL and Redis.
    """
    from autosched.service.embedded import TOKEN_FILE, EmbeddedService
    from autosched.settings import get_settings

    settings = get_settings()
    if detach:
        _up_detached(device_key or [], gpu or [])
        return
    service = EmbeddedService(
        settings,
        list(device_key) if device_key else [None],
        worker_args=[["--device", device] for device in gpu or []],
    )
    stop = False

    def _stop(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        with console.status("starting API, scheduler and worker ..."):
            url = service.start()
    except RuntimeError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    where = "embedded (SQLite)" if settings.embedded else _redact(settings.resolved_database_url)
    console.print(f"autosched is up at [bold]{url}[/bold] ({where})")
    console.print(f"API docs {url}/docs · token in {settings.data_dir / TOKEN_FILE}")
    console.print(f"logs in {settings.data_dir / 'logs'} · Ctrl-C stops")
    try:
        while not stop:
            time.sleep(1.0)
            service.supervise_once()
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping ...")
        service.stop()


def _up_detached(device_keys: list[str], gpus: list[str]) -> None:
    """Start ``up`` as a background session; wait until it is ready (or failed)."""
    import httpx

    from autosched.settings import get_settings

    settings = get_settings()
    url = f"http://{settings.api_host}:{settings.api_port}"
    try:
        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            console.print(f"autosched is already up at [bold]{url}[/bold]")
            return
    except httpx.HTTPError:
        pass  # nothing there yet: start it
    pid_file = _pid_file()
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "autosched.cli", "up"]
    for key in device_keys:
        argv += ["--device-key", key]
    for device in gpus:
        argv += ["--gpu", device]
    log = (settings.data_dir / "up.log").open("ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
    )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            console.print(f"[red]error:[/red] autosched up exited; see {settings.data_dir}/up.log")
            raise typer.Exit(1)
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 and _log_says_up(
                settings.data_dir / "up.log"
            ):
                console.print(f"autosched is up at [bold]{url}[/bold] (pid {proc.pid})")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    console.print(f"[red]error:[/red] not ready after 180 s; see {settings.data_dir}/up.log")
    raise typer.Exit(1)


def _log_says_up(log: Path) -> bool:
    return "autosched is up" in log.read_text(errors="replace")


def down() -> None:
    """Stop a service started with ``autosched up --detach``."""
    pid_file = _pid_file()
    if not pid_file.exists():
        console.print("nothing to stop (no up.pid)")
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        console.print(f"process {pid} was already gone")
    else:
        for _ in range(60):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        console.print(f"stopped autosched (pid {pid})")
    pid_file.unlink(missing_ok=True)
