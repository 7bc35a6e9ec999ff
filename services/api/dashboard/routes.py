"""The dashboard's HTML pages, rendered on the server with Jinja2.

Each page's changing parts are regions (``data-live="..."``) that ``?partial=1`` renders
alone. The page script polls the page's JSON API route every ~1.5 s and, when the answer
changed, fetches the partial and swaps the regions in (and redraws the job's curve from the
JSON): one renderer, no page reload, nothing fetched from outside the server.

Reads follow the API's rules: with anonymous reads allowed (or auth off) the pages render
their data; otherwise a page loads as an empty shell and its script fetches the partial with
the token the user saved (sent as ``Authorization: Bearer``), and a partial requested without
one is a 401.
"""

from __future__ import annotations

import hashlib
import shlex
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from autosched import vocabulary
from autosched.errors import AuthenticationError, NotFoundError
from autosched.service import dashboard, farm, jobs
from autosched.vocabulary import JobState, WorkerState
from services.api.deps import BearerDep, SessionDep, StateDep, redact_for, require_read
from services.api.params import RowIdPath

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
STATIC_PREFIX = "/static"

JOBS_SHOWN = 100  # the jobs page lists the newest ones
TRIALS_SHOWN = 300  # the job page's table shows the newest ones (all: the JSON route)
POLL_MS = 1500

# Failed trials by kind: label, colour and Chart.js marker (the chart and the tables agree).
FAILURES: dict[str, dict[str, str]] = {
    "build_error": {"label": "build error", "color": "#d63b3b", "marker": "crossRot"},
    "build_timeout": {"label": "build timeout", "color": "#e8871e", "marker": "triangle"},
    "run_error": {"label": "run error", "color": "#8e44ad", "marker": "rect"},
    "run_timeout": {"label": "run timeout", "color": "#a0522d", "marker": "rectRot"},
    "wrong_answer": {"label": "wrong answer", "color": "#c2185b", "marker": "star"},
}
OTHER_FAILURE = {"label": "failed", "color": "#6b7280", "marker": "cross"}


def _asset_version() -> str:
    """Changes when any of our own static files does (cache-busting ``?v=``)."""
    digest = hashlib.sha1()
    for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _speedup(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _first_line(text: str | None, width: int = 120) -> str:
    if not text:
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines and lines[0].startswith("Traceback") else (lines or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _time(value: datetime | None) -> Markup:
    """A timestamp the page script shows as an age ("3 min ago"), the UTC time as its title."""
    if value is None:
        return Markup("–")
    iso = value.isoformat()
    text = value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup(f'<time datetime="{escape(iso)}" data-rel>{escape(text)}</time>')


def _size(nbytes: int | float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:g} {unit}"
    return f"{nbytes:g} B"


def _short(key: str, length: int = 12) -> str:
    return key if len(key) <= length else key[:length] + "…"


def _progress(done: int, total: int) -> float:
    return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * done / total))


def _failure(status: str | None) -> dict[str, str]:
    return FAILURES.get(status or "", OTHER_FAILURE)


def _context(request: Request) -> dict[str, Any]:
    root = request.scope.get("root_path", "").rstrip("/")
    return {"root": root, "static": lambda path: f"{root}{STATIC_PREFIX}/{path}?v={VERSION}"}


VERSION = _asset_version()
#: The states the pages and their scripts know, from the one vocabulary (base.html embeds it
#: as JSON data for the scripts).
VOCABULARY = vocabulary.as_json()
templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[_context])
templates.env.filters.update(
    ms=_ms,
    num=_num,
    speedup=_speedup,
    pct=_pct,
    first_line=_first_line,
    short=_short,
    size=_size,
    shq=shlex.quote,
)
templates.env.globals.update(
    time=_time,
    progress=_progress,
    failure=_failure,
    FAILURES=FAILURES,
    OTHER_FAILURE=OTHER_FAILURE,
    VOCABULARY=VOCABULARY,
    TERMINAL=VOCABULARY["terminal_job_states"],
    JOB_STATES=VOCABULARY["job_states"],
    JobState=JobState,
    WorkerState=WorkerState,
    POLL_MS=POLL_MS,
)

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Access:
    """What a page request may see: data at all (``allowed``), and whether in the anonymous,
    redacted form (worker pseudonyms, no host names or error texts) as the JSON API gives it."""

    allowed: bool
    redact: bool


def page_access(state: StateDep, credentials: BearerDep) -> Access:
    """Not allowed only for a request with no token where anonymous reads are off (the page
    then renders as a shell). A bad token is a 401/403."""
    try:
        reader = require_read(state, credentials)
    except AuthenticationError:
        if credentials is not None:
            raise
        return Access(allowed=False, redact=True)
    return Access(allowed=True, redact=redact_for(reader))


PageAccess = Annotated[Access, Depends(page_access)]
Partial = Annotated[bool, Query(description="render only the live regions")]


def _render(
    request: Request,
    page: str,
    context: dict[str, Any],
    *,
    allowed: bool,
    partial: bool,
    status_code: int = 200,
) -> HTMLResponse:
    if partial and not allowed:
        raise AuthenticationError("a bearer token is required to read (anonymous reads are off)")
    name = f"{page}_partial.html" if partial else f"{page}.html"
    return templates.TemplateResponse(
        request,
        name,
        {"page": page, "allowed": allowed, **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/", response_class=HTMLResponse, name="jobs_page")
def jobs_page(
    request: Request,
    session: SessionDep,
    access: PageAccess,
    state: JobState | None = None,
    partial: Partial = False,
) -> HTMLResponse:
    context: dict[str, Any] = {"state": state.value if state else None, "jobs": [], "counts": {}}
    if access.allowed:
        context["jobs"] = jobs.list_jobs(
            session, state=state, limit=JOBS_SHOWN, redact=access.redact
        )
        context["counts"] = dashboard.job_state_counts(session)
    return _render(request, "jobs", context, allowed=access.allowed, partial=partial)


@router.get("/jobs/{job_id}", response_class=HTMLResponse, name="job_page")
def job_page(
    request: Request,
    job_id: RowIdPath,
    session: SessionDep,
    access: PageAccess,
    partial: Partial = False,
) -> HTMLResponse:
    context: dict[str, Any] = {"job_id": job_id, "job": None}
    redact = access.redact
    if access.allowed:
        try:
            job = jobs.get_job(session, job_id, redact=redact)
        except NotFoundError as err:
            if partial:
                raise
            return _render(
                request, "error", {"message": str(err)}, allowed=True, partial=False,
                status_code=404,
            )  # fmt: skip
        context.update(
            job=job,
            workloads=dashboard.job_workloads(session, job_id, redact=redact),
            trials=dashboard.job_trials(session, job_id, limit=TRIALS_SHOWN, redact=redact),
            multi=len(job.workloads) > 1,
            names={w.workload_key: w.name for w in job.workloads},
        )
    return _render(request, "job", context, allowed=access.allowed, partial=partial)


@router.get("/farm", response_class=HTMLResponse, name="farm_page")
def farm_page(
    request: Request, session: SessionDep, state: StateDep, access: PageAccess,
    partial: Partial = False,
) -> HTMLResponse:  # fmt: skip
    devices: dict[str, list[dashboard.FarmWorkerView]] = defaultdict(list)
    if access.allowed:
        # As GET /v1/workers does: a silent worker is never shown online.
        farm.reap_silent_workers(
            session, state.settings.heartbeat_timeout_s, state.settings.max_trial_attempts
        )
        for worker in dashboard.farm_workers(session, redact=access.redact):
            devices[worker.device_key].append(worker)
    context = {"devices": dict(sorted(devices.items())), "window_s": dashboard.THROUGHPUT_WINDOW_S}
    return _render(request, "farm", context, allowed=access.allowed, partial=partial)


@router.get("/schedules", response_class=HTMLResponse, name="schedules_page")
def schedules_page(
    request: Request, session: SessionDep, state: StateDep, access: PageAccess,
    partial: Partial = False,
) -> HTMLResponse:  # fmt: skip
    settings = state.settings
    groups: dict[str, list[dashboard.BestScheduleDetail]] = {}
    allowed = access.allowed
    for schedule in (
        dashboard.best_schedule_details(session, redact=access.redact) if allowed else []
    ):
        groups.setdefault(schedule.workload_key, []).append(schedule)  # by name, then key
    context = {
        "groups": groups,
        "base_url": str(request.base_url).rstrip("/"),
        # The curl line carries the token header only where reads need one.
        "reads_need_token": settings.auth_required and not settings.anonymous_reads,
    }
    return _render(request, "schedules", context, allowed=access.allowed, partial=partial)
