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
        typer.Option(help="Queue to consume (default: derived from the device's hardware)"),
    ] = None,
    device: Annotated[
        str, typer.Option(help="What this worker measures on: cpu, or cuda:<index> (one per GPU)")
    ] = "cpu",
    gpu_tag: Annotated[
        str | None,
        typer.Option(help="Describe the GPU by a TVM target tag (nvidia/nvidia-h100)"),
    ] = None,
    replay: Annotated[
        str | None,
        typer.Option(help="Answer runs from recorded measurements (a device this host lacks)"),
    ] = None,
) -> None:
    """Run a Celery worker for one device: register, heartbeat, build and measure trials."""
    from workers.main import run_worker

    raise typer.Exit(run_worker(device_key, device=device, gpu_tag=gpu_tag, replay=replay))
