"""Request dependencies: the app's settings, a database session per request, the host's
hardware, and bearer-token checks.

Everything hangs off ``app.state.api`` (one ``ApiState`` per app), so two apps built with
different ``Settings`` in one process (the tests do) never share a database or a token rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.session import session_factory, session_scope
from autosched.hardware import HardwareParams, detect_hardware
from autosched.schemas import Scope
from autosched.service.jobs import Quotas
from autosched.service.tokens import Caller, authenticate
from autosched.settings import Settings


@dataclass
class ApiState:
    settings: Settings
    sessions: sessionmaker[Session]
    _hardware: HardwareParams | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiState:
        return cls(settings, session_factory(settings.resolved_database_url))

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


def get_state(request: Request) -> ApiState:
    return request.app.state.api


StateDep = Annotated[ApiState, Depends(get_state)]


def get_app_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, rolled back on error."""
    with session_scope(state.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit becomes an error
# response instead of a 2xx for something that was never stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_host_hardware(state: StateDep) -> HardwareParams:
    return state.host_hardware()


HostHardwareDep = Annotated[HardwareParams, Depends(get_host_hardware)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`as_...`); scopes: submit, worker, admin (admin implies all).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_quotas(state: StateDep) -> Quotas:
    return Quotas.from_settings(state.settings)


QuotasDep = Annotated[Quotas, Depends(get_quotas)]


def _check(
    state: ApiState, credentials: HTTPAuthorizationCredentials | None, scope: Scope | None
) -> Caller:
    # Its own short transaction: last_used_at is committed at once, and the request's own
    # transaction never holds a lock on the token row (workers share tokens and heartbeat).
    # The row is copied into a Caller before its session closes.
    with session_scope(state.sessions) as session:
        row = authenticate(session, credentials.credentials if credentials else None, scope)
        return Caller.of(row)


def require_scope(scope: Scope) -> Callable[..., Caller]:
    """A dependency admitting a token with ``scope``; with auth off, a trusted caller."""

    def dependency(state: StateDep, credentials: BearerDep) -> Caller:
        if not state.settings.auth_required:
            return Caller.trusted()
        return _check(state, credentials, scope)

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


def redact_for(reader: Caller | None) -> bool:
    """Whether a reader gets the anonymous (redacted) views: host names, error texts."""
    return reader is None


_require_submit = require_scope("submit")
_require_worker = require_scope("worker")
_require_admin = require_scope("admin")

ReadAccess = Depends(require_read)
SubmitAccess = Depends(_require_submit)
WorkerAccess = Depends(_require_worker)
AdminAccess = Depends(_require_admin)
#: The same checks, for routes that need to know who asked (owners, grants, redaction).
Reader = Annotated[Caller | None, ReadAccess]
Submitter = Annotated[Caller, SubmitAccess]
WorkerCaller = Annotated[Caller, WorkerAccess]
