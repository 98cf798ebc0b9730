"""An in-memory upstream: the gateway's `UpstreamClient` answering as vLLM would, from memory.

It stands where `Http1Upstream` and the vLLM servers behind it stand, so `create_app` runs
every line of the data plane in the test's own process. By default it answers every chat or
text completion at once, echoing the request's `model` (so the gateway's name rewriting runs),
streamed as SSE when the body asks for `stream`; it serves vLLM's adapter endpoints (names
only) and `/health`. A test scripts the next answers (`will_answer`): a status and body of its
own, text that breaks a contract, invalid JSON, a slow or endless stream, a transport failure,
and reads back what the gateway sent (`forwarded`, `exchanges`). Answers can also depend on
the served model: `answers[model](fields)` gives the text a model answers a request with, and
`hold(model)` makes that model's answers wait until `release(model)`; a request cancelled while
held is recorded (`cancelled`), as a backend sees the gateway give up on it.

Transport failures are what the real client raises for them (`gateway.upstream.backends`): a backend
in `down` raises `BackendUnavailable`, an answer later than `response_s` or an SSE gap longer
than `stream_idle_s` raises `BackendTimeout`, with the same messages. What that client does on
real sockets is tested against real TCP servers (tests/gateway/test_http1.py,
test_bad_input_and_faults.py), not here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson

from gateway.errors import BackendTimeout, BackendUnavailable, TurnoutError
from gateway.upstream.backends import UpstreamClient, UpstreamReply, UpstreamStream

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."
USAGE = {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}
_ADAPTER_PATHS = ("/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")

# Gives the text a served model answers with, from the request's fields.
Answerer = Callable[[dict[str, Any]], str]


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer to one inference request.

    With `body` the answer is those bytes as they are (an error, invalid JSON); otherwise it
    is a completion built like vLLM's from `content` and `finish_reason`, whole or streamed.
    """

    content: str = DEFAULT_TEXT
    finish_reason: str = "stop"
    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    # Raised instead of answering (a transport failure), or after the events of a stream.
    fail: TurnoutError | None = None
    fail_mid_stream: TurnoutError | None = None
    delay_s: float = 0.0  # before the answer starts; past `response_s` it times out
    hang: bool = False  # never answers: the client's response timeout ends it
    event_gap_s: float = 0.0  # between SSE events; past `stream_idle_s` it times out
    endless: bool = False  # streams its first event again and again until the client leaves


@dataclass(slots=True)
class Exchange:
    """What the gateway sent to the upstream, and how the exchange ended."""

    backend: str
    path: str
    body: dict[str, Any]
    request_id: str
    streamed: bool
    events_sent: int = 0
    # A stream's context was left: the gateway closed the upstream request.
    closed: bool = False
    closed_at: float | None = None


def _completion(model: str, content: str, finish_reason: str, chat: bool) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        }
    else:
        choice = {"index": 0, "text": content, "finish_reason": finish_reason}
    return {
        "id": "cmpl-in-memory",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": USAGE,
    }


def _events(model: str, content: str, finish_reason: str | None, chat: bool) -> list[bytes]:
    """vLLM's SSE events for `content`: a piece per word, the finish reason last, then DONE."""
    words = content.split(" ")
    pieces = [word + " " for word in words[:-1]] + [words[-1]]
    events = []
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason if last else None}
        if chat:
            choice["delta"] = {"content": piece}
        else:
            choice["text"] = piece
        chunk = {
            "id": "cmpl-in-memory",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1,
            "model": model,
            "choices": [choice],
        }
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


class _Stream:
    """An `UpstreamStream` over scripted events, paced and failing as the answer says."""

    def __init__(
        self, answer: Answer, events: list[bytes], exchange: Exchange, idle_s: float
    ) -> None:
        self.status = answer.status
        self.content_type = "text/event-stream" if answer.status == 200 else answer.content_type
        self._answer = answer
        self._events = events
        self._exchange = exchange
        self._idle_s = idle_s
        self._pushing: AsyncIterator[bytes] | None = None
        self._held = False

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        if self._pushing is None:
            self._pushing = aiter(self.chunks())
        async for chunk in self._pushing:
            sink(chunk)
            if self._held:
                return False
        return True

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False

    async def chunks(self) -> AsyncIterator[bytes]:
        answer = self._answer
        n = 0
        while answer.endless or n < len(self._events):
            event = self._events[0 if answer.endless else n]
            if n and answer.event_gap_s:
                if answer.event_gap_s > self._idle_s:
                    await asyncio.sleep(self._idle_s)
                    raise BackendTimeout(
                        f"The backend {self._exchange.backend} did not answer in time."
                    )
                await asyncio.sleep(answer.event_gap_s)
            self._exchange.events_sent += 1
            yield event
            n += 1
        if answer.fail_mid_stream is not None:
            raise answer.fail_mid_stream

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class InMemoryUpstream:
    """`UpstreamClient` answering from memory as a fleet of vLLM servers would; see the module
    docstring. `down` backends refuse every call; `response_s` and `stream_idle_s` are the
    client's timeouts (the config's `timeouts`); `default` answers what is not scripted, with
    `answers[model](fields)` as its content where the requested model has an answerer."""

    def __init__(
        self,
        down: Collection[str] = (),
        response_s: float = 60.0,
        stream_idle_s: float = 60.0,
        default: Answer = Answer(),
        answers: Mapping[str, Answerer] | None = None,
    ) -> None:
        self.down = set(down)
        self.default = default
        self.answers = dict(answers or {})
        self.response_s = response_s
        self.stream_idle_s = stream_idle_s
        self.exchanges: list[Exchange] = []
        self.loaded_adapters: set[str] = set()
        self.started = False
        self.closed = False
        # The models of requests cancelled while held, in the order they were cancelled.
        self.cancelled: list[str] = []
        self._script: deque[Answer] = deque()
        self._forwarded_from = 0
        self._gates: dict[str, asyncio.Event] = {}

    def will_answer(self, *answers: Answer) -> None:
        """Answer the next inference requests with `answers`, in order; `default` after."""
        self._script.extend(answers)

    def forwarded(self) -> list[dict[str, Any]]:
        """The inference bodies received since the last call, oldest first."""
        bodies = [exchange.body for exchange in self.exchanges[self._forwarded_from :]]
        self._forwarded_from = len(self.exchanges)
        return bodies

    def received(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every inference body received (for `model` only, if given), oldest first."""
        return [
            exchange.body
            for exchange in self.exchanges
            if model is None or exchange.body.get("model") == model
        ]

    def hold(self, model: str) -> None:
        """Make `model`'s answers wait until `release(model)`."""
        self._gates.setdefault(model, asyncio.Event())

    def release(self, model: str) -> None:
        """Let `model`'s held answers go, and answer its next requests at once."""
        self._gates.pop(model).set()

    # --- UpstreamClient -------------------------------------------------------------------

    async def post(self, backend: str, path: str, body: bytes, request_id: str) -> UpstreamReply:
        self._reachable(backend)
        if path in _ADAPTER_PATHS:
            return self._adapter_endpoint(path, body)
        exchange = self._record(backend, path, body, request_id, streamed=False)
        answer = self._next_answer(exchange.body)
        await self._held(exchange.body)
        await self._wait_for_head(answer, backend)
        if answer.body is not None:
            return UpstreamReply(answer.status, answer.content_type, answer.body)
        completion = _completion(
            exchange.body.get("model", "stub"),
            answer.content,
            answer.finish_reason,
            chat=path.endswith("/chat/completions"),
        )
        return UpstreamReply(answer.status, answer.content_type, orjson.dumps(completion))

    @asynccontextmanager
    async def stream(
        self, backend: str, path: str, body: bytes, request_id: str
    ) -> AsyncIterator[UpstreamStream]:
        self._reachable(backend)
        exchange = self._record(backend, path, body, request_id, streamed=True)
        answer = self._next_answer(exchange.body)
        await self._held(exchange.body)
        await self._wait_for_head(answer, backend)
        if answer.body is not None:
            events = [answer.body]
        else:
            model = exchange.body.get("model", "stub")
            chat = path.endswith("/chat/completions")
            if answer.fail_mid_stream is None:
                events = _events(model, answer.content, answer.finish_reason, chat)
            else:  # unfinished: no finish reason, no [DONE]
                events = _events(model, answer.content, None, chat)[:-1]
        try:
            yield _Stream(answer, events, exchange, self.stream_idle_s)
        finally:
            exchange.closed = True
            exchange.closed_at = time.monotonic()

    async def get(self, backend: str, path: str, timeout_s: float) -> UpstreamReply:
        self._reachable(backend)
        if path == "/v1/models":
            return self._adapter_endpoint(path, b"")
        return UpstreamReply(200 if path == "/health" else 404, "application/json", b"")

    async def probe(self, backend: str, path: str, timeout_s: float) -> bool:
        try:
            reply = await self.get(backend, path, timeout_s)
        except TurnoutError:
            return False
        return reply.status == 200

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    # --- the fleet's side -----------------------------------------------------------------

    def _reachable(self, backend: str) -> None:
        if backend in self.down:
            raise BackendUnavailable(
                f"The backend {backend} is unavailable: ConnectionRefusedError."
            )

    def _record(
        self, backend: str, path: str, body: bytes, request_id: str, streamed: bool
    ) -> Exchange:
        exchange = Exchange(backend, path, orjson.loads(body), request_id, streamed)
        self.exchanges.append(exchange)
        return exchange

    def _next_answer(self, fields: dict[str, Any]) -> Answer:
        if self._script:
            return self._script.popleft()
        answerer = self.answers.get(fields.get("model", ""))
        if answerer is None:
            return self.default
        return replace(self.default, content=answerer(fields))

    async def _held(self, fields: dict[str, Any]) -> None:
        """Wait while the requested model is held; a cancelled wait is recorded."""
        await asyncio.sleep(0)  # as a socket would, let other tasks run while the answer comes
        model = fields.get("model", "")
        gate = self._gates.get(model)
        if gate is None:
            return
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise

    async def _wait_for_head(self, answer: Answer, backend: str) -> None:
        if answer.fail is not None:
            raise answer.fail
        wait_s = self.response_s if answer.hang else answer.delay_s
        if wait_s >= self.response_s:
            await asyncio.sleep(self.response_s)
            raise BackendTimeout(f"The backend {backend} did not answer in time.")
        if wait_s:
            await asyncio.sleep(wait_s)

    def _adapter_endpoint(self, path: str, body: bytes) -> UpstreamReply:
        """vLLM's adapter loading, as far as the gateway's loader uses it: names only."""
        if path == "/v1/load_lora_adapter":
            self.loaded_adapters.add(orjson.loads(body)["lora_name"])
            return UpstreamReply(200, "application/json", b'"loaded"')
        if path == "/v1/unload_lora_adapter":
            self.loaded_adapters.discard(orjson.loads(body)["lora_name"])
            return UpstreamReply(200, "application/json", b'"unloaded"')
        cards = [{"id": "tiny", "object": "model", "parent": None}] + [
            {"id": name, "object": "model", "parent": "tiny"}
            for name in sorted(self.loaded_adapters)
        ]
        return UpstreamReply(
            200, "application/json", orjson.dumps({"object": "list", "data": cards})
        )


def as_upstream_client(upstream: InMemoryUpstream) -> UpstreamClient:
    """The in-memory upstream is an `UpstreamClient` (mypy checks this assignment)."""
    return upstream
