"""Logging of the service's processes: one line per record on stderr, plain or JSON.

``configure_logging(settings, component)`` is what the API (``serve``), the scheduler
(``run_scheduler``) and the worker (``run_worker``) call first. Lines are human-readable by
default and JSON objects (python-json-logger) when ``settings.log_json``
(``AUTOSCHED_LOG_JSON=1``), the form log collectors index.

Every line carries ``component`` (api, scheduler, worker) and, while set, ``job_id`` and
``trial_ids`` from context variables: ``log_context(job_id=..., trial_ids=...)`` sets them
for the code it wraps (the job runner around one job's thread, the worker around a measure
batch), and a ``logging.Filter`` on the handler copies them onto each record. Values given
with ``extra={"job_id": ...}`` win over the context's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from autosched.settings import Settings, get_settings

PLAIN_FORMAT = (
    "%(asctime)s %(levelname)s %(component)s %(name)s [%(threadName)s]%(context)s %(message)s"
)
JSON_FIELDS = "%(levelname)s %(name)s %(threadName)s %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger", "threadName": "thread"}
# Never copied into a JSON line: ``context`` is the plain format's rendering of the fields
# that are, ``color_message`` uvicorn's ANSI-coloured copy of the message.
JSON_SKIPPED = ("context", "color_message")
QUIET_LOGGERS = {"alembic": logging.WARNING}  # one INFO line per migration step otherwise

_job_id: ContextVar[int | None] = ContextVar("autosched_job_id", default=None)
_trial_ids: ContextVar[tuple[int, ...] | None] = ContextVar("autosched_trial_ids", default=None)


@contextmanager
def log_context(
    *, job_id: int | None = None, trial_ids: Iterable[int] | None = None
) -> Iterator[None]:
    """Tag every line logged inside with ``job_id`` and/or ``trial_ids`` (None: leave the
    enclosing value). Context variables: per thread, and per task under asyncio."""
    tokens: list[tuple[ContextVar[Any], Token[Any]]] = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(int(job_id))))
    if trial_ids is not None:
        tokens.append((_trial_ids, _trial_ids.set(tuple(int(t) for t in trial_ids))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_context() -> dict[str, Any]:
    """The fields ``log_context`` set here: ``job_id`` and ``trial_ids`` when set."""
    out: dict[str, Any] = {}
    if (job_id := _job_id.get()) is not None:
        out["job_id"] = job_id
    if (trial_ids := _trial_ids.get()) is not None:
        out["trial_ids"] = list(trial_ids)
    return out


class ContextFilter(logging.Filter):
    """Adds ``component`` and the context's ``job_id``/``trial_ids`` to each record (never
    dropping one), and ``context``, their rendering for the plain format."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        for name, value in current_context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        parts = []
        if (job_id := getattr(record, "job_id", None)) is not None:
            parts.append(f"job={job_id}")
        if trial_ids := getattr(record, "trial_ids", None):
            parts.append(f"trials={','.join(map(str, trial_ids))}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


def make_formatter(settings: Settings) -> logging.Formatter:
    if settings.log_json:
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields=JSON_RENAMES,
            reserved_attrs=[*RESERVED_ATTRS, *JSON_SKIPPED],
            timestamp="time",
        )
    return logging.Formatter(PLAIN_FORMAT)


def make_handler(
    settings: Settings, component: str, stream: IO[str] | None = None
) -> logging.Handler:
    """The handler ``configure_logging`` installs (tests attach one to a stream of theirs)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(settings))
    handler.addFilter(ContextFilter(component))
    handler._autosched = True  # type: ignore[attr-defined]  # marks ours: see configure_logging
    return handler


def configure_logging(
    settings: Settings | None = None,
    component: str = "autosched",
    level: str | int | None = None,
) -> logging.Handler | None:
    """Log to stderr in ``settings``' format, tagged with ``component``; idempotent.

    A second call re-formats the handler it installed (``level`` None keeps the level set
    before, INFO the first time). A program that set logging up itself (the root logger
    already has handlers that are not ours: an embedding application, pytest) is left
    alone and None is returned.
    """
    settings = settings or get_settings()
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_autosched", False)]
    if ours:
        handler = ours[0]
        handler.setFormatter(make_formatter(settings))
        for old in [f for f in handler.filters if isinstance(f, ContextFilter)]:
            handler.removeFilter(old)
        handler.addFilter(ContextFilter(component))
    elif root.handlers:
        return None
    else:
        handler = make_handler(settings, component)
        root.addHandler(handler)
        level = level if level is not None else logging.INFO
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    return handler
