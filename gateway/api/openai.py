"""The OpenAI-compatible endpoints: parse and check the request, resolve its route, forward it."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.errors import error_response, unexpected_error_response
from gateway.api.protocol import (
    RESERVED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from gateway.backends import UpstreamReply
from gateway.errors import (
    BodyTooLarge,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    RequestValidationFailed,
    TurnoutError,
)
from gateway.proxy import InferenceProxy, OpenStream
from gateway.routing import PublishedTable, Target
from monitoring import metrics

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
_UNKNOWN_ROUTE = "unknown"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(raw: bytes, model: type[BaseModel]) -> dict[str, Any]:
    """The body as a dict whose known fields have been checked against `model`."""
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidJSON(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    reserved = sorted(RESERVED_FIELDS.intersection(fields))
    if reserved:
        raise InvalidRequest(f"The parameter `{reserved[0]}` is not accepted.", param=reserved[0])
    try:
        model.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestValidationFailed(f"{where}: {first['msg']}", param=where) from None
    return fields


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    if _REQUEST_ID.fullmatch(given):
        return given
    # Unique, not secret: the Mersenne Twister costs no system call, unlike os.urandom.
    return f"{random.getrandbits(128):032x}"


def _version_label(target: Target | None) -> str:
    if target is None:
        return "none"
    return target.adapter.ref if target.adapter is not None else "base"


def _record(target: Target | None, status: int, started: float) -> None:
    route = target.route if target is not None else _UNKNOWN_ROUTE
    version = _version_label(target)
    metrics.REQUESTS.labels(route, version, "stable", str(status)).inc()
    metrics.REQUEST_DURATION.labels(route, version, "stable").observe(time.perf_counter() - started)


def _turnout_headers(target: Target, request_id: str) -> dict[str, str]:
    headers = {"x-turnout-route": target.route, "x-request-id": request_id}
    if target.adapter is not None:
        headers["x-turnout-adapter"] = target.adapter.ref
    return headers


class ProxiedStreamResponse(StreamingResponse):
    """An SSE answer relayed from upstream; the upstream request is closed however it ends."""

    def __init__(
        self, stream: OpenStream, headers: dict[str, str], on_close: Callable[[], None]
    ) -> None:
        super().__init__(stream.events, media_type=stream.content_type, headers=headers)
        self._resources: AsyncExitStack = stream.resources
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._resources.aclose()
            self._on_close()


class InferenceEndpoints:
    """ASGI app for `POST /v1/chat/completions` and `POST /v1/completions`.

    A bare ASGI callable rather than FastAPI routes: the framework's routing, dependency and
    middleware layers cost a third of the gateway's CPU per request (docs/performance.md).
    """

    def __init__(self, table: PublishedTable, proxy: InferenceProxy, max_body_bytes: int) -> None:
        self._table = table
        self._proxy = proxy
        self._max_body_bytes = max_body_bytes
        self.models: dict[str, type[BaseModel]] = {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST.")
            response = await self._forward(request, scope["path"])
        except TurnoutError as error:
            response = error_response(error)
        except Exception:
            response = unexpected_error_response(scope["path"])
        await response(scope, receive, send)

    async def _forward(self, request: Request, path: str) -> Response:
        started = time.perf_counter()
        target: Target | None = None
        try:
            fields = parse_request(
                await read_body(request, self._max_body_bytes), self.models[path]
            )
            target = self._table.current.resolve(fields["model"])
            request_id = request_id_of(request)
            headers = _turnout_headers(target, request_id)
            if fields.get("stream") is True:
                opened = await self._proxy.open_stream(target, path, fields, request_id)
            else:
                opened = await self._proxy.complete(target, path, fields, request_id)
        except TurnoutError as error:
            _record(target, error.status, started)
            raise
        if isinstance(opened, UpstreamReply):
            _record(target, opened.status, started)
            return Response(
                opened.body,
                status_code=opened.status,
                media_type=opened.content_type,
                headers=headers,
            )
        resolved = target

        def on_close() -> None:
            _record(resolved, 200, started)

        return ProxiedStreamResponse(opened, headers, on_close)


def models_router(table: PublishedTable) -> APIRouter:
    """`GET /v1/models`: the routes, as OpenAI model cards."""
    router = APIRouter()
    created = int(time.time())

    async def list_models() -> ModelList:
        return ModelList(
            data=[ModelCard(id=route, created=created) for route in table.current.targets]
        )

    router.add_api_route("/v1/models", list_models, methods=["GET"], summary="List the routes")
    return router
