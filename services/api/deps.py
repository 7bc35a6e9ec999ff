"""Request dependencies: the app's settings, a database session per request, the host's
hardware, and bearer-token checks.

Everything hangs off ``app.state.api`` (one ``ApiState`` per app), so two apps built with
different ``Settings`` in one process (the tests do) never share a database or a token rule.

Dependencies that only read the app's state are ``async def``: FastAPI runs a plain ``def``
dependency in its thread pool, and a hop there per dependency is most of what a cached
schedule fetch costs. Those that wait on the database stay in the pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from autosched.db.session import session_factory, session_scope
from autosched.hardware import HardwareParams, detect_hardware
from autosched.schemas import Scope
from autosched.service.jobs import Quotas
from autosched.service.tokens import Caller, authenticate
from autosched.settings import Settings
from services.api.schedule_cache import ScheduleCache


@dataclass
class ApiState:
    settings: Settings
    sessions: sessionmaker[Session]
    schedule_cache: ScheduleCache
    _hardware: HardwareParams | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiState:
        return cls(
            settings,
            session_factory(settings.resolved_database_url),
            ScheduleCache(settings.schedule_cache_entries),
        )

    def host_hardware(self) -> HardwareParams:
        """Detected once per app; this app's settings' overrides win (not the global ones)."""
        with self._lock:
            if self._hardware is None:
                s = self.settings
                overrides = {
                    name: getattr(s, name)
                    for name in ("num_cores", "vector_bits", "l1_bytes", "l2_bytes")
                    if getattr(s, name) is not None
                }
                self._hardware = detect_hardware(**overrides)
            return self._hardware

    @property
    def detected_hardware(self) -> HardwareParams | None:
        """The host's hardware once ``host_hardware`` has detected it, without waiting."""
        return self._hardware


async def get_state(request: Request) -> ApiState:
    return request.app.state.api


StateDep = Annotated[ApiState, Depends(get_state)]


async def get_app_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, rolled back on error."""
    with session_scope(state.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit becomes an error
# response instead of a 2xx for something that was never stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_host_hardware(state: StateDep) -> HardwareParams:
    # Detected in the app's lifespan; an app used without one detects it off the loop.
    hardware = state.detected_hardware
    return hardware if hardware is not None else await run_in_threadpool(state.host_hardware)


HostHardwareDep = Annotated[HardwareParams, Depends(get_host_hardware)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`as_...`); scopes: submit, worker, admin (admin implies all).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_quotas(state: StateDep) -> Quotas:
    return Quotas.from_settings(state.settings)


QuotasDep = Annotated[Quotas, Depends(get_quotas)]


def _check(
    state: ApiState, credentials: HTTPAuthorizationCredentials | None, scope: Scope | None
) -> Caller:
    # Its own short transaction: last_used_at, when due (at most once per interval), is
    # committed at once, and the request's own transaction never holds a lock on the token
    # row (workers share tokens and heartbeat).
    # The row is copied into a Caller before its session closes.
    with session_scope(state.sessions) as session:
        token = credentials.credentials if credentials else None
        interval = state.settings.token_touch_interval_s
        row = authenticate(session, token, scope, touch_interval_s=interval)
        return Caller.of(row)


def require_scope(scope: Scope) -> Callable[..., Caller]:
    """A dependency admitting a token with ``scope``; with auth off, a trusted caller."""

    async def dependency(state: StateDep, credentials: BearerDep) -> Caller:
        if not state.settings.auth_required:
            return Caller.trusted()
        return await run_in_threadpool(_check, state, credentials, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


def require_read(state: StateDep, credentials: BearerDep) -> Caller | None:
    """Reads are anonymous when the operator allows it (None: an anonymous reader, who gets
    redacted views); a token sent anyway must be valid. Auth off: a trusted caller."""
    settings = state.settings
    if not settings.auth_required:
        return Caller.trusted()
    if settings.anonymous_reads and credentials is None:
        return None
    return _check(state, credentials, None)


async def read_access(state: StateDep, credentials: BearerDep) -> Caller | None:
    """``require_read`` as a dependency: a token to look up is checked in the thread pool;
    without one (or with auth off) the answer needs no database and no thread."""
    if credentials is not None and state.settings.auth_required:
        return await run_in_threadpool(require_read, state, credentials)
    return require_read(state, credentials)


def redact_for(reader: Caller | None) -> bool:
    """Whether a reader gets the anonymous (redacted) views: host names, error texts."""
    return reader is None


_require_submit = require_scope("submit")
_require_worker = require_scope("worker")
_require_admin = require_scope("admin")

ReadAccess = Depends(read_access)
SubmitAccess = Depends(_require_submit)
WorkerAccess = Depends(_require_worker)
AdminAccess = Depends(_require_admin)
#: The same checks, for routes that need to know who asked (owners, grants, redaction).
Reader = Annotated[Caller | None, ReadAccess]
Submitter = Annotated[Caller, SubmitAccess]
WorkerCaller = Annotated[Caller, WorkerAccess]
