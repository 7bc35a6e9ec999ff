"""The WORKLOAD argument: a compute declaration in the wire format, loaded or a clear error.

Both the library commands (``analyze``, ``schedule``, ``tune``) and the client commands
(``submit``, ``fetch``) take one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autosched.cli.output import console
from autosched.errors import AutoschedError

WorkloadPath = Annotated[Path, typer.Argument(help="A compute declaration in the wire format")]


def load_workload_file(path: Path):
    """The workload in ``path``; a bad or unreadable file prints one red line and exits 2."""
    from autosched.wire import load_workload

    try:
        return load_workload(path)
    except (AutoschedError, OSError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
