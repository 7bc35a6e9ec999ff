"""The workers' command of the ``autosched`` CLI: ``autosched worker --device-key KEY``.

The library's CLI (``autosched.cli``) finds ``register`` through the ``autosched.commands``
entry points (pyproject.toml), so it never imports this package.
"""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``autosched`` app (an entry point)."""
    app.command()(worker)


def worker(
    device_key: Annotated[
        str | None,
        typer.Option(help="Queue to consume (default: derived from this machine's CPU)"),
    ] = None,
) -> None:
    """Run a Celery worker for one device: register, heartbeat, build and measure trials."""
    from workers.main import run_worker

    run_worker(device_key)
