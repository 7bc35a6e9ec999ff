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
    """A valid token without the scope the operation needs (HTTP 403)."""
