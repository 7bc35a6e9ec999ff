"""The one place autosched errors become HTTP responses (``{"detail": ...}`` bodies).

Service functions raise the library's error types and never know about HTTP; the Python
client maps the status codes back to the same types.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from autosched.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    ServiceBusyError,
    WireFormatError,
)

STATUS: dict[type[Exception], int] = {
    NotFoundError: status.HTTP_404_NOT_FOUND,
    ConflictError: status.HTTP_409_CONFLICT,
    InvalidRequestError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    AuthenticationError: status.HTTP_401_UNAUTHORIZED,
    PermissionDeniedError: status.HTTP_403_FORBIDDEN,
    QuotaExceededError: status.HTTP_429_TOO_MANY_REQUESTS,
    ServiceBusyError: status.HTTP_503_SERVICE_UNAVAILABLE,
}


async def _wire_format(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WireFormatError)
    # ``path`` locates the problem in the document (e.g. stages[2].body.args[0]).
    return JSONResponse(
        {"detail": exc.message, "path": exc.path},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _mapped(_request: Request, exc: Exception) -> JSONResponse:
    code = next(c for t, c in STATUS.items() if isinstance(exc, t))
    headers = {
        status.HTTP_401_UNAUTHORIZED: {"WWW-Authenticate": "Bearer"},
        status.HTTP_503_SERVICE_UNAVAILABLE: {"Retry-After": "1"},
    }.get(code)
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


def _unique_violation(exc: IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)  # or sqlite3


async def _integrity(_request: Request, exc: Exception) -> JSONResponse:
    # Two requests inserting the same row at once (e.g. one workload submitted twice in
    # parallel): the loser's transaction was rolled back, and a retry will find the row.
    # Any other integrity error is a bug and stays a 500.
    assert isinstance(exc, IntegrityError)
    if not _unique_violation(exc):
        raise exc
    return JSONResponse(
        {"detail": "a concurrent request wrote the same record; retry"},
        status_code=status.HTTP_409_CONFLICT,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(WireFormatError, _wire_format)
    for exc_type in STATUS:
        app.add_exception_handler(exc_type, _mapped)
    app.add_exception_handler(IntegrityError, _integrity)
