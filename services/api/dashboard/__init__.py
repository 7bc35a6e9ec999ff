"""The web dashboard served by the API at ``/``: jobs, one job's tuning curve, the device
farm and the cached best schedules. Server-side Jinja2 templates, a small CSS and JS file,
and a vendored Chart.js (``static/vendor``): nothing is fetched from the internet."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.api.dashboard.routes import STATIC_DIR, STATIC_PREFIX, router


def install_dashboard(app: FastAPI) -> None:
    """Add the pages and their static files to ``app``."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
