"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools one, one write per answer.

uvicorn writes a response's head as soon as the app starts the response and its body when the
app sends it: two system calls for every whole answer. On loopback each call also delivers the
bytes to the reader, and the first of them cost the gateway more CPU than any of its own steps
(docs/performance.md). Here the writes that one step of the event loop makes are held and sent
together at the end of that step, so a head and its body leave in one call; a stream's events
still leave as they come, at most one loop step later (a pushed stream's at once, while the
socket takes them: `write_now`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.client_wire import WIRE_EXTENSION, ClientWire
from gateway.api.departure import DEPARTURE_EXTENSION, DepartureNotice
from gateway.api.stream_guard import FLOW_EXTENSION, TRANSPORT_EXTENSION
from monitoring.metrics import WORKER_CONNECTIONS


class CoalescingTransport:
    """A transport whose writes within one event-loop step become one write to the socket."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def write_now(self, data: bytes) -> None:
        """Write at once while the socket takes everything (a stream's event written from the
        upstream connection's callback: no call queued to flush it); else after what this
        step holds, joined with it, as `write` does: a client that lags then queues fewer,
        larger writes (each write queued on its own cost a stream 7 to 10 KiB more memory
        at 1,024 streams; docs/performance.md, "Pushed, not pulled")."""
        if self._pending or self._transport.get_write_buffer_size():
            self.write(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Reading, flow control, extra info and the rest are the socket transport's own.
        return getattr(self._transport, name)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`.

    Each request's scope carries the transport (extension `turnout.transport`), so a stream
    whose client stopped reading can be cut, the connection's flow control (extension
    `turnout.flow`), so a write that cannot block is not timed (`gateway.api.stream_guard`),
    a `DepartureNotice` (extension `turnout.departure`), told when the connection is lost
    before the response completed (`gateway.api.departure`), and, once its headers are read, a
    `ClientWire` (extension `turnout.wire`) that writes a stream's body chunks straight to the
    connection (`gateway.api.client_wire`).
    """

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {
            TRANSPORT_EXTENSION: self.transport,
            FLOW_EXTENSION: self.flow,
            DEPARTURE_EXTENSION: DepartureNotice(),
        }
        self.scope["extensions"] = extensions

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # None after an upgrade
            extensions: dict[str, Any] = self.scope["extensions"]  # set in on_message_begin
            extensions[WIRE_EXTENSION] = ClientWire(cycle)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        # uvicorn marks the cycle disconnected only when its response had not completed.
        if cycle is not None and cycle.disconnected:
            extensions: dict[str, Any] = cycle.scope.get("extensions", {})
            notice: DepartureNotice | None = extensions.get(DEPARTURE_EXTENSION)
            if notice is not None:
                notice.departed()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        super().connection_made(CoalescingTransport(transport, loop))  # type: ignore[arg-type]


def counting_protocol(worker: int) -> type[CoalescingHttpToolsProtocol]:
    """The protocol for the public listener of worker `worker`: it also counts the connections
    it accepts (`turnout_worker_connections_total`), which shows how the kernel spreads them
    over the workers."""
    accepted = WORKER_CONNECTIONS.labels(worker=str(worker))

    class CountingProtocol(CoalescingHttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            accepted.inc()
            super().connection_made(transport)

    return CountingProtocol
