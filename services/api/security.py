"""Browser safety: security headers on every response, and a same-origin check on every
state-changing request.

``SecurityHeaders`` sends a Content-Security-Policy that allows only the server's own
scripts, styles and connections (the dashboard and Swagger UI load nothing inline that
executes, so no 'unsafe-inline'), forbids framing, sniffing and referrers, and marks JSON
answers ``no-store`` (they may depend on a bearer token, and a shared cache must not keep
them). A response that sets its own policy or cache rule keeps it.

``OriginCheck`` answers 403 to a POST/PUT/PATCH/DELETE sent by a browser from another site:
an ``Origin`` that is neither the API's own (the request's scheme://host:port, or
``settings.api_url``) nor one of ``settings.allowed_origins``, or ``Sec-Fetch-Site:
cross-site``. With auth off, that is what keeps a hostile page from cancelling jobs with a
plain form post. Requests without those headers (the CLI, curl, the Python client) are not
browsers and pass; the bearer token is their guard.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The policy of every page: only this server's own files; nothing inline runs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # the favicon and Swagger UI's icons are data: URLs
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: Methods a browser sends without side effects; every other one is checked.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class SecurityHeaders:
    """Add ``HEADERS`` to every HTTP response (those a route set itself win), and
    ``Cache-Control: no-store`` to JSON responses that set no cache rule."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


Origin = tuple[str, str, int]  # scheme, host (lower case), port


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as a comparable triple; None for ``null`` or garbage."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def request_origin(scope: Scope) -> Origin | None:
    """The origin a browser on this server's own pages sends: scheme and Host header."""
    host = Headers(scope=scope).get("host")
    return parse_origin(f"{scope.get('scheme', 'http')}://{host}") if host else None


class OriginCheck:
    """403 for a state-changing request a browser sent from another site."""

    def __init__(self, app: ASGIApp, api_url: str, allowed_origins: Iterable[str]) -> None:
        self.app = app
        configured = [api_url, *allowed_origins]
        self.allowed = {o for o in map(parse_origin, configured) if o is not None}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = self.refusal(scope)
            if refusal:
                await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or None when it may go on."""
        headers = Headers(scope=scope)
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return "cross-site request refused (Sec-Fetch-Site: cross-site)"
        sent = headers.get("origin")
        if sent is None:
            return None  # not a browser's cross-origin request
        origin = parse_origin(sent)
        if origin is not None and (origin in self.allowed or origin == request_origin(scope)):
            return None
        return (
            f"cross-origin request refused: Origin {sent[:200]!r} is not this API's origin "
            "nor in allowed_origins"
        )
