"""The Python client of the autosched API: typed methods over httpx, retries by tenacity.

Only failures that say nothing about the server's state are retried: connection errors and
502/503/504. Job submission and token creation are not idempotent, so those two are retried
only when the request cannot have reached the server (no connection was made). Importing
this module does not import TVM; using what it fetches is ``fetched_schedule``'s.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
import tenacity
from pydantic import BaseModel, TypeAdapter, ValidationError

from autosched.errors import ApiError, InvalidRequestError
from autosched.schemas import (
    BestSchedule,
    JobCreate,
    JobDetail,
    JobView,
    ScheduleLookup,
    ScheduleView,
    Scope,
    Strategy,
    TokenCreate,
    TokenCreated,
    TrialPage,
    WorkerRegister,
    WorkerView,
    WorkloadView,
)
from autosched.settings import get_settings

# Part of the client's API (``autosched.client.format_trace``); it lives with the library.
from autosched.trace_format import format_trace as format_trace
from autosched.vocabulary import TERMINAL_JOB_STATES

if TYPE_CHECKING:
    from autosched.wire import Workload

log = logging.getLogger(__name__)

# Safe to send again whatever happened to the first attempt (the server may have seen it).
_TRANSIENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)
# Proof that the request never reached the server: no connection was made.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
_RETRY_STATUSES: frozenset[int] = frozenset({502, 503, 504})

T = TypeVar("T")


class Client:
    """One connection pool to the API. Use as a context manager, or call ``close()``.

    ``backoff`` (a tenacity wait) and ``sleep`` are attributes so that tests and impatient
    callers can replace them; the default waits are exponential with full jitter.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = get_settings()
        self.base_url = (base_url or settings.api_url).rstrip("/")
        self.token = token or _configured_token()
        self.retries = retries
        self.backoff: tenacity.wait.wait_base = tenacity.wait_random_exponential(
            multiplier=0.5, max=10.0
        )
        self.sleep: Callable[[float], None] = time.sleep
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Workloads

    def register_workload(self, workload: Workload | dict[str, Any]) -> WorkloadView:
        """Store a compute declaration (idempotent: a known one answers ``created=False``)."""
        return self._call(WorkloadView, "POST", "/v1/workloads", json=_doc(workload))

    def workload(self, key: str) -> WorkloadView:
        return self._call(WorkloadView, "GET", f"/v1/workloads/{_seg(key)}")

    # Jobs

    def submit_job(
        self,
        workloads: Sequence[Workload | dict[str, Any] | str],
        *,
        device_key: str | None = None,
        target: str | None = None,
        trials: int = 64,
        strategy: Strategy = "evolutionary",
        priority: int = 0,
        seed: int = 0,
    ) -> JobView:
        """Queue a tuning job; a ``str`` names a stored workload by key, anything else is sent.

        Not retried once the request may have reached the server: a second POST would queue
        a second job.
        """
        body = _body(
            JobCreate,
            workload_keys=[w for w in workloads if isinstance(w, str)],
            workloads=[_doc(w) for w in workloads if not isinstance(w, str)],
            device_key=device_key,
            target=target,
            trials=trials,
            strategy=strategy,
            priority=priority,
            seed=seed,
        )
        return self._call(JobView, "POST", "/v1/jobs", json=body, retry_on=_NOT_SENT, statuses=())

    def jobs(self, state: str | None = None) -> list[JobView]:
        return self._call(list[JobView], "GET", "/v1/jobs", params={"state": state or None})

    def job(self, job_id: int) -> JobDetail:
        return self._call(JobDetail, "GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: int) -> JobView:
        return self._call(JobView, "POST", f"/v1/jobs/{job_id}/cancel")

    def job_trials(self, job_id: int, limit: int | None = None) -> TrialPage:
        """Numbered as on the job's curve (``limit``: the newest only); errors need a token."""
        return self._call(TrialPage, "GET", f"/v1/jobs/{job_id}/trials", params={"limit": limit})

    def wait_for_job(
        self,
        job_id: int,
        *,
        poll_s: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[JobDetail], None] | None = None,
    ) -> JobDetail:
        """Poll until the job is succeeded, failed or cancelled; ``on_update`` sees every poll.

        Raises ``TimeoutError`` after ``timeout`` seconds (the job itself keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            detail = self.job(job_id)
            if on_update is not None:
                on_update(detail)
            if detail.state in TERMINAL_JOB_STATES:
                return detail
            wait = poll_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} is still {detail.state} after {timeout}s")
                wait = min(wait, left)
            self.sleep(wait)

    # Schedules

    def schedule(self, workload_key: str, target: str | None = None) -> ScheduleView:
        """The best schedule of a stored workload (the static one while nothing is tuned)."""
        path = f"/v1/schedules/{_seg(workload_key)}"
        return self._call(ScheduleView, "GET", path, params={"target": target or None})

    def lookup_schedule(
        self, workload: Workload | dict[str, Any], target: str | None = None
    ) -> ScheduleView:
        """Like ``schedule``, but the server computes the key from the declaration itself."""
        body = _body(ScheduleLookup, workload=_doc(workload), target=target)
        return self._call(ScheduleView, "POST", "/v1/schedules/lookup", json=body)

    def best_schedules(
        self, workload_key: str | None = None, target: str | None = None, limit: int | None = None
    ) -> list[BestSchedule]:
        """The cached best (tuned) schedules with their provenance; ``schedule`` fetches one."""
        params = {"workload_key": workload_key, "target": target, "limit": limit}
        return self._call(list[BestSchedule], "GET", "/v1/schedules", params=params)

    # Workers

    def register_worker(self, registration: WorkerRegister) -> WorkerView:
        body = registration.model_dump(mode="json")
        return self._call(WorkerView, "POST", "/v1/workers/register", json=body)

    def heartbeat(self, worker_id: str) -> WorkerView:
        return self._call(WorkerView, "POST", f"/v1/workers/{_seg(worker_id)}/heartbeat")

    def workers(self) -> list[WorkerView]:
        return self._call(list[WorkerView], "GET", "/v1/workers")

    # Tokens (admin) and health

    def create_token(
        self, name: str, scopes: Sequence[Scope], device_keys: Sequence[str] = ()
    ) -> TokenCreated:
        """A new bearer token; not retried once sent, since a retry would mint a second one.

        ``device_keys``: what a worker token may register workers for."""
        body = _body(TokenCreate, name=name, scopes=list(scopes), device_keys=list(device_keys))
        return self._call(
            TokenCreated, "POST", "/v1/tokens", json=body, retry_on=_NOT_SENT, statuses=()
        )

    def healthz(self) -> bool:
        """Whether the server answers at all (one attempt: a probe must answer fast)."""
        try:
            return self._send("GET", "/healthz", retry_on=(), statuses=()).is_success
        except ApiError:
            return False

    def readyz(self) -> dict[str, Any]:
        """The server's readiness report: its body on 200 (ready) and on 503 (not ready)."""
        response = self._send("GET", "/readyz", retry_on=(), statuses=())
        if response.status_code not in (200, 503):
            raise _api_error(response)
        body = _json_or_none(response)
        if not isinstance(body, dict):
            raise _api_error(response)
        return body

    # Transport

    def _call(self, answer: type[T], method: str, path: str, **send: Any) -> T:
        """``_request``, its JSON body parsed into ``answer`` (a schema, or a list of one)."""
        return TypeAdapter(answer).validate_python(self._request(method, path, **send))

    def _request(self, method: str, path: str, **send: Any) -> Any:
        """``_send``, then return the JSON body or raise ``ApiError``."""
        response = self._send(method, path, **send)
        if not response.is_success:
            raise _api_error(response)
        return response.json() if response.content else None

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retry_on: tuple[type[Exception], ...] = _TRANSIENT,
        statuses: Sequence[int] = _RETRY_STATUSES,
    ) -> httpx.Response:
        """Send, retried on ``retry_on`` errors and on ``statuses``; None parameters left out."""
        params = {name: value for name, value in (params or {}).items() if value is not None}

        def attempt() -> httpx.Response:
            response = self._http.request(method, path, json=json, params=params)
            if response.status_code in statuses:
                raise _api_error(response)
            return response

        def before_sleep(state: tenacity.RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s %s: %s; retry %d in %.1fs", method, path, err, state.attempt_number, wait
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((*retry_on, ApiError)),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self.backoff,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ApiError(None, f"cannot reach the API at {self.base_url}: {err}") from err
        except httpx.TransportError as err:
            raise ApiError(None, f"{method} {path} failed: {type(err).__name__}: {err}") from err


def _configured_token() -> str | None:
    """AUTOSCHED_API_TOKEN, else the admin token an embedded ``autosched up`` wrote."""
    settings = get_settings()
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    path = Path(settings.data_dir) / "token"
    try:
        return path.read_text().strip() or None
    except OSError:  # absent (the usual case) or unreadable: no token
        return None


def _body(model: type[BaseModel], **fields: Any) -> Any:
    """A request body checked against its schema before it is sent (InvalidRequestError)."""
    try:
        return model(**fields).model_dump(mode="json")
    except ValidationError as err:
        raise InvalidRequestError(_errors_text(err.errors())) from None


def _doc(workload: Workload | dict[str, Any]) -> dict[str, Any]:
    return workload if isinstance(workload, dict) else workload.to_json()


def _seg(value: str) -> str:
    """One URL path segment (keys and worker ids are plain, but never trust that)."""
    return quote(value, safe="")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # a proxy's page, or no body
        return None


def _api_error(response: httpx.Response) -> ApiError:
    """The server's ``{"detail": ..., "path"?: ...}`` as an ApiError; a proxy's page as text."""
    body = _json_or_none(response)
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        text = detail if isinstance(detail, str) else _errors_text(detail)
        if body.get("path"):  # a WireFormatError says where in the document
            text = f"{body['path']}: {text}"
    else:
        text = response.text.strip()[:500] or response.reason_phrase
    return ApiError.from_status(response.status_code, text)


def _errors_text(errors: Any) -> str:
    """FastAPI's (and pydantic's) list of ``{loc, msg}`` as ``field.path: message; ...``."""
    if not isinstance(errors, list):
        return json.dumps(errors)
    parts = []
    for item in errors:
        if not isinstance(item, dict):
            parts.append(str(item))
            continue
        loc = [p for p in item.get("loc", ()) if p != "body"]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        msg = str(item.get("msg", item)).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
