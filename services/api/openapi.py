"""The answers every route can give that no route declares, added to the OpenAPI schema.

Some statuses come from layers around the routes rather than from the routes: the bearer
check (401 for a missing or bad token, 403 for a missing scope), FastAPI's body parsing (400
for a body that is not JSON), the body limit (413), the Origin check (403 for a cross-site
write) and the rate limits (429). Declaring them per route would repeat them seventeen times
and drift; here they are added where they apply, so that the schema describes what clients
actually get (the API fuzz holds it to that).

A 422 is either FastAPI's validation error (``detail``: a list) or one of ours
(``services.api.errors``: ``detail`` a sentence, and ``path`` for a wire-format document),
so every documented 422 admits both.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.api.ratelimit import EXEMPT
from services.api.security import SAFE_METHODS

ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}

#: The 422 of ``services.api.errors``: a wire-format or request error.
INVALID = {
    "type": "object",
    "properties": {"detail": {"type": "string"}, "path": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_ERROR = {"$ref": "#/components/schemas/HTTPValidationError"}


def _response(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ERROR}},
    }
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


UNAUTHORIZED = _response("missing or invalid bearer token", **{"WWW-Authenticate": "Bearer"})
FORBIDDEN = _response("the token lacks the scope, or a browser sent a cross-site write")
MALFORMED = _response("the body is not JSON")
TOO_LARGE = _response("request body over max_json_bytes")
RATE_LIMITED = _response("rate limit exceeded", **{"Retry-After": "seconds to wait"})


def document_common_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the statuses above to each operation they apply to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            validation = "HTTPValidationError" in schema.get("components", {}).get("schemas", {})
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    _add(path, method.upper(), operation, validation=validation)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add(path: str, method: str, operation: dict[str, Any], *, validation: bool) -> None:
    responses = operation.setdefault("responses", {})
    if operation.get("security"):
        responses.setdefault("401", UNAUTHORIZED)
        responses.setdefault("403", FORBIDDEN)
    if method not in SAFE_METHODS:
        responses.setdefault("403", FORBIDDEN)
    if "requestBody" in operation:
        responses.setdefault("400", MALFORMED)
        responses.setdefault("413", TOO_LARGE)
    if path not in EXEMPT:
        responses.setdefault("429", RATE_LIMITED)
    if "422" in responses:
        media = responses["422"].setdefault("content", {}).setdefault("application/json", {})
        # A 422 declared with a description only still answers FastAPI's validation errors.
        documented = media.get("schema") or (VALIDATION_ERROR if validation else None)
        media["schema"] = {"anyOf": [documented, INVALID]} if documented else INVALID
