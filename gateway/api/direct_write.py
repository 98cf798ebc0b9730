"""A stream's events written to the client's socket from the upstream connection's callback.

Why: relayed through ASGI, every event wakes the relay's task, resumes the upstream body
generator and the proxy's rewrite generator and awaits uvicorn's `send` coroutine. A protocol
callback cannot await `send`, so on the plain path this writes what uvicorn's `send` would
write for a body message of a chunked response (`<size in hex>\\r\\n<events>\\r\\n`) to the same
transport (the connection's, extension `turnout.transport`) itself, in the callback that
received the events from upstream (docs/performance.md, "callback relay").

Only while a write cannot block: when the connection's flow control (extension `turnout.flow`)
has paused writing, the events in hand are written (at most one block past uvicorn's limit) and
the writer refuses more; the relay then goes on through `send` and `StallGuard`, which time the
writes and cut a client that stopped reading. The head and the end of the response always go
through `send`, so uvicorn's view of the response stays whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Scope

from gateway.api.stream_guard import FLOW_EXTENSION, TRANSPORT_EXTENSION, WriteFlow


class DirectEventWriter:
    """An `EventSink` that writes each block of events as one HTTP/1.1 chunk and feeds it to
    `feed` (the transcript); `on_first` is called before the first block is written."""

    __slots__ = ("_feed", "_flow", "_on_first", "_transport", "wrote")

    def __init__(
        self,
        transport: Any,
        flow: WriteFlow,
        feed: Callable[[bytes], None],
        on_first: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._flow = flow
        self._feed = feed
        self._on_first = on_first
        self.wrote = False

    @classmethod
    def for_scope(
        cls, scope: Scope, feed: Callable[[bytes], None], on_first: Callable[[], None]
    ) -> DirectEventWriter | None:
        """The writer for a response on the gateway's own HTTP/1.1 server; None for a server
        that does not give its transport and flow control, and for `HEAD` (no body sent)."""
        extensions = scope.get("extensions", {})
        transport = extensions.get(TRANSPORT_EXTENSION)
        flow = extensions.get(FLOW_EXTENSION)
        if transport is None or flow is None or scope.get("method") == "HEAD":
            return None
        return cls(transport, flow, feed, on_first)

    def __call__(self, events: bytes) -> bool:
        if not self.wrote:
            self.wrote = True
            self._on_first()
        paused = self._flow.write_paused
        self._transport.write(b"%x\r\n%s\r\n" % (len(events), events))
        self._feed(events)
        return not paused
