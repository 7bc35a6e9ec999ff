"""API tokens: bearer secrets shown once, stored only as SHA-256 hex.

A token is 256 random bits, so an unsalted hash is enough (nothing to brute-force) and lets
a request find its token with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from autosched.db.models import ApiToken, utcnow
from autosched.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from autosched.schemas import TokenCreated

SCOPES = ("submit", "worker", "admin")
TOKEN_PREFIX = "as_"


@dataclass(frozen=True)
class Caller:
    """Who makes a request, as the service layer sees it: a token's id, scopes and granted
    device keys, copied out of its row (the row's session is gone by the time routes run).

    ``token_id`` None is a trusted caller: the API with auth off (single-user mode) or a
    process with database access (workers, scheduler, CLI ``--direct``). It may do anything,
    and what it creates has no owner.
    """

    token_id: int | None
    scopes: frozenset[str] = frozenset()
    device_keys: frozenset[str] = frozenset()

    @classmethod
    def trusted(cls) -> Caller:
        return cls(None, frozenset(SCOPES))

    @classmethod
    def of(cls, row: ApiToken) -> Caller:
        return cls(row.id, frozenset(row.scopes), frozenset(row.device_keys or ()))

    @property
    def is_admin(self) -> bool:
        return self.token_id is None or "admin" in self.scopes

    def may_serve(self, device_key: str) -> bool:
        """Whether it may register workers for ``device_key``."""
        return self.is_admin or device_key in self.device_keys

    def owns(self, owner_token_id: int | None) -> bool:
        """Whether it may act on a row owned by ``owner_token_id`` (a job, a worker)."""
        return self.is_admin or owner_token_id == self.token_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, name: str, scopes: Sequence[str], device_keys: Sequence[str] = ()
) -> TokenCreated:
    """A new token; the plaintext is in the return value and nowhere else.

    ``device_keys`` are what a worker token may serve; only a worker token takes them.
    """
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidRequestError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    scopes = list(dict.fromkeys(scopes))
    keys = list(dict.fromkeys(device_keys))
    if keys and "worker" not in scopes:
        raise InvalidRequestError("device keys bind a worker token: add the 'worker' scope")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(token), scopes=scopes, device_keys=keys)
    session.add(row)
    session.flush()
    return TokenCreated(id=row.id, name=row.name, scopes=scopes, device_keys=keys, token=token)


def authenticate(
    session: Session, token: str | None, scope: str | None, *, touch_interval_s: float
) -> ApiToken:
    """The token's row if it is valid and grants ``scope`` (None: any valid token will do).

    "admin" implies every scope. Its ``last_used_at`` is recorded at most once per
    ``touch_interval_s`` (``touch_last_used``).
    """
    if not token:
        raise AuthenticationError("a bearer token is required")
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token))
    ).one_or_none()
    if row is None or row.revoked:
        raise AuthenticationError("unknown or revoked token")
    if scope is not None and scope not in row.scopes and "admin" not in row.scopes:
        raise PermissionDeniedError(f"token {row.name!r} lacks the {scope!r} scope")
    touch_last_used(session, row, touch_interval_s)
    return row


def touch_last_used(session: Session, row: ApiToken, interval_s: float) -> None:
    """Set ``last_used_at`` to now if it is older than ``interval_s``.

    A write per authenticated request would make every read a write transaction (and, with
    shared worker tokens, a queue on one row lock); what operators need from this column is
    "used recently or not", so a token in steady use costs one write a minute. The age is
    checked on the row just read, then again in the UPDATE's WHERE, so that of the API
    processes that see it stale at once only the first writes.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=interval_s)
    if row.last_used_at is not None and row.last_used_at >= stale_before:
        return
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == row.id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale_before),
        )
        .values(last_used_at=now)
    )


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token with id {token_id}")
    row.revoked = True
    session.flush()
    return row
