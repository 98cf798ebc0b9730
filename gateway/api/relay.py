"""Relays an open upstream stream to the client, event by event.

The response head goes out as soon as the stream is open; each block of whole SSE events (model
name already rewritten by the proxy) goes out as it comes; the upstream request is closed
however the relay ends. Under the gateway's own server a stream that the proxy can push
(`OpenStream.pushed`) is written to the client from the upstream connection's callback
(`ClientWire`), with no task woken per event; otherwise (a contract's verdict wraps the events,
or another server) each block is a body message sent through ASGI's `send`.

A client that leaves cancels the relay at once, which drops the upstream connection (vLLM then
aborts the generation): the gateway's own server says so through the request's
`DepartureNotice`, any other server through ASGI's `http.disconnect`, which a task of the
relay's waits for. Body writes that may block (flow control has paused
writing) go through `StallGuard`, so a client that stops reading is cut
(`gateway.api.stream_guard`).

Why not starlette's `StreamingResponse`: per stream it runs an anyio task group and a task, and
per event a generator layer and its checks. With the timers that used to wrap every event, the
relay stack cost 1.4 to 2 times its CPU per event now (docs/performance.md, "Where a stream's
time went").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

from starlette.types import Receive, Scope, Send

from gateway.api.client_wire import WIRE_EXTENSION, ClientWire
from gateway.api.departure import DEPARTURE_EXTENSION, DepartureNotice
from gateway.api.stream_guard import ClientStalled, StallGuard, cut_stream
from gateway.outcomes.recorder import StreamTranscript
from gateway.upstream.proxy import OpenStream, PushedEvents

# Every this many events the relay yields to the event loop once, so a departure is noticed
# even from a source that never has to wait (the HTTP/1.1 source waits between reads from its
# socket; other sources, in tests say, need not).
_YIELD_EVERY = 16


def sse_head(content_type: str, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The response headers as starlette's `StreamingResponse` would send them."""
    if content_type.startswith("text/") and "charset=" not in content_type.lower():
        content_type += "; charset=utf-8"
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    raw.append((b"content-type", content_type.encode("latin-1")))
    return raw


class StreamRelay:
    """An SSE answer relayed from upstream; an ASGI app for one response."""

    def __init__(
        self,
        stream: OpenStream,
        headers: dict[str, str],
        transcript: StreamTranscript,
        on_first_chunk: Callable[[], None],
        on_close: Callable[[], None],
        on_stall: Callable[[], None] = lambda: None,
        stall_s: float = 10.0,
    ) -> None:
        self._events: AsyncIterator[bytes] = stream.events
        self._pushed = stream.pushed
        self._head = {
            "type": "http.response.start",
            "status": 200,
            "headers": sse_head(stream.content_type, headers),
        }
        self._resources: AsyncExitStack = stream.resources
        self._transcript = transcript
        self._on_first_chunk = on_first_chunk
        self._on_close = on_close
        self._on_stall = on_stall
        self._stall_s = stall_s
        self._finished = False
        self._departed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        notice: DepartureNotice | None = scope.get("extensions", {}).get(DEPARTURE_EXTENSION)
        watcher: asyncio.Task[None] | None = None
        if notice is not None:
            notice.watch(lambda: self._departed_now(relay))
        else:
            watcher = asyncio.create_task(self._cancel_on_departure(receive, relay))
        try:
            await send(self._head)
            guard = StallGuard.for_scope(scope, send, self._stall_s)
            wire: ClientWire | None = scope.get("extensions", {}).get(WIRE_EXTENSION)
            if self._pushed is not None and wire is not None and wire.open():
                await self._push(self._pushed, wire, guard)
            else:
                await self._relay(send, guard)
        except ClientStalled:
            # Flow control bounds what is buffered; past the stall limit the stream is cut.
            self._on_stall()
            cut_stream(scope, self._stall_s)
        except asyncio.CancelledError:
            # The client left: the relay ends here, quietly. Any other cancellation goes on.
            if not self._departed or relay.uncancel() > 0:
                raise
        finally:
            self._finished = True
            if notice is not None:
                notice.unwatch()
            if watcher is not None:
                watcher.cancel()
            await self._resources.aclose()
            self._on_close()

    async def _relay(self, send: Send, guard: StallGuard) -> None:
        """Each block of events as a body message: straight to `send` while a write cannot
        block, through `guard` (which times it) while it can: the guard's own coroutine cost
        0.27 µs a message on this machine (docs/performance.md)."""
        events = aiter(self._events)
        feed = self._transcript.feed
        first = await anext(events, None)
        if first is not None:
            self._on_first_chunk()
            await guard({"type": "http.response.body", "body": first, "more_body": True})
            feed(first)
            unpaused = 0
            async for chunk in events:
                message = {"type": "http.response.body", "body": chunk, "more_body": True}
                if guard.may_block:
                    await guard(message)
                else:
                    await send(message)
                feed(chunk)
                unpaused += 1
                if unpaused == _YIELD_EVERY:
                    unpaused = 0
                    await asyncio.sleep(0)
        await guard({"type": "http.response.body", "body": b"", "more_body": False})

    async def _push(self, pushed: PushedEvents, wire: ClientWire, guard: StallGuard) -> None:
        """Each block of events written to the client from the upstream connection's callback
        as it is parsed (`PushedEvents`, `ClientWire`): this task wakes only when the stream
        ends, or when a write could block. Then the upstream is held (its socket no longer
        read), what was held back goes out through `guard`, timed, and the upstream is
        released."""
        feed = self._transcript.feed
        held: list[bytes] = []
        first = True

        def sink(events: bytes) -> None:
            nonlocal first
            if first:
                first = False
                self._on_first_chunk()
            if held or not wire.write(events):
                if not held:
                    pushed.hold()
                held.append(events)
            feed(events)

        while True:
            ended = await pushed.pushed(sink)
            if held:
                body = b"".join(held)
                held.clear()
                await guard({"type": "http.response.body", "body": body, "more_body": True})
            if ended:
                break
            pushed.release()
        await guard({"type": "http.response.body", "body": b"", "more_body": False})

    async def _cancel_on_departure(self, receive: Receive, relay: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # uvicorn also says `http.disconnect` once the response is complete: not a departure.
        self._departed_now(relay)

    def _departed_now(self, relay: asyncio.Task[None]) -> None:
        if not self._finished:
            self._departed = True
            relay.cancel()
