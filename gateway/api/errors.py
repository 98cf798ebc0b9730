"""The one place where errors become HTTP: each kind of failure's status, OpenAI-style bodies."""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import (
    Failure,
    MethodNotAllowed,
    NotFound,
    RequestValidationFailed,
    TurnoutError,
    error_object,
)

log = logging.getLogger("turnout.errors")


HTTP_STATUS: dict[Failure, int] = {
    Failure.INVALID: 400,
    Failure.INVALID_VALUE: 422,
    Failure.NOT_FOUND: 404,
    Failure.METHOD_NOT_ALLOWED: 405,
    Failure.TOO_LARGE: 413,
    Failure.CONFLICT: 409,
    Failure.UNAUTHENTICATED: 401,
    Failure.FORBIDDEN: 403,
    Failure.RATE_LIMITED: 429,
    Failure.CLIENT_TOO_SLOW: 408,
    Failure.UNAVAILABLE: 503,
    Failure.UPSTREAM_FAILED: 502,
    Failure.UPSTREAM_TIMEOUT: 504,
    Failure.UPSTREAM_UNAVAILABLE: 503,
    Failure.INTERNAL: 500,
}


def http_status(error: TurnoutError) -> int:
    return HTTP_STATUS[error.failure]


def error_body(error: TurnoutError) -> bytes:
    return orjson.dumps(error_object(error))


def retry_after_header(retry_after_s: float) -> str:
    """Retry-After in whole seconds (HTTP allows no fractions), at least 1."""
    return str(max(1, math.ceil(retry_after_s)))


def error_response(
    error: TurnoutError, headers: dict[str, str] | None = None, *, status: int | None = None
) -> Response:
    """The error's JSON body, with its failure's status (or `status`, for Starlette's own)."""
    if error.retry_after_s is not None:
        headers = {**(headers or {}), "retry-after": retry_after_header(error.retry_after_s)}
    return Response(
        error_body(error),
        status_code=status or http_status(error),
        media_type="application/json",
        headers=headers,
    )


async def _turnout_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, TurnoutError)
    return error_response(error)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return error_response(MethodNotAllowed(f"{request.method} is not allowed here."))
    if error.status_code == 404:
        return error_response(NotFound(f"No endpoint {request.scope['path']}."))
    return error_response(TurnoutError(str(error.detail)), status=error.status_code)


async def _validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own body validation (feedback, admin), in OpenAI's shape."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(RequestValidationFailed(message, param=where or None))


def unexpected_error_response(path: str) -> Response:
    """A 500 in OpenAI's shape for a bug; call it from an `except` block (it logs the trace)."""
    log.exception("unhandled error on %s", path)
    return error_response(TurnoutError("The gateway failed to handle this request."))


async def _unexpected_error(request: Request, error: Exception) -> Response:
    return unexpected_error_response(request.scope["path"])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TurnoutError, _turnout_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
