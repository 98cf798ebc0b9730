"""Turnout's error hierarchy, free of any transport: each error names what kind of failure it is.

Every package may raise these (adapters/, training/ and monitoring/ included), because nothing
here knows about HTTP. An error carries a stable `code`, a message for the caller, the `param` it
is about and a `Failure`: the kind of failure, which the HTTP edge (`gateway.api.errors`, the one
place) turns into a status code. `error_object` is the OpenAI-shaped error object both the JSON
body of a failed request and the error event of a failed stream carry.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Failure(Enum):
    """What went wrong, as a caller would act on it; value: (name, OpenAI error type)."""

    INVALID = ("invalid", "invalid_request_error")  # the request cannot be served as sent
    INVALID_VALUE = ("invalid_value", "invalid_request_error")  # a field has a wrong value
    NOT_FOUND = ("not_found", "invalid_request_error")
    METHOD_NOT_ALLOWED = ("method_not_allowed", "invalid_request_error")
    TOO_LARGE = ("too_large", "invalid_request_error")
    CONFLICT = ("conflict", "invalid_request_error")  # does not fit the current state
    UNAUTHENTICATED = ("unauthenticated", "invalid_request_error")
    FORBIDDEN = ("forbidden", "invalid_request_error")
    RATE_LIMITED = ("rate_limited", "rate_limit_error")
    CLIENT_TOO_SLOW = ("client_too_slow", "client_error")
    UNAVAILABLE = ("unavailable", "server_error")  # the gateway or a store it needs, for now
    UPSTREAM_FAILED = ("upstream_failed", "upstream_error")  # a backend failed or answered badly
    UPSTREAM_TIMEOUT = ("upstream_timeout", "upstream_error")
    UPSTREAM_UNAVAILABLE = ("upstream_unavailable", "upstream_error")  # no backend can, for now
    INTERNAL = ("internal", "server_error")

    @property
    def openai_type(self) -> str:
        return self.value[1]


class TurnoutError(Exception):
    """Base of every error a client can see; its `failure` is mapped to HTTP at the edge only."""

    failure = Failure.INTERNAL
    code = "internal_error"
    # Set on errors the client may retry later; the HTTP edge sends it as Retry-After.
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, param: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or {}  # extra members of the error object


def error_object(error: TurnoutError) -> dict[str, Any]:
    """The error as OpenAI's APIs shape it: `{"error": {message, type, code, param, ...}}`."""
    return {
        "error": {
            "message": error.message,
            "type": error.failure.openai_type,
            "code": error.code,
            "param": error.param,
            **error.details,
        }
    }


class ConfigError(TurnoutError):
    """The configuration file is missing, unreadable or invalid."""

    code = "invalid_config"


class InvalidRequest(TurnoutError):
    """The body is not JSON, not an object, or otherwise unusable."""

    failure = Failure.INVALID
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    """The body could not be parsed as JSON."""

    code = "invalid_json"


class RequestValidationFailed(InvalidRequest):
    """A field is missing or has the wrong type."""

    failure = Failure.INVALID_VALUE
    code = "invalid_value"


class RouteNotFound(InvalidRequest):
    """The `model` names no configured route."""

    failure = Failure.NOT_FOUND
    code = "model_not_found"


class BodyTooLarge(InvalidRequest):
    """The body is larger than `server.max_body_bytes`."""

    failure = Failure.TOO_LARGE
    code = "request_too_large"


class NotFound(InvalidRequest):
    """No such endpoint."""

    failure = Failure.NOT_FOUND
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    """The endpoint exists but not for this method."""

    failure = Failure.METHOD_NOT_ALLOWED
    code = "method_not_allowed"


class UnsupportedParameter(InvalidRequest):
    """A field, message key or content part the route does not accept (the allowlist)."""

    code = "unsupported_parameter"


class ParameterOutOfBounds(InvalidRequest):
    """A value past one of the route's request bounds (`n`, `stop`, sizes, ...)."""

    code = "out_of_bounds"


class BackendUnavailable(TurnoutError):
    """No backend could be reached, or it dropped the connection."""

    failure = Failure.UPSTREAM_FAILED
    code = "backend_unavailable"


class BackendTimeout(TurnoutError):
    """The backend did not answer within the configured time."""

    failure = Failure.UPSTREAM_TIMEOUT
    code = "backend_timeout"


class AdapterNotReady(TurnoutError):
    """The route's adapter version is not loaded on any reachable backend yet (e.g. a restart)."""

    failure = Failure.UPSTREAM_UNAVAILABLE
    code = "adapter_not_ready"
    retry_after_s = 2.0


class AdapterLoading(TurnoutError):
    """The route's adapter version is being loaded and the wait queue or its deadline ran out."""

    failure = Failure.UPSTREAM_UNAVAILABLE
    code = "adapter_loading"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class AdminKeyMissing(TurnoutError):
    """An admin endpoint was called without `Authorization: Bearer KEY`."""

    failure = Failure.UNAUTHENTICATED
    code = "missing_api_key"


class AdminKeyRejected(TurnoutError):
    """The key given to an admin endpoint is not an admin key."""

    failure = Failure.FORBIDDEN
    code = "forbidden"


class RolloutConflict(TurnoutError):
    """The operation does not fit the route's rollout state (e.g. promote with no candidate)."""

    failure = Failure.CONFLICT
    code = "rollout_conflict"


class StateStoreUnavailable(TurnoutError):
    """The shared rollout state store could not be reached; nothing was changed."""

    failure = Failure.UNAVAILABLE
    code = "state_store_unavailable"


class SchemaViolation(TurnoutError):
    """The answer broke the route's JSON Schema (after any retries); details carry the errors."""

    failure = Failure.UPSTREAM_FAILED
    code = "schema_violation"


class SchemaConflict(InvalidRequest):
    """The request's own `response_format` asks for a schema its route's contract cannot keep."""

    code = "schema_conflict"


class ArmOverrideForbidden(TurnoutError):
    """`x-turnout-arm` was sent without an admin key."""

    failure = Failure.FORBIDDEN
    code = "forbidden"


class Unauthorized(TurnoutError):
    """No API key, or one that matches no tenant (the message never repeats the key)."""

    failure = Failure.UNAUTHENTICATED
    code = "invalid_api_key"


class Forbidden(TurnoutError):
    """The caller's tenant is not granted this route (or this is not an admin key)."""

    failure = Failure.FORBIDDEN
    code = "permission_denied"


class RateLimited(TurnoutError):
    """The tenant spent its requests or tokens per minute; retry after `retry_after_s`."""

    failure = Failure.RATE_LIMITED
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class Overloaded(TurnoutError):
    """A backend's concurrency and wait queue are full; shed now rather than queue forever."""

    failure = Failure.UNAVAILABLE
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class NoHealthyBackend(TurnoutError):
    """Every backend's circuit breaker is open; retry after the nearest cool-down ends."""

    failure = Failure.UPSTREAM_UNAVAILABLE
    code = "no_healthy_backend"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class ClientTooSlow(TurnoutError):
    """A streaming client read nothing for too long: its stream is cut (with this as SSE error)."""

    failure = Failure.CLIENT_TOO_SLOW
    code = "client_too_slow"
