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

from autosched.db.models import ApiToken
from autosched.db.session import session_factory, session_scope
from autosched.hardware import HardwareParams, detect_hardware
from autosched.service.schemas import Scope
from autosched.service.tokens import authenticate
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


def _check(
    state: ApiState, credentials: HTTPAuthorizationCredentials | None, scope: Scope | None
) -> ApiToken | None:
    # Its own short transaction: last_used_at is committed at once, and the request's own
    # transaction never holds a lock on the token row (workers share tokens and heartbeat).
    with session_scope(state.sessions) as session:
        return authenticate(session, credentials.credentials if credentials else None, scope)


def require_scope(scope: Scope) -> Callable[..., ApiToken | None]:
    """A dependency admitting a token with ``scope`` (None returned when auth is off)."""

    def dependency(state: StateDep, credentials: BearerDep) -> ApiToken | None:
        if not state.settings.auth_required:
            return None
        return _check(state, credentials, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


def require_read(state: StateDep, credentials: BearerDep) -> ApiToken | None:
    """Reads are anonymous when the operator allows it; a token sent anyway must be valid."""
    settings = state.settings
    if not settings.auth_required or (settings.anonymous_reads and credentials is None):
        return None
    return _check(state, credentials, None)


ReadAccess = Depends(require_read)
SubmitAccess = Depends(require_scope("submit"))
WorkerAccess = Depends(require_scope("worker"))
AdminAccess = Depends(require_scope("admin"))
