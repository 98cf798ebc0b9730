"""Turnout's error hierarchy: each error knows its OpenAI-style type, code and HTTP status."""

from __future__ import annotations

from typing import Any


class TurnoutError(Exception):
    """Base of every error a client can see; mapped to HTTP in `gateway.api.errors` only."""

    status = 500
    error_type = "server_error"
    code = "internal_error"
    # Set on errors the client may retry later; `gateway.api.errors` sends it as Retry-After.
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, param: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or {}  # extra members of the error object


class ConfigError(TurnoutError):
    """The configuration file is missing, unreadable or invalid."""

    code = "invalid_config"


class InvalidRequest(TurnoutError):
    """The body is not JSON, not an object, or otherwise unusable."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    """The body could not be parsed as JSON."""

    code = "invalid_json"


class RequestValidationFailed(InvalidRequest):
    """A field is missing or has the wrong type."""

    status = 422
    code = "invalid_value"


class RouteNotFound(InvalidRequest):
    """The `model` names no configured route."""

    status = 404
    code = "model_not_found"


class BodyTooLarge(InvalidRequest):
    """The body is larger than `server.max_body_bytes`."""

    status = 413
    code = "request_too_large"


class NotFound(InvalidRequest):
    """No such endpoint."""

    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    """The endpoint exists but not for this method."""

    status = 405
    code = "method_not_allowed"


class UnsupportedParameter(InvalidRequest):
    """A field, message key or content part the route does not accept (the allowlist)."""

    code = "unsupported_parameter"


class ParameterOutOfBounds(InvalidRequest):
    """A value past one of the route's request bounds (`n`, `stop`, sizes, ...)."""

    code = "out_of_bounds"


class BackendUnavailable(TurnoutError):
    """No backend could be reached, or it dropped the connection."""

    status = 502
    error_type = "upstream_error"
    code = "backend_unavailable"


class BackendTimeout(TurnoutError):
    """The backend did not answer within the configured time."""

    status = 504
    error_type = "upstream_error"
    code = "backend_timeout"


class AdapterNotReady(TurnoutError):
    """The route's adapter version is not loaded on any reachable backend yet (e.g. a restart)."""

    status = 503
    error_type = "upstream_error"
    code = "adapter_not_ready"
    retry_after_s = 2.0


class AdapterLoading(TurnoutError):
    """The route's adapter version is being loaded and the wait queue or its deadline ran out."""

    status = 503
    error_type = "upstream_error"
    code = "adapter_loading"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class AdminKeyMissing(TurnoutError):
    """An admin endpoint was called without `Authorization: Bearer KEY`."""

    status = 401
    error_type = "invalid_request_error"
    code = "missing_api_key"


class AdminKeyRejected(TurnoutError):
    """The key given to an admin endpoint is not an admin key."""

    status = 403
    error_type = "invalid_request_error"
    code = "forbidden"


class RolloutConflict(TurnoutError):
    """The operation does not fit the route's rollout state (e.g. promote with no candidate)."""

    status = 409
    error_type = "invalid_request_error"
    code = "rollout_conflict"


class StateStoreUnavailable(TurnoutError):
    """The shared rollout state store could not be reached; nothing was changed."""

    status = 503
    error_type = "server_error"
    code = "state_store_unavailable"


class SchemaViolation(TurnoutError):
    """The answer broke the route's JSON Schema (after any retries); details carry the errors."""

    status = 502
    error_type = "upstream_error"
    code = "schema_violation"


class SchemaConflict(InvalidRequest):
    """The request's own `response_format` asks for a schema its route's contract cannot keep."""

    code = "schema_conflict"


class ArmOverrideForbidden(TurnoutError):
    """`x-turnout-arm` was sent without an admin key."""

    status = 403
    error_type = "invalid_request_error"
    code = "forbidden"


class Unauthorized(TurnoutError):
    """No API key, or one that matches no tenant (the message never repeats the key)."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(TurnoutError):
    """The caller's tenant is not granted this route (or this is not an admin key)."""

    status = 403
    error_type = "invalid_request_error"
    code = "permission_denied"


class RateLimited(TurnoutError):
    """The tenant spent its requests or tokens per minute; retry after `retry_after_s`."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class Overloaded(TurnoutError):
    """A backend's concurrency and wait queue are full; shed now rather than queue forever."""

    status = 503
    error_type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class NoHealthyBackend(TurnoutError):
    """Every backend's circuit breaker is open; retry after the nearest cool-down ends."""

    status = 503
    error_type = "upstream_error"
    code = "no_healthy_backend"

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class ClientTooSlow(TurnoutError):
    """A streaming client read nothing for too long: its stream is cut (with this as SSE error)."""

    status = 408
    error_type = "client_error"
    code = "client_too_slow"
