"""The upstream HTTP/1.1 pool against real servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest

from gateway.bench.stub_upstream import StubUpstreamProtocol
from gateway.upstream.http1_pool import ConnectionPool, Origin

JSON = b"content-type: application/json\r\n"
BODY = b'{"model":"m@v1","messages":[]}'


class CountingStub(StubUpstreamProtocol):
    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        CountingStub.connections += 1
        super().connection_made(transport)


async def serve(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, Origin]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Origin("http", "127.0.0.1", port)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_requests_reuse_one_keep_alive_connection() -> None:
    async def scenario() -> None:
        CountingStub.connections = 0
        server, origin = await serve(lambda: CountingStub(set()))
        pool = ConnectionPool(connect_timeout_s=2)
        for _ in range(5):
            response = await pool.request(origin, b"POST", "/v1/chat/completions", BODY, JSON)
            body = await response.read()
            response.finish()
            assert response.status == 200
            assert b'"model":"m@v1"' in body
        assert CountingStub.connections == 1
        pool.close()
        server.close()

    run(scenario)


def test_a_chunked_stream_arrives_whole_and_in_order() -> None:
    async def scenario() -> None:
        server, origin = await serve(lambda: StubUpstreamProtocol(set()))
        pool = ConnectionPool(connect_timeout_s=2)
        body = b'{"model":"m@v1","stream":true}'
        response = await pool.request(origin, b"POST", "/v1/completions", body, JSON)
        text = (await response.read()).decode()
        response.finish()
        assert response.headers[b"content-type"] == b"text/event-stream"
        assert text.count("data: ") == 10
        assert text.endswith("data: [DONE]\n\n")
        assert (
            "".join(
                line.split('"text":"')[1].split('"')[0]
                for line in text.splitlines()
                if '"text"' in line
            )
            == "The quick brown fox jumps over the lazy dog. "
        )
        pool.close()
        server.close()

    run(scenario)


class KeepAliveExpiry(CountingStub):
    """Answers, then closes the idle connection shortly after, as uvicorn does after 5 s."""

    def _respond(self, head: bytes, body: bytes) -> None:
        super()._respond(head, body)
        asyncio.get_running_loop().call_later(0.05, self._transport.close)  # type: ignore[union-attr]


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def scenario() -> None:
        CountingStub.connections = 0
        server, origin = await serve(lambda: KeepAliveExpiry(set()))
        pool = ConnectionPool(connect_timeout_s=2)
        for _ in range(2):
            response = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON)
            assert response.status == 200
            await response.read()
            response.finish()
            await asyncio.sleep(0.2)
        assert CountingStub.connections == 2
        pool.close()
        server.close()

    run(scenario)


def test_nothing_listening_is_a_connection_error() -> None:
    async def scenario() -> None:
        server, origin = await serve(lambda: StubUpstreamProtocol(set()))
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionError):
            await ConnectionPool(connect_timeout_s=2).request(origin, b"GET", "/health", b"", b"")

    run(scenario)


def test_leaving_a_stream_unfinished_closes_its_connection() -> None:
    async def scenario() -> None:
        closed = asyncio.get_running_loop().create_future()

        class EndlessStream(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(  # type: ignore[attr-defined]
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"
                )

            def connection_lost(self, exc: Exception | None) -> None:
                closed.set_result(True)

        server, origin = await serve(EndlessStream)
        pool = ConnectionPool(connect_timeout_s=2)
        response = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON)
        chunks = response.chunks()
        assert await anext(chunks) == b"data: "
        response.finish()
        assert await asyncio.wait_for(closed, 5)
        server.close()

    run(scenario)


class PacedChunks(asyncio.Protocol):
    """Answers a POST with `count` chunks `interval_s` apart, then ends (count None: one chunk,
    then silence)."""

    count: int | None = 8
    interval_s = 0.1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        asyncio.get_running_loop().create_task(self._pace())

    async def _pace(self) -> None:
        for _ in range(1 if self.count is None else self.count):
            self.transport.write(b"6\r\ndata: \r\n")
            await asyncio.sleep(self.interval_s)
        if self.count is not None:
            self.transport.write(b"0\r\n\r\n")


def test_a_stream_slower_than_its_idle_limit_in_total_but_not_between_chunks_lives() -> None:
    async def scenario() -> None:
        server, origin = await serve(PacedChunks)
        pool = ConnectionPool(connect_timeout_s=2)
        response = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON)
        # 8 chunks 0.1 s apart take 0.8 s: far past the 0.35 s limit, never that long apart.
        body = b"".join([chunk async for chunk in response.chunks(idle_timeout_s=0.35)])
        response.finish()
        assert body == b"data: " * 8
        server.close()

    run(scenario)


class OneChunkThenSilence(PacedChunks):
    count = None


@pytest.mark.parametrize("reader", ["pulled", "pushed"])
def test_a_stream_silent_past_its_idle_limit_raises_timeout(reader: str) -> None:
    async def scenario() -> None:
        server, origin = await serve(OneChunkThenSilence)
        pool = ConnectionPool(connect_timeout_s=2)
        response = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON)
        pieces: list[bytes] = []
        if reader == "pulled":
            chunks = response.chunks(idle_timeout_s=0.3)
            pieces.append(await anext(chunks))
            silence = anext(chunks)
        else:
            silence = response.pushed(pieces.append, idle_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await silence
        assert 0.25 < time.monotonic() - started < 3
        assert pieces == [b"data: "]
        response.finish()
        server.close()

    run(scenario)


class NeverAnswers(asyncio.Protocol):
    """Reads the request and says nothing back; records when its connection closed."""

    closed: ClassVar[list[float]] = []

    def connection_lost(self, exc: Exception | None) -> None:
        NeverAnswers.closed.append(time.monotonic())


def test_a_head_later_than_the_timeout_is_a_timeout_and_drops_the_connection() -> None:
    async def scenario() -> None:
        NeverAnswers.closed.clear()
        server, origin = await serve(NeverAnswers)
        pool = ConnectionPool(connect_timeout_s=2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.request(origin, b"POST", "/v1/completions", BODY, JSON, timeout_s=0.3)
        assert 0.25 < time.monotonic() - started < 3
        await asyncio.sleep(0.1)
        assert len(NeverAnswers.closed) == 1  # dropped: the server would go on generating
        server.close()

    run(scenario)


def test_a_timed_body_must_end_within_the_timeout_and_an_untimed_one_need_not() -> None:
    # 8 chunks 0.1 s apart: the head comes at once, the body ends after about 0.8 s.
    async def scenario() -> None:
        server, origin = await serve(PacedChunks)
        pool = ConnectionPool(connect_timeout_s=2)
        timed = await pool.request(
            origin, b"POST", "/v1/completions", BODY, JSON, timeout_s=0.35, timed_body=True
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await timed.read()
        assert time.monotonic() - started < 0.7
        timed.finish()
        untimed = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON, timeout_s=0.35)
        assert await untimed.read() == b"data: " * 8  # past 0.35 s: only the head was timed
        untimed.finish()
        server.close()

    run(scenario)


def test_answers_within_their_timeout_keep_the_connection_and_leave_no_timer() -> None:
    async def scenario() -> None:
        CountingStub.connections = 0
        server, origin = await serve(lambda: CountingStub(set()))
        pool = ConnectionPool(connect_timeout_s=2)
        for _ in range(3):
            response = await pool.request(
                origin, b"POST", "/v1/chat/completions", BODY, JSON, timeout_s=0.2, timed_body=True
            )
            assert b'"model":"m@v1"' in await response.read()
            response.finish()
            assert response._exchange.deadline is None  # cancelled, not left to fire
        await asyncio.sleep(0.4)  # past every request's time: nothing fires on the kept one
        response = await pool.request(origin, b"POST", "/v1/chat/completions", BODY, JSON)
        assert response.status == 200
        await response.read()
        response.finish()
        assert CountingStub.connections == 1
        pool.close()
        server.close()

    run(scenario)


def test_a_pushed_stream_reaches_the_sink_in_order_and_keeps_its_connection() -> None:
    async def scenario() -> None:
        CountingStub.connections = 0
        server, origin = await serve(lambda: CountingStub(set()))
        pool = ConnectionPool(connect_timeout_s=2)
        body = b'{"model":"m@v1","stream":true}'
        response = await pool.request(origin, b"POST", "/v1/completions", body, JSON)
        pieces: list[bytes] = []
        assert await response.pushed(pieces.append) is True
        response.finish()
        pulled = await pool.request(origin, b"POST", "/v1/completions", body, JSON)
        assert b"".join(pieces) == await pulled.read()  # the same body as read whole
        pulled.finish()
        assert b"".join(pieces).count(b"data: ") == 10
        assert CountingStub.connections == 1  # ended: the connection went back to the pool
        pool.close()
        server.close()

    run(scenario)


def test_a_held_push_reads_nothing_more_until_released() -> None:
    class FastChunks(PacedChunks):
        count = 40
        interval_s = 0.005

    async def scenario() -> None:
        server, origin = await serve(FastChunks)
        pool = ConnectionPool(connect_timeout_s=2)
        response = await pool.request(origin, b"POST", "/v1/completions", BODY, JSON)
        pieces: list[bytes] = []

        def hold_at_first(piece: bytes) -> None:
            pieces.append(piece)
            response.hold()

        assert await response.pushed(hold_at_first) is False
        held_at = len(pieces)
        await asyncio.sleep(0.5)  # the server sends all 40 meanwhile; none is read
        assert len(pieces) == held_at
        assert not response._exchange.chunks  # left in the socket, not read and buffered
        response.release()
        assert await response.pushed(pieces.append) is True
        response.finish()
        assert b"".join(pieces) == b"data: " * 40
        server.close()

    run(scenario)
