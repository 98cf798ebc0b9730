"""The serving transport: writes of one event-loop step leave together, in order, and close
still delivers what was written. Real sockets on loopback, uvloop as in production."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from gateway.api.stream_guard import TRANSPORT_EXTENSION
from gateway.serving.embedded_vllm import free_port
from gateway.serving.server import _server
from gateway.serving.transport import CoalescingTransport


class _Replier(asyncio.Protocol):
    """Answers any data with `head` and `body` in one step, peeking at the peer in between."""

    def __init__(self, peer: socket.socket, seen_between: list[bytes], then: str) -> None:
        self._peer = peer
        self._seen_between = seen_between
        self._then = then
        self._transport: CoalescingTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._transport = CoalescingTransport(transport, loop)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        try:
            self._seen_between.append(self._peer.recv(1024))
        except BlockingIOError:
            self._seen_between.append(b"")
        self._transport.write(b"body")
        if self._then == "close":
            self._transport.close()
        elif self._then == "abort":
            self._transport.abort()


def _exchange(then: str) -> tuple[list[bytes], bytes]:
    """What the peer could read between the two writes, and all it read in the end."""
    seen_between: list[bytes] = []
    client, server_side = socket.socketpair()
    client.setblocking(False)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(
            lambda: _Replier(client, seen_between, then), server_side
        )
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\n\r\n")
        received = b""
        while len(received) < 42:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(client, 1024), 1)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received

    try:
        received = _run(scenario)
    finally:
        client.close()
    return seen_between, received


def _run(scenario: Callable[[], Awaitable[bytes]]) -> bytes:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(scenario(), 10))


def test_a_head_and_its_body_reach_the_peer_together_after_the_step() -> None:
    seen_between, received = _exchange("keep")
    assert seen_between == [b""]  # nothing had left after the head alone
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"


def test_close_sends_what_was_written_first() -> None:
    _, received = _exchange("close")
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"


def test_abort_drops_what_was_not_sent() -> None:
    _, received = _exchange("abort")
    assert received == b""


def test_uvicorn_serves_through_the_coalescing_protocol_with_the_transport_in_scope() -> None:
    """The subclass leans on uvicorn's httptools internals (pyproject pins the tested range):
    run it through `uvicorn.Server` as the gateway does and check both of its hooks took."""
    seen: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["extensions"].get(TRANSPORT_EXTENSION))
        length = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": b"hello"})

    async def scenario() -> bytes:
        port = free_port()
        server = _server(app, "127.0.0.1", port, lifespan="off")
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            server.should_exit = True
            await serving

    answer = _run(scenario)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nhello")
    assert len(seen) == 1
    assert isinstance(seen[0], CoalescingTransport)
