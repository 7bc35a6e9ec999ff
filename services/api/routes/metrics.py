"""``/metrics``: Prometheus exposition of the fleet (read from the database at each scrape)
and of this API process (request latency); see ``autosched.service.metrics``.

``RequestMetrics`` is the ASGI middleware that times every HTTP request, labelled by the
matched route's template (``/v1/jobs/{job_id}``), never the raw path, so the number of
series stays bounded whatever URLs clients send.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autosched.service.metrics import ServiceMetrics
from services.api.deps import ReadAccess

router = APIRouter(tags=["health"])

#: The ``route`` label of a request no route matched (a 404 for any unknown path).
UNMATCHED = "<unmatched>"
#: Methods labelled as sent; anything else a client makes up is counted as ``OTHER``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def app_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


@router.get(
    "/metrics",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it). Readable
    anonymously when the operator allows anonymous reads, else with any valid token."""
    body, content_type = await run_in_threadpool(
        app_metrics(request).exposition, request.headers.get("accept")
    )
    return Response(body, media_type=content_type)


class RequestMetrics:
    """Observe each HTTP request's duration into ``metrics.request_duration``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 500  # what the server answers when the app raises before responding

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = route_template(scope, root_path)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.observe_request(method, template, status, time.perf_counter() - start)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The template of the route that handled ``scope``, read once the app returned: the
    router sets ``route`` in this same scope; a mounted app (``/static``) only extends
    ``root_path`` (from ``root_path`` at entry), which becomes ``<mount>/{path}``."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    mounted = scope.get("root_path", "")
    if mounted != root_path and mounted.startswith(root_path):
        return f"{mounted[len(root_path) :]}/{{path}}"
    return UNMATCHED
