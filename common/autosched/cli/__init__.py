"""The ``autosched`` command line: the app, its global options, and where its commands come from.

- ``library.py``: commands that run the library here (``zoo``, ``export``, ``analyze``,
  ``schedule``, ``tune``);
- ``client_commands.py``: commands that talk to the service's API (``submit``, ``jobs``,
  ``watch``, ``fetch``, ``workers``, ``token``);
- the processes' own commands (``api``, ``scheduler``, ``up``, ``down``, ``db``, ``worker``)
  come through the ``autosched.commands`` entry points, below.

``output.py`` holds the consoles and value formatting, ``workload.py`` the WORKLOAD argument.
The console script is ``autosched.cli:app``; ``python -m autosched.cli`` runs it too.
"""

from __future__ import annotations

from typing import Annotated

import typer

from autosched.cli import client_commands, library
from autosched.cli.client_commands import ApiOptions

__all__ = ["COMMANDS_ENTRY_POINTS", "app", "main"]

app = typer.Typer(help="Auto-scheduling for TVM compute declarations.", no_args_is_help=True)


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


library.register(app)
client_commands.register(app)

#: Entry points (pyproject.toml) that add the processes' commands: ``api``, ``scheduler``,
#: ``up``, ``down`` and ``db`` (``services.cli``) and ``worker`` (``workers.cli``). The
#: library names none of those packages; an installed distribution declares them.
COMMANDS_ENTRY_POINTS = "autosched.commands"


def _register_server_commands() -> None:
    from importlib.metadata import entry_points

    for entry_point in sorted(entry_points(group=COMMANDS_ENTRY_POINTS), key=lambda e: e.name):
        entry_point.load()(app)


_register_server_commands()
