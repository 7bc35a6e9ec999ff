"""The FastAPI application: ``create_app(settings)`` builds one, ``serve()`` runs it.

OpenAPI lives at ``/docs``. Every route is thin: it parses, authorises (``deps``) and calls
``autosched.service``; errors become HTTP statuses in ``errors`` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autosched.db.migrate import ensure_schema, require_schema
from autosched.logs import configure_logging
from autosched.service import workload_sandbox
from autosched.service.metrics import ServiceMetrics
from autosched.settings import Settings, get_settings
from services.api.dashboard import install_dashboard
from services.api.deps import ApiState
from services.api.docs import install_docs
from services.api.errors import install_error_handlers
from services.api.openapi import document_common_responses
from services.api.ratelimit import RateLimits
from services.api.routes import (
    health,
    jobs,
    metrics,
    schedules,
    tokens,
    views,
    workers,
    workloads,
)
from services.api.routes.metrics import RequestMetrics
from services.api.security import OriginCheck, SecurityHeaders

#: How long uvicorn waits for an API worker process to answer a health ping.
WORKER_HEALTHCHECK_S = 60


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to ``settings`` (default: the environment's), not to global state."""
    settings = settings or get_settings()
    state = ApiState.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The schema first: at head, or migrated under the migration lock (auto_migrate).
        await run_in_threadpool(ensure_schema, settings.resolved_database_url, settings)
        await run_in_threadpool(state.host_hardware)  # detect once, before the first request
        # Template-building sandboxes start in the background: the first declarations then
        # do not wait for TVM to import in a fresh child.
        workload_sandbox.pool().warm()
        yield

    app = FastAPI(
        title="autosched",
        summary="Distributed auto-scheduling for Apache TVM",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs below
        redoc_url=None,
    )
    # Middlewares, innermost first: each one added wraps those before it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_bytes)
    app.add_middleware(RateLimits, settings=settings)  # refused requests cost no body read
    app.add_middleware(
        OriginCheck, api_url=settings.api_url, allowed_origins=settings.allowed_origins
    )
    app.state.api = state
    # Times every request, the ones refused by the middlewares above included.
    app.state.metrics = ServiceMetrics(state.sessions)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries the headers
    install_error_handlers(app)
    for module in (health, metrics, workloads, jobs, schedules, workers, tokens, views):
        app.include_router(module.router)
    install_dashboard(app)  # HTML pages at /, /jobs/{id}, /farm, /schedules; /static
    install_docs(app)  # Swagger UI at /docs from local files
    document_common_responses(app)  # 401/403/400/413/429 from the layers around the routes
    return app


class BodyLimit:
    """413 for request bodies over ``max_bytes``, before any JSON parsing: a declared
    Content-Length is answered without reading a byte, and a streamed body is counted as it
    arrives (the route's read fails with the 413). Both answer ``{"detail": ...}`` JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body over max_json_bytes={self.max_bytes}"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": detail}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, counted, send)


def serve() -> None:
    """Run the API with uvicorn on ``api_host:api_port``; uvicorn's own lines (access log
    included) go through ``configure_logging``'s handler (``log_config=None``)."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings, "api")
    require_schema(settings.resolved_database_url, settings)  # a clear exit, not a traceback
    if settings.api_workers == 1:
        uvicorn.run(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None
        )
        return
    # Several processes (one per core is what fetch-heavy deployments want): uvicorn starts
    # each from the factory, which reads the same environment, and logs through
    # ``worker_app``'s handler. A spawned worker answers uvicorn's health pings only once it
    # has imported this module (TVM with it: seconds, more on a busy host); at uvicorn's
    # default 5 s such workers are killed and respawned over and over.
    uvicorn.run(
        "services.api.app:worker_app",
        factory=True,
        workers=settings.api_workers,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
    )


def worker_app() -> FastAPI:
    """One of ``api_workers`` API processes: its logging, then the app."""
    settings = get_settings()
    configure_logging(settings, "api")
    return create_app(settings)


if __name__ == "__main__":
    serve()
