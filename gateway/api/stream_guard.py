"""Bounded relaying to a client that stops reading: wait for it a while, then cut the stream.

uvicorn already bounds what one connection buffers: before each body write it waits until the
socket transport's buffer is below its high-water mark (flow control), and the upstream side
stops reading from the backend past its own mark (`gateway.upstream.http1_pool`). A pushed
stream (`gateway.api.relay`) checks the same flow control before each write it makes itself,
and once a write could block it holds the upstream (its socket is no longer read), keeping at
most what the last read from it brought. So a client that reads nothing holds at most those
buffers, but it would hold them, its upstream request and its
admission slot for ever. `StallGuard` bounds that wait: a body write still blocked after
`stall_s` raises `ClientStalled`, and `cut_stream` then ends the response itself: a final SSE
error event (`client_too_slow`) and the chunked terminator are queued behind what the client has
not read yet, the connection is closed, and aborted if it has not drained `DRAIN_GRACE_S` later.

The server's flow control (extension `turnout.flow`, uvicorn's `FlowControl`) says whether a
write can block at all: while the client keeps up it cannot, and the write goes out with no
timer (arming and cancelling one around every event cost more than relaying it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from starlette.types import Message, Scope, Send

from gateway.errors import ClientTooSlow
from gateway.upstream.proxy import sse_error_event

TRANSPORT_EXTENSION = "turnout.transport"
FLOW_EXTENSION = "turnout.flow"
# How long a cut connection may take to drain what was queued for it before it is aborted.
DRAIN_GRACE_S = 30.0


class ClientStalled(Exception):
    """A body write to the client stayed blocked past the stall limit."""


class WriteFlow(Protocol):
    """The server's flow control for one connection: whether its writes are paused."""

    write_paused: bool


class StallGuard:
    """An ASGI `send` whose body writes may block (flow control) for `stall_s` at most.

    Without `flow` (a server other than the gateway's own) every body write is timed.
    """

    def __init__(self, send: Send, stall_s: float, flow: WriteFlow | None = None) -> None:
        self._send = send
        self._stall_s = stall_s
        self._flow = flow

    @classmethod
    def for_scope(cls, scope: Scope, send: Send, stall_s: float) -> StallGuard:
        flow: WriteFlow | None = scope.get("extensions", {}).get(FLOW_EXTENSION)
        return cls(send, stall_s, flow)

    @property
    def may_block(self) -> bool:
        """Whether a body write may block now (and is timed): the server's flow control has
        paused writing, or the server gave none. While False the caller may send directly."""
        flow = self._flow
        return flow is None or flow.write_paused

    async def __call__(self, message: Message) -> None:
        if not self.may_block or message["type"] != "http.response.body":
            await self._send(message)
            return
        try:
            async with asyncio.timeout(self._stall_s):
                await self._send(message)
        except TimeoutError:
            raise ClientStalled from None


def cut_stream(scope: Scope, stall_s: float) -> bool:
    """End a chunked response whose client stalled; False when the server gave no transport."""
    transport: Any = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
    if transport is None or transport.is_closing():
        return False
    error_event = sse_error_event(
        ClientTooSlow(f"The client read nothing for {stall_s:g} s; the stream was cut.")
    )
    transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(error_event), error_event))
    transport.close()
    asyncio.get_running_loop().call_later(DRAIN_GRACE_S, transport.abort)
    return True
