"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools one, one write per answer.

uvicorn writes a response's head as soon as the app starts the response and its body when the
app sends it: two system calls for every whole answer. On loopback each call also delivers the
bytes to the reader, and the first of them cost the gateway more CPU than any of its own steps
(docs/performance.md). Here the writes that one step of the event loop makes are held and sent
together at the end of that step, so a head and its body leave in one call. A stream, once its
head is out, switches its connection to writing through (`write_through`) until the next
request: its events leave as they come, with no loop callback scheduled for each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.stream_guard import FLOW_EXTENSION, TRANSPORT_EXTENSION
from monitoring.metrics import WORKER_CONNECTIONS


class CoalescingTransport:
    """A transport whose writes within one event-loop step become one write to the socket."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._through = False

    def write(self, data: bytes) -> None:
        if self._through:
            if self._pending:
                self._pending.append(data)
                self._flush()
            elif not self._transport.is_closing():
                self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def write_through(self) -> None:
        """Until `coalesce`, each write goes to the socket at once (after any still held).

        For a stream's events: each comes in a loop step of its own, so holding it saves no
        call, and scheduling its flush cost a callback per event."""
        self._through = True

    def coalesce(self) -> None:
        """Hold writes until the end of the loop step again (each request starts so)."""
        self._through = False

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
    whose client stopped reading can be cut, and the connection's flow control (extension
    `turnout.flow`), so a write that cannot block is not timed (`gateway.api.stream_guard`).
    """

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._coalescing.coalesce()
        extensions: dict[str, Any] = {
            TRANSPORT_EXTENSION: self.transport,
            FLOW_EXTENSION: self.flow,
        }
        self.scope["extensions"] = extensions

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(self._coalescing)  # type: ignore[arg-type]


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
