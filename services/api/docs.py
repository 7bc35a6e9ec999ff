"""OpenAPI docs at ``/docs`` that work with no network and under the API's
Content-Security-Policy.

FastAPI's default Swagger UI page loads its script and styles from a CDN and starts Swagger UI
with an inline script; here the files come from the ``swagger-ui-py`` package (Swagger UI 5,
which renders the OpenAPI 3.1 FastAPI writes; ``swagger-ui-bundle``'s 4.x refuses it) and the
start-up from the dashboard's static ``swagger-init.js``, all served by the app itself, so the
page needs no 'unsafe-inline' (``services.api.security``).
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.api.dashboard.routes import STATIC_PREFIX, VERSION

ASSETS = "/docs-assets"
SWAGGER_UI_DIR = files("swagger_ui") / "static"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{init}"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Call on an app created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=str(SWAGGER_UI_DIR)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = PAGE.format(
            title=escape(f"{app.title} API"),
            assets=escape(root + ASSETS),
            openapi_url=escape(root + (app.openapi_url or "/openapi.json")),
            init=escape(f"{root}{STATIC_PREFIX}/swagger-init.js?v={VERSION}"),
        )
        return HTMLResponse(page)
