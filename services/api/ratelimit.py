"""Rate limits, counted by the ``limits`` library (sliding-window counters).

Three buckets, each a ``limits`` rate string from the settings:

- anonymous requests (no ``Authorization`` header), per client address, at
  ``anonymous_rate_limit``: what an unauthenticated stranger may cost;
- submissions (``POST /v1/workloads``, ``/v1/jobs``, ``/v1/schedules/lookup``: each builds a
  PrimFunc and its template), per token (a hash of the bearer; the client address when none,
  or when auth is off), at ``submit_rate_limit``;
- failed authentications (answers 401 to a request that sent a token), per client address,
  at ``anonymous_rate_limit``: otherwise any made-up bearer would escape the anonymous limit.

The counters live in Redis when ``redis_url`` is set, so every API process shares them, else
in this process's memory. Both go through ``limits.aio``: the Redis client is asyncio's, so a
hit costs the event loop no blocking call and no thread. A refused request gets 429 with
``Retry-After`` and a ``{"detail": ...}`` body before any route runs. Health probes are
never limited. When Redis cannot be reached the request is let through (and logged): the
limiter guards against abuse, and turning a Redis outage into refusing every read would be
worse.

Addresses are the ASGI client's: behind a reverse proxy, run uvicorn with
``--proxy-headers --forwarded-allow-ips`` so that each client gets its own bucket.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autosched.settings import Settings

log = logging.getLogger(__name__)

EXEMPT = frozenset({"/healthz", "/readyz"})
SUBMISSIONS = frozenset({"/v1/workloads", "/v1/jobs", "/v1/schedules/lookup"})
KEY_PREFIX = "autosched-ratelimit"


@dataclass(frozen=True)
class Bucket:
    """One limit and the namespace of its counters."""

    name: str
    item: RateLimitItem
    what: str  # for the 429's message

    @classmethod
    def parse(cls, name: str, rate: str, what: str) -> Bucket:
        return cls(name, parse(rate), what)


def make_storage(settings: Settings) -> Storage:
    """Redis (shared by every API process) when configured, else this process's memory."""
    if not settings.redis_url:
        return MemoryStorage(wrap_exceptions=True)
    storage = storage_from_string(
        f"async+{settings.redis_url}",
        implementation="redispy",  # redis.asyncio: the client the project already ships
        key_prefix=KEY_PREFIX,
        wrap_exceptions=True,
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
    )
    assert isinstance(storage, Storage)  # the async+ scheme makes an asyncio storage
    return storage


def request_path(scope: Scope) -> str:
    """The path under the app's mount point, without a trailing slash."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class RateLimits:
    """The ASGI middleware that applies the three buckets (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.anonymous = Bucket.parse(
            "anonymous", settings.anonymous_rate_limit, "anonymous requests from this address"
        )
        self.submit = Bucket.parse(
            "submit", settings.submit_rate_limit, "submissions with this token"
        )
        self.auth_failures = Bucket.parse(
            "auth-failures", settings.anonymous_rate_limit, "failed authentications"
        )
        self.storage = make_storage(settings)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        # With auth off a bearer means nothing: made-up bearers must not each get a bucket.
        self.per_token = settings.auth_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or request_path(scope) in EXEMPT:
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        bearer = Headers(scope=scope).get("authorization")
        checks: list[tuple[Bucket, str]] = []
        if bearer is None:
            checks.append((self.anonymous, address))
        if scope["method"] == "POST" and request_path(scope) in SUBMISSIONS:
            per_token = bearer is not None and self.per_token
            who = hashlib.sha256(bearer.encode()).hexdigest() if per_token else address
            checks.append((self.submit, who))
        for bucket, key in checks:
            if not await self._call(self.limiter.hit, bucket.item, bucket.name, key):
                await self._refuse(bucket, key, scope, receive, send)
                return
        if bearer is None:
            await self.app(scope, receive, send)
            return
        # A token was sent: an address whose tokens keep failing is refused for a while.
        failures = self.auth_failures
        if not await self._call(self.limiter.test, failures.item, failures.name, address):
            await self._refuse(failures, address, scope, receive, send)
            return

        async def watch_status(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                await self._call(self.limiter.hit, failures.item, failures.name, address)
            await send(message)

        await self.app(scope, receive, watch_status)

    async def _call(
        self, method: Callable[..., Awaitable[bool]], *args: str | RateLimitItem
    ) -> bool:
        """``hit`` or ``test``: whether the request may go on (True when Redis is down)."""
        try:
            return await method(*args)
        except StorageError as err:
            log.warning("rate limit storage unavailable, request not limited: %s", err)
            return True

    async def _refuse(
        self, bucket: Bucket, key: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            stats = await self.limiter.get_window_stats(bucket.item, bucket.name, key)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except StorageError:
            retry_after = 1  # the refusal stands; a short wait is a safe hint
        detail = f"rate limit exceeded: {bucket.item} {bucket.what}; retry in {retry_after} s"
        response = JSONResponse(
            {"detail": detail}, status_code=429, headers={"Retry-After": str(retry_after)}
        )
        await response(scope, receive, send)
