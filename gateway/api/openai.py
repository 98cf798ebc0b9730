"""The OpenAI-compatible endpoints: parse and check the request, resolve its route, forward it."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Request
from prometheus_client import Histogram
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error_response, http_status, unexpected_error_response
from gateway.api.protocol import (
    RESERVED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    RouteCard,
    RouteContractView,
)
from gateway.api.relay import StreamRelay
from gateway.api.request_head import RequestHead, read_body
from gateway.contracts.contract import (
    Contract,
    ContractVerdict,
    SchemaRejected,
    check_tool_schemas,
    request_contract,
)
from gateway.contracts.enforcement import ContractEnforcer, buffered_stream
from gateway.contracts.request_schemas import contract_for
from gateway.errors import (
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    RequestValidationFailed,
    TurnoutError,
)
from gateway.outcomes.recorder import (
    Answer,
    FinishedRequest,
    OutcomeRecorder,
    StreamTranscript,
    answer_of,
)
from gateway.protection.auth import Caller
from gateway.protection.guard import Admission, AdmissionRequest, RequestGuard
from gateway.routing.table import PublishedTable, Target
from gateway.shadow.dispatch import ShadowDispatcher, ShadowPair
from gateway.upstream.backends import BackendPool, UpstreamReply
from gateway.upstream.proxy import InferenceProxy, OpenStream
from monitoring import metrics

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")


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


def new_request_id() -> str:
    """The gateway's own id of a request: unique, so it joins captures and feedback."""
    # Unique, not secret: the Mersenne Twister costs no system call, unlike os.urandom.
    return f"{random.getrandbits(128):032x}"


def client_request_id_of(head: RequestHead) -> str | None:
    """The client's well-formed `x-request-id`, if it sent one; echoed, never a join key."""
    given = head.request_id
    return given if given is not None and _REQUEST_ID.fullmatch(given) else None


def sticky_key_of(head: RequestHead, fields: dict[str, Any], caller: Caller | None) -> str | None:
    """Who the caller is for rollout assignment: x-turnout-key, else `user`, else the API key."""
    given = head.sticky_key
    if given:
        return given
    user = fields.get("user")
    if isinstance(user, str) and user:
        return user
    if caller is not None:
        return caller.key_id
    authorization = head.authorization
    if authorization:
        # Never the key itself: only a digest leaves this function.
        return hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return None


def _turnout_headers(target: Target, request_id: str, client_id: str | None) -> dict[str, str]:
    headers = {
        "x-turnout-route": target.route,
        "x-turnout-arm": target.arm,
        "x-request-id": client_id or request_id,
        "x-turnout-request-id": request_id,
    }
    if target.adapter is not None:
        headers["x-turnout-adapter"] = target.adapter.ref
    return headers


def _schema_headers(verdict: ContractVerdict, retries: int) -> dict[str, str]:
    return {
        "x-turnout-schema": verdict.result,
        "x-turnout-schema-source": verdict.source,
        "x-turnout-schema-retries": str(retries),
    }


class WholeAnswer:
    """A complete answer as two ASGI messages: what starlette's `Response` sends, without
    building and checking a header object on the hot path (the values here are all ASCII)."""

    __slots__ = ("_body", "_head")

    def __init__(self, body: bytes, status: int, content_type: str, headers: dict[str, str]):
        raw = [(name.encode(), value.encode()) for name, value in headers.items()]
        raw.append((b"content-type", content_type.encode()))
        raw.append((b"content-length", b"%d" % len(body)))
        self._head = {"type": "http.response.start", "status": status, "headers": raw}
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._head)
        await send({"type": "http.response.body", "body": self._body})


@dataclass(slots=True)
class RequestInFlight:
    """One request as it goes: what is known so far, for the outcome at the end."""

    path: str
    started: float
    fields: dict[str, Any] = field(default_factory=dict)
    target: Target | None = None
    request_id: str = ""
    client_request_id: str | None = None
    admission: Admission | None = None
    verdicts: list[ContractVerdict] = field(default_factory=list)
    shadow: ShadowPair | None = None

    def note_verdict(self, verdict: ContractVerdict) -> None:
        self.verdicts.append(verdict)

    def outcome(self, status: int, answer: Answer) -> FinishedRequest:
        return FinishedRequest(
            target=self.target,
            status=status,
            latency_s=time.perf_counter() - self.started,
            verdict=self.verdicts[-1] if self.verdicts else None,
            answer=answer,
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            caller=self.admission.caller if self.admission is not None else None,
            endpoint="chat" if self.path.endswith("/chat/completions") else "completions",
            fields=self.fields,
            refusal_listener=self.shadow.stable_judged if self.shadow is not None else None,
        )


class InferenceEndpoints:
    """ASGI app for `POST /v1/chat/completions` and `POST /v1/completions`.

    A bare ASGI callable rather than FastAPI routes: the framework's routing, dependency and
    middleware layers cost a third of the gateway's CPU per request (docs/performance.md).
    """

    def __init__(
        self,
        table: PublishedTable,
        proxy: InferenceProxy,
        pool: BackendPool,
        outcomes: OutcomeRecorder,
        guard: RequestGuard,
        max_body_bytes: int,
        client_stall_s: float = 10.0,
        shadows: ShadowDispatcher | None = None,
    ) -> None:
        self._client_stall_s = client_stall_s
        self._shadows = shadows
        self._table = table
        self._proxy = proxy
        self._enforcer = ContractEnforcer(proxy)
        self._pool = pool
        self._outcomes = outcomes
        self._guard = guard
        self._settling: set[asyncio.Task[None]] = set()
        self._first_token: dict[tuple[str, str, str], Histogram] = {}
        self._max_body_bytes = max_body_bytes
        self.models: dict[str, type[BaseModel]] = {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = RequestInFlight(path=scope["path"], started=time.perf_counter())
        try:
            try:
                if scope["method"] != "POST":
                    raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST.")
                response = await self._forward(RequestHead.of(scope), receive, exchange)
            except TurnoutError as error:
                response = error_response(error)
            except Exception:
                response = unexpected_error_response(scope["path"])
            await response(scope, receive, send)
        finally:
            if exchange.shadow is not None and self._shadows is not None:
                # Only now, with the answer's last byte handed over, is its copy sent (or, if
                # the request never finished, given up: `send` keeps the budget right).
                self._shadows.send(exchange.shadow)

    def _choose(self, admission: Admission, head: RequestHead, fields: dict[str, Any]) -> Target:
        """The arm for this request; a candidate no backend holds yet gets nothing."""
        arm = admission.forced_arm
        key = sticky_key_of(head, fields, admission.caller)
        target = admission.entry.pick(key, random.random, arm)
        not_loaded = target.adapter is not None and not self._pool.serves(target.served_model)
        if target.arm == "candidate" and arm is None and not_loaded:
            return admission.entry.stable
        return target

    async def _forward(
        self, head: RequestHead, receive: Receive, exchange: RequestInFlight
    ) -> ASGIApp:
        path = exchange.path
        try:
            authorization = head.authorization
            caller = self._guard.caller(authorization)  # 401 before the body is read
            raw = await read_body(receive, head.content_length, self._max_body_bytes)
            fields = parse_request(raw, self.models[path])
            exchange.fields = fields
            asked = AdmissionRequest(path, fields, authorization, head.arm)
            admission = await self._guard.admit(caller, asked, self._table.current)
            exchange.admission = admission
            target = exchange.target = self._choose(admission, head, fields)
            contract = _request_contract(fields, target)
            request_id = exchange.request_id = new_request_id()
            exchange.client_request_id = client_request_id_of(head)
            headers = _turnout_headers(target, request_id, exchange.client_request_id)
            streamed = fields.get("stream") is True
            entry = admission.entry
            if entry.rollout is not None and target.arm == "stable" and self._shadows is not None:
                exchange.shadow = self._shadows.begin(entry, path, fields, request_id, contract)
            if contract is None:
                if streamed:
                    opened = await self._proxy.open_stream(target, path, fields, request_id)
                else:
                    opened = await self._proxy.complete(target, path, fields, request_id)
            elif streamed and contract.stream_validation == "final":
                fields["response_format"] = contract.response_format()
                opened = await self._proxy.open_stream(target, path, fields, request_id)
                if isinstance(opened, OpenStream):
                    opened = self._enforcer.judge_stream(
                        target, contract, opened, exchange.note_verdict
                    )
            else:
                return await self._judged(exchange, target, contract, headers)
        except TurnoutError as error:
            self._finish(exchange, http_status(error))
            raise
        if isinstance(opened, UpstreamReply):
            self._finish(exchange, opened.status, opened.body)
            return WholeAnswer(opened.body, opened.status, opened.content_type, headers)

        def on_first_chunk() -> None:
            self._first_token_series(target).observe(time.perf_counter() - exchange.started)

        transcript = StreamTranscript()

        def on_close() -> None:
            self._finish(exchange, 200, transcript=transcript)

        def on_stall() -> None:
            metrics.STREAMS_CUT_SLOW_CLIENT.labels(
                target.route, target.version_label, target.arm
            ).inc()

        return StreamRelay(
            opened, headers, transcript, on_first_chunk, on_close, on_stall, self._client_stall_s
        )

    async def _judged(
        self, exchange: RequestInFlight, target: Target, contract: Contract, headers: dict[str, str]
    ) -> ASGIApp:
        """A whole answer judged (and retried) before anything is sent, streamed or not."""
        fields = exchange.fields
        streamed = fields.pop("stream", None) is True
        stream_options = fields.pop("stream_options", None) or {}
        judged = await self._enforcer.complete(
            target, contract, exchange.path, fields, exchange.request_id, exchange.note_verdict
        )
        self._finish(exchange, judged.reply.status, judged.reply.body)
        if judged.verdict is not None:
            headers.update(_schema_headers(judged.verdict, judged.retries))
        reply = judged.reply
        if not streamed or reply.status != 200 or judged.verdict is None:
            return WholeAnswer(reply.body, reply.status, reply.content_type, headers)
        document = orjson.loads(judged.reply.body)
        document["turnout"] = {"schema": judged.verdict.as_dict()}
        events = buffered_stream(
            document,
            exchange.path.endswith("/chat/completions"),
            stream_options.get("include_usage") is True,
        )
        return Response(events, media_type="text/event-stream", headers=headers)

    def _first_token_series(self, target: Target) -> Histogram:
        """The time-to-first-token child for the target, looked up once per target
        (prometheus_client's `labels()` takes a lock and builds tuples on every call)."""
        key = (target.route, target.version_label, target.arm)
        series = self._first_token.get(key)
        if series is None:
            series = self._first_token[key] = metrics.TIME_TO_FIRST_TOKEN.labels(*key)
        return series

    def _finish(
        self,
        exchange: RequestInFlight,
        status: int,
        body: bytes | None = None,
        transcript: StreamTranscript | None = None,
    ) -> None:
        answer = Answer()
        if body is not None and status == 200:
            answer = answer_of(body)
        elif transcript is not None:
            answer = transcript.answer()
        outcome = exchange.outcome(status, answer)
        self._outcomes.record(outcome)
        if exchange.shadow is not None:
            exchange.shadow.stable_finished(outcome)
        admission = exchange.admission
        if admission is not None and admission.charge is not None:
            # Settle the up-front token charge with what was used (nothing, on an error).
            settling = asyncio.create_task(self._guard.settle(admission, answer.total_tokens))
            self._settling.add(settling)
            settling.add_done_callback(self._settling.discard)


def _request_contract(fields: dict[str, Any], target: Target) -> Contract | None:
    """The contract the request is held to (its route's, its own, or both: 400 on a conflict);
    its schemas (and tools' schemas) checked before vLLM, whatever the route's."""
    try:
        check_tool_schemas(fields.get("tools"))
    except SchemaRejected as error:
        raise InvalidRequest(str(error), param="tools") from None
    try:
        requested = request_contract(fields.get("response_format"), target.route)
    except SchemaRejected as error:
        raise InvalidRequest(f"response_format: {error}", param="response_format") from None
    return contract_for(target.contract, requested, target.route)


def models_router(table: PublishedTable, guard: RequestGuard) -> APIRouter:
    """`GET /v1/models`: the routes the caller may call, as OpenAI model cards."""
    router = APIRouter()
    created = int(time.time())

    async def list_models(request: Request) -> ModelList:
        caller = guard.caller(request.headers.get("authorization"))
        return ModelList(
            data=[
                ModelCard(id=route, created=created)
                for route in table.current.entries
                if guard.may_list(caller, route)
            ]
        )

    async def show_model(route: str, request: Request) -> RouteCard:
        caller = guard.caller(request.headers.get("authorization"))
        guard.authorize(caller, route)
        contract = table.current.entry(route).stable.contract
        view = RouteContractView(
            json_schema=None if contract is None else dict(contract.schema),
            request_schema=None if contract is None else contract.request_schema,
        )
        return RouteCard(id=route, created=created, turnout=view)

    router.add_api_route("/v1/models", list_models, methods=["GET"], summary="List the routes")
    router.add_api_route(
        "/v1/models/{route}", show_model, methods=["GET"], summary="One route and its schema"
    )
    return router
