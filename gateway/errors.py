"""Turnout's error hierarchy: each error knows its OpenAI-style type, code and HTTP status."""

from __future__ import annotations


class TurnoutError(Exception):
    """Base of every error a client can see; mapped to HTTP in `gateway.api.errors` only."""

    status = 500
    error_type = "server_error"
    code = "internal_error"
    # Set on errors the client may retry later; `gateway.api.errors` sends it as Retry-After.
    retry_after_s: float | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


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
