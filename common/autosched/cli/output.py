"""How the ``autosched`` commands print: the consoles and the formatting of values in tables.

Shared by the library commands (``library.py``) and the client commands
(``client_commands.py``); nothing here reads input or talks to the API.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from rich.console import Console

from autosched.vocabulary import JobState

# Wide enough for the analysis table when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def fmt_num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4f} ms"


def fmt_age(when: datetime | None) -> str:
    if when is None:
        return "-"
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    secs = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "yellow",
    JobState.RUNNING: "cyan",
}


def fmt_state(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state
