"""Forward one resolved inference request to a backend and give back the client's view of it.

The client named a route; vLLM knows the adapter version under its own name. Requests go up
with `model` set to vLLM's name, answers come back with it set to the route again: in one JSON
document, or in every SSE event of a stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import (
    AdapterNotReady,
    BackendTimeout,
    BackendUnavailable,
    TurnoutError,
    error_object,
)
from gateway.placement.loads import AdapterLoads, Placed
from gateway.routing.table import Target
from gateway.upstream.admission import BackendGates
from gateway.upstream.backends import BackendPool, UpstreamClient, UpstreamReply, UpstreamStream
from gateway.upstream.breaker import CircuitState, RetryBudget
from monitoring import metrics


@dataclass(frozen=True, slots=True)
class ModelNameRewrite:
    """Swaps vLLM's model name for the route's in answer bytes.

    A byte replace is exact here: inside a JSON string every quote is escaped, so the unescaped
    sequence `"model":"<name>"` can only be the document's own `model` member, and both names
    are restricted to characters that JSON never escapes.
    """

    upstream: bytes
    client: bytes

    @classmethod
    def for_target(cls, target: Target) -> ModelNameRewrite:
        return cls(
            upstream=b'"model":"' + target.served_model.encode() + b'"',
            client=b'"model":"' + target.route.encode() + b'"',
        )

    def apply(self, data: bytes) -> bytes:
        return data.replace(self.upstream, self.client)


def upstream_body(fields: dict[str, Any], target: Target) -> bytes:
    """The request body as vLLM must see it: the client's fields with vLLM's model name.

    Copied to its own size: orjson's result keeps the 4 KiB buffer it was written in (a
    100-byte body holds 4,089 bytes, tracemalloc), and a stream holds its body until it ends."""
    fields["model"] = target.served_model
    return bytes(memoryview(orjson.dumps(fields)))


def sse_error_event(error: TurnoutError) -> bytes:
    """An SSE event the OpenAI clients raise as an APIError: how a started stream fails."""
    return b"data: " + orjson.dumps(error_object(error)) + b"\n\n"


class PushedEvents(Protocol):
    """A stream's whole SSE events handed to a sink as they arrive (`RewrittenPush`)."""

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        """Events to `sink` until the stream ends (True) or `hold` is called (False; call
        again after `release`); a transport failure ends it with an error event."""
        ...

    def hold(self) -> None: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class OpenStream:
    """An upstream stream that answered 200; the caller must close `resources`.

    Its events come either from `events` or, when `pushed` is given, from that (which a relay
    prefers: no task wakes per event); one of the two is used, never both.
    """

    content_type: str
    events: AsyncIterator[bytes]
    resources: AsyncExitStack
    pushed: PushedEvents | None = None


class InferenceProxy:
    """Sends requests for resolved targets to the backends, with admission and failover.

    Each backend admits a bounded number of requests (and a bounded queue: past it, 503 at
    once); a backend that cannot be reached is recorded against its circuit breaker, and the
    request is tried on another backend while the retry budget allows. Nothing is retried
    once an answer has started, or after a timeout (the backend may still be generating).
    """

    def __init__(
        self,
        client: UpstreamClient,
        pool: BackendPool,
        gates: BackendGates,
        budget: RetryBudget,
        placement: AdapterLoads | None = None,
    ) -> None:
        self._client = client
        self._pool = pool
        self._gates = gates
        self._budget = budget
        self._placement = placement  # adapters.placement demand: versions load on first use

    async def _backend_for(
        self, target: Target, tried: set[str], reload_on: str | None = None
    ) -> tuple[str, Placed | None]:
        """The backend for the next attempt, and the version counted in flight there (if any:
        hand it back to `_done`). `reload_on`: the backend that just lost the version, where
        the retry loads it afresh (another holder's copy may be as stale)."""
        served = _served_adapter(target)
        if self._placement is None or served is None:
            return self._pool.pick(served, tried), None
        breakers = self._pool.picker.breakers
        eligible = [
            b
            for b in self._pool.urls
            if b not in tried and breakers[b].state is not CircuitState.OPEN
        ]
        if reload_on is not None and reload_on in eligible:
            eligible = [reload_on]
        if not eligible:  # every breaker open: one past its cool-down may take a probe
            eligible = [self._pool.picker.pick(tried)]  # else NoHealthyBackend, Retry-After
        placed = await self._placement.acquire(served, eligible)
        return placed.backend, placed

    def _done(self, backend: str, held: Placed | None) -> None:
        if held is not None and self._placement is not None:
            self._placement.release(backend, held.version, held.mark)

    def _reload_once(self, backend: str, held: Placed | None, status: int, reloaded: bool) -> bool:
        """vLLM answered 404 for a placed version (its own LRU dropped it): reload, retry once.
        A 404 that arrives after a reload of that copy completed (the attempt was sent before)
        forgets nothing: the retry goes to the fresh copy."""
        if status != 404 or held is None or self._placement is None or reloaded:
            return False
        self._placement.lost(backend, held.version, held.mark)
        return self._budget.try_spend()

    def _check_adapter_known(
        self, backend: str, target: Target, status: int, held: Placed | None
    ) -> None:
        """A 404 for an adapter means the backend lost it (a restart): never answer from another
        model; stop sending it there until the loader has reloaded it (with demand placement,
        forget it there, so the next request loads it instead of meeting the 404 first)."""
        if status == 404 and target.adapter is not None:
            self._pool.residency.forget(backend, target.served_model)
            if held is not None and self._placement is not None:
                self._placement.lost(backend, held.version, held.mark)
            raise AdapterNotReady(
                f"The adapter {target.adapter.ref} is being reloaded onto {backend}; retry shortly."
            )

    def _may_retry(self, error: TurnoutError, backend: str, tried: set[str]) -> bool:
        metrics.UPSTREAM_ERRORS.labels(backend, error.code).inc()
        self._pool.record(backend, ok=False)
        tried.add(backend)
        return (
            isinstance(error, BackendUnavailable)
            and len(tried) < len(self._pool.urls)
            and self._budget.try_spend()
        )

    async def complete(
        self, target: Target, path: str, fields: dict[str, Any], request_id: str
    ) -> UpstreamReply:
        body = upstream_body(fields, target)
        self._budget.record_request()
        tried: set[str] = set()
        reloaded: str | None = None
        while True:
            backend, held = await self._backend_for(target, tried, reloaded)
            try:
                async with self._gates[backend].slot():
                    reply = await self._client.post(backend, path, body, request_id)
            except (BackendUnavailable, BackendTimeout) as error:
                if self._may_retry(error, backend, tried):
                    continue
                raise
            finally:
                self._done(backend, held)
            if self._reload_once(backend, held, reply.status, reloaded is not None):
                reloaded = backend
                continue
            break
        self._pool.record(backend, ok=reply.status < 500)
        self._check_adapter_known(backend, target, reply.status, held)
        rewritten = ModelNameRewrite.for_target(target).apply(reply.body)
        return UpstreamReply(status=reply.status, content_type=reply.content_type, body=rewritten)

    async def open_stream(
        self, target: Target, path: str, fields: dict[str, Any], request_id: str
    ) -> OpenStream | UpstreamReply:
        """The open stream, or the whole answer when vLLM refused to stream (an error status)."""
        body = upstream_body(fields, target)
        self._budget.record_request()
        tried: set[str] = set()
        reloaded: str | None = None
        while True:
            backend, held = await self._backend_for(target, tried, reloaded)
            resources = AsyncExitStack()
            resources.callback(self._done, backend, held)
            try:
                # The slot is held until the stream is closed, not just until it opened.
                await resources.enter_async_context(self._gates[backend].slot())
                upstream = await resources.enter_async_context(
                    self._client.stream(backend, path, body, request_id)
                )
            except (BackendUnavailable, BackendTimeout) as error:
                await resources.aclose()
                if self._may_retry(error, backend, tried):
                    continue
                raise
            except BaseException:
                await resources.aclose()
                raise
            if upstream.status == 404 and self._reload_once(
                backend, held, 404, reloaded is not None
            ):
                await resources.aclose()
                reloaded = backend
                continue
            break
        self._pool.record(backend, ok=upstream.status < 500)
        rewrite = ModelNameRewrite.for_target(target)
        if upstream.status != 200:
            async with resources:
                answer = await upstream.read()
            self._check_adapter_known(backend, target, upstream.status, held)
            return UpstreamReply(upstream.status, upstream.content_type, rewrite.apply(answer))
        events = _rewritten_events(upstream, rewrite, backend)
        pushed = RewrittenPush(upstream, rewrite, backend)
        return OpenStream(upstream.content_type, events, resources, pushed)

    async def shadow(
        self, target: Target, path: str, fields: dict[str, Any], request_id: str
    ) -> UpstreamReply | None:
        """A shadow copy's whole answer, or None when no backend slot is free right now.

        It borrows a free slot (`AdmissionGate.lend_to_shadow`) and never waits for one; a real
        request that needs the slot cancels this call (CancelledError). No retry, and nothing
        is recorded against the backend's breaker: a shadow never changes what real requests
        get.
        """
        task = asyncio.current_task()
        assert task is not None
        body = upstream_body(fields, target)
        backend = self._pool.pick(_served_adapter(target), set())
        gate = self._gates[backend]
        token = gate.lend_to_shadow(task.cancel)
        if token is None:
            return None
        try:
            return await self._client.post(backend, path, body, request_id)
        finally:
            gate.give_back(token)


def _served_adapter(target: Target) -> str | None:
    return target.served_model if target.adapter is not None else None


class SseFraming:
    """Cuts a body that arrives in pieces into blocks of whole SSE events."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def whole(self, piece: bytes) -> bytes:
        """The whole events completed by `piece` (b"" for none); the rest waits."""
        if not self._pending and piece.endswith(b"\n\n"):  # the usual case: whole events
            return piece
        pending = self._pending + piece
        end = pending.rfind(b"\n\n")
        if end < 0:
            self._pending = pending
            return b""
        self._pending = pending[end + 2 :]
        return pending[: end + 2]

    def rest(self) -> bytes:
        """What came after the last whole event, once the body has ended."""
        rest, self._pending = self._pending, b""
        return rest


async def _rewritten_events(
    upstream: UpstreamStream, rewrite: ModelNameRewrite, backend: str
) -> AsyncIterator[bytes]:
    """Whole SSE events, model name rewritten; a transport failure ends in an error event."""
    framing = SseFraming()
    try:
        async for chunk in upstream.chunks():
            events = framing.whole(chunk)
            if events:
                yield rewrite.apply(events)
    except TurnoutError as error:
        metrics.UPSTREAM_ERRORS.labels(backend, error.code).inc()
        yield sse_error_event(error)
        return
    rest = framing.rest()
    if rest:
        yield rewrite.apply(rest)


class RewrittenPush:
    """`_rewritten_events`, pushed: whole SSE events with the model name rewritten, handed to
    a sink from the upstream connection's own callback as they are parsed."""

    __slots__ = ("_backend", "_framing", "_rewrite", "_sink", "_upstream")

    def __init__(self, upstream: UpstreamStream, rewrite: ModelNameRewrite, backend: str) -> None:
        self._upstream = upstream
        self._rewrite = rewrite
        self._backend = backend
        self._framing = SseFraming()
        self._sink: Callable[[bytes], None] = _nowhere

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        self._sink = sink
        try:
            ended = await self._upstream.pushed(self._piece)
        except TurnoutError as error:
            metrics.UPSTREAM_ERRORS.labels(self._backend, error.code).inc()
            sink(sse_error_event(error))
            return True
        finally:
            # The sink (a relay's closure) refers back to this object: kept, the two would
            # form a cycle that only the garbage collector frees, with the stream's transcript.
            self._sink = _nowhere
        if ended:
            rest = self._framing.rest()
            if rest:
                sink(self._rewrite.apply(rest))
        return ended

    def hold(self) -> None:
        self._upstream.hold()

    def release(self) -> None:
        self._upstream.release()

    def _piece(self, chunk: bytes) -> None:
        events = self._framing.whole(chunk)
        if events:
            self._sink(self._rewrite.apply(events))


def _nowhere(_: bytes) -> None:
    """The sink before the first `pushed`."""
