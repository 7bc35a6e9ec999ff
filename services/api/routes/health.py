"""Liveness and readiness probes (what Kubernetes and docker-compose health checks call)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, pool, text

from autosched.db.session import engine_for
from autosched.settings import Settings
from services.api.deps import SettingsDep

router = APIRouter(tags=["health"])
log = logging.getLogger("autosched.api")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers; says nothing about its dependencies. ``async``: answered on the
    event loop, never queued behind requests waiting for a threadpool thread."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the database or the broker is down"}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """Ready when the database answers ``SELECT 1`` and the Celery broker is reachable."""
    checks = {"database": _check(_database, settings), "broker": _check(_broker, settings)}
    failed = [name for name, result in checks.items() if result != "ok"]
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["detail"] = f"not ready: {', '.join(failed)} unavailable"
    return JSONResponse(body, status_code=503 if failed else 200)


def _check(probe: Any, settings: Settings) -> str:
    try:
        probe(settings)
    except Exception as err:  # any failure means "not ready"; say which, log why
        # Anyone may call the probe: the message (host names, paths) goes to the log only.
        log.warning("readiness check %s failed", probe.__name__.lstrip("_"), exc_info=True)
        return f"error: {type(err).__name__}"
    return "ok"


def _database(settings: Settings) -> None:
    with engine_for(settings.resolved_database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


def _broker(settings: Settings) -> None:
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            client.ping()
        finally:
            client.close()
        return
    # Embedded: kombu's SQLAlchemy transport keeps the queue in a SQLite file.
    url = settings.broker_url.removeprefix("sqla+")
    directory = Path(url.split("///", 1)[-1]).parent
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"broker directory {directory} is not writable")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
