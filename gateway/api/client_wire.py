"""Body chunks of a started chunked response written straight to the client's connection.

A stream's events come from the upstream connection's own callback (`PushedEvents`); sending
each through ASGI's `send` would need a coroutine, and a task to run it, per event. The
gateway's HTTP protocol gives each request a `ClientWire` (scope extension `turnout.wire`) over
uvicorn's cycle for it, which frames a body chunk as uvicorn's `send` does and writes it at
once: while the response is a started chunked one, its client is connected and keeps up. A
write that could block (the server's flow control has paused writing) is refused, and the
caller sends through `send`, which waits for the client and is timed (`gateway.api.stream_guard`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

WIRE_EXTENSION = "turnout.wire"


class _Flow(Protocol):
    write_paused: bool


class _Cycle(Protocol):
    """What this reads of uvicorn's `RequestResponseCycle` for one request."""

    transport: Any
    flow: _Flow
    disconnected: bool
    response_started: bool
    response_complete: bool
    chunked_encoding: bool | None
    scope: Any


class ClientWire:
    """One request's connection to its client, for the body of its chunked response."""

    __slots__ = ("_cycle", "_write")

    def __init__(self, cycle: _Cycle) -> None:
        # Weakly: the cycle holds the scope that holds this wire, and a cycle of references
        # would leave each request's objects to the garbage collector.
        self._cycle: Callable[[], _Cycle | None] = weakref.ref(cycle)
        # The gateway's transport can write at once what need not wait for the loop's step.
        transport = cycle.transport
        self._write: Any = getattr(transport, "write_now", transport.write)

    def open(self) -> bool:
        """Whether body chunks may be written here: the response has started, chunked, and
        is not complete (a HEAD request's or a sized response's body goes through `send`)."""
        cycle = self._cycle()
        return (
            cycle is not None
            and cycle.response_started
            and cycle.chunked_encoding is True
            and not cycle.response_complete
            and cycle.scope.get("method") != "HEAD"
        )

    def write(self, body: bytes) -> bool:
        """Write one non-empty body chunk unless a write could block now (False: send it
        through ASGI's `send` instead). A departed client's chunk is dropped (True)."""
        cycle = self._cycle()
        if cycle is None or cycle.disconnected:
            return True
        if cycle.flow.write_paused:
            return False
        self._write(b"%x\r\n%s\r\n" % (len(body), body))
        return True
