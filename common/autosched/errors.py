"""The one error hierarchy of autosched. Services map these to HTTP status codes in one place."""

from __future__ import annotations


class AutoschedError(Exception):
    """Base of every error autosched raises on purpose."""


class WireFormatError(AutoschedError):
    """A serialized compute declaration is malformed, unsafe or over a limit.

    ``path`` says where (e.g. ``stages[2].body.args[0]``) so a client can fix its input.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class SerializeError(AutoschedError):
    """A te expression uses something the wire format cannot express."""


class ConfigError(AutoschedError):
    """A config does not fit its template (unknown stage or knob, value outside the domain)."""


class ScheduleError(AutoschedError):
    """Applying a config to a PrimFunc failed inside TVM."""


class UnknownWorkloadError(AutoschedError):
    """A zoo workload name that does not exist."""


# Service errors: the API maps each to one HTTP status (services/api), the client maps back.


class NotFoundError(AutoschedError):
    """A job, workload, worker or schedule that does not exist (HTTP 404)."""


class ConflictError(AutoschedError):
    """The request is valid but the state forbids it, e.g. cancelling a finished job (409)."""


class InvalidRequestError(AutoschedError):
    """A request that parsed but makes no sense, e.g. a target no worker serves (422)."""


class AuthenticationError(AutoschedError):
    """No token, or a token that is unknown or revoked (HTTP 401)."""


class PermissionDeniedError(AutoschedError):
    """A valid token without the scope the operation needs, or acting on what is not its
    own: another token's job or worker, a device key it was not granted (HTTP 403)."""


class QuotaExceededError(AutoschedError):
    """A token over one of its quotas: active jobs, workloads or trials per job (HTTP 429)."""


class ServiceBusyError(AutoschedError):
    """The server cannot take the request now but will soon, e.g. every template builder is
    busy (HTTP 503 with Retry-After; the client retries it)."""


class InvalidHardwareError(InvalidRequestError):
    """Hardware parameters out of range or outside their vocabulary (HTTP 422)."""


class ApiError(AutoschedError):
    """The API answered with an error status; ``status_code`` is None when it never answered.

    ``detail`` is the server's own message. ``ApiError.from_status`` picks a subclass that is
    also the matching service error above, so a caller catches ``NotFoundError`` alike from
    the service layer in-process and from the API over HTTP.
    """

    def __init__(self, status_code: int | None, detail: str) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{detail} (HTTP {status_code})" if status_code else detail)

    @staticmethod
    def from_status(status_code: int | None, detail: str) -> ApiError:
        return _API_ERRORS.get(status_code, ApiError)(status_code, detail)


class ApiNotFoundError(ApiError, NotFoundError):
    """404."""


class ApiConflictError(ApiError, ConflictError):
    """409."""


class ApiInvalidRequestError(ApiError, InvalidRequestError):
    """400 or 422 (a body FastAPI refused, or one the service found meaningless)."""


class ApiAuthenticationError(ApiError, AuthenticationError):
    """401."""


class ApiPermissionDeniedError(ApiError, PermissionDeniedError):
    """403."""


class ApiQuotaExceededError(ApiError, QuotaExceededError):
    """429."""


_API_ERRORS: dict[int | None, type[ApiError]] = {
    400: ApiInvalidRequestError,
    401: ApiAuthenticationError,
    403: ApiPermissionDeniedError,
    404: ApiNotFoundError,
    409: ApiConflictError,
    422: ApiInvalidRequestError,
    429: ApiQuotaExceededError,
}


# Control flow of the scheduler: raised while a job waits on its trials, caught by the job
# runner (never shown to a client as an error).


class JobCancelled(AutoschedError):
    """The job's ``cancel_requested`` flag was set while it ran."""


class JobInterrupted(AutoschedError):
    """The scheduler is stopping, or lost the job's lease: leave the job to be resumed."""


class SchemaError(AutoschedError):
    """The database's schema is not one this version can run on (behind with migration
    off, or at a revision it does not know): a process refuses to start."""
