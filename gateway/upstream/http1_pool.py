"""A lean pooled HTTP/1.1 client for talking to vLLM: asyncio protocols, httptools' C parser.

Why not aiohttp or httpx: the gateway's whole job is one upstream call per request, and on this
machine aiohttp spent about 30% and httpx over 90% of the gateway's CPU on it (numbers in
docs/performance.md). This client does only what the data plane needs: keep-alive connections
per backend, Content-Length and chunked bodies, one request in flight per connection, and a
connection that is dropped (which makes vLLM abort the generation) when a caller gives up.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # bytes buffered from a stream before reading from its socket pauses
_LOW_WATER = 1 << 16


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the response was complete."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a backend listens."""

    scheme: str
    host: str
    port: int
    host_header: bytes = field(init=False, compare=False)  # `host:port`, sent every request

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_header", f"{self.host}:{self.port}".encode())

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)


@dataclass(slots=True)
class _ArrivingResponse:
    """One response as it arrives on a connection."""

    headers_done: asyncio.Future[None]
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: deque[bytes] = field(default_factory=deque)
    buffered: int = 0
    complete: bool = False
    error: BaseException | None = None
    wakeup: asyncio.Future[None] | None = None
    received_at: float = 0.0  # loop time of the last body bytes
    deadline: asyncio.TimerHandle | None = None  # fails the exchange when it fires
    sink: Callable[[bytes], None] | None = None  # takes body bytes as they are parsed (push)
    held: bool = False  # the pushing reader asked to stop for now

    def stop_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._exchange: _ArrivingResponse | None = None
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so narrow by cast.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionClosed(f"malformed response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionClosed("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._exchange is not None:
            self._exchange.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.status = self._parser.get_status_code()
            if not exchange.headers_done.done():
                exchange.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        exchange.received_at = self._loop.time()
        if exchange.sink is not None:
            exchange.sink(body)
            return
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake(exchange)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        exchange.complete = True
        if not self._parser.should_keep_alive():
            self.close()
        self._wake(exchange)

    # used by the client
    def send(self, head: bytes, body: bytes, loop: asyncio.AbstractEventLoop) -> _ArrivingResponse:
        assert self._transport is not None
        self._exchange = _ArrivingResponse(headers_done=loop.create_future())
        self._transport.writelines((head, body))
        return self._exchange

    def take(self, exchange: _ArrivingResponse) -> bytes:
        """The chunks received so far, resuming the socket when the buffer has drained."""
        data = b"".join(exchange.chunks)
        exchange.chunks.clear()
        exchange.buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def hold(self, exchange: _ArrivingResponse) -> None:
        """Stop reading from the socket until `release`, and wake the exchange's reader."""
        if exchange is self._exchange and not exchange.held:
            exchange.held = True
            if not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
            self._wake(exchange)

    def release(self, exchange: _ArrivingResponse) -> None:
        exchange.held = False
        if self._paused and exchange is self._exchange and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def reusable(self) -> bool:
        exchange = self._exchange
        return not self.closed and exchange is not None and exchange.complete

    def close(self) -> None:
        if not self.closed and self._transport is not None:
            self.closed = True
            self._transport.close()

    def _fail(self, error: BaseException) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete:
            return
        exchange.error = error
        if not exchange.headers_done.done():
            exchange.headers_done.set_exception(error)
            exchange.headers_done.exception()  # retrieved here; raised again by the reader
        self._wake(exchange)

    def fail_idle(self, exchange: _ArrivingResponse, idle_timeout_s: float) -> None:
        """Fail the exchange with `TimeoutError` for a body silent for `idle_timeout_s`."""
        if exchange is self._exchange:
            self._fail(TimeoutError(f"no body bytes for {idle_timeout_s:g} s"))

    def fail_late(self, exchange: _ArrivingResponse, timeout_s: float) -> None:
        """Fail the exchange with `TimeoutError`: its time (`timeout_s`) is up."""
        exchange.deadline = None
        if exchange is self._exchange:
            self._fail(TimeoutError(f"no complete response within {timeout_s:g} s"))

    @staticmethod
    def _wake(exchange: _ArrivingResponse) -> None:
        if exchange.wakeup is not None and not exchange.wakeup.done():
            exchange.wakeup.set_result(None)


class Response:
    """A response whose head has arrived; read its body once, whole or in chunks."""

    def __init__(
        self, connection: _Connection, exchange: _ArrivingResponse, pool: ConnectionPool
    ) -> None:
        self._connection = connection
        self._exchange = exchange
        self._pool = pool
        self._finished = False
        self.status = exchange.status
        self.headers = exchange.headers

    async def chunks(
        self,
        idle_timeout_s: float | None = None,
        failure: Callable[[OSError | TimeoutError], Exception] | None = None,
    ) -> AsyncIterator[bytes]:
        """The body as it arrives; `TimeoutError` when none arrives for `idle_timeout_s`,
        `ConnectionClosed` when the connection fails; `failure`, if given, makes the error
        raised of either (raised from it), so a caller need not wrap this in a generator of
        its own to translate them (one layer less per chunk of a stream).

        The idle limit is kept by one timer per response that is moved on only when it fires
        (`_IdleWatch`), not by a timer per chunk: a stream's events each cost a wait, and
        arming and cancelling a timer around every wait cost more than relaying the event.
        """
        exchange = self._exchange
        loop = asyncio.get_running_loop()
        watch = None if idle_timeout_s is None else _IdleWatch(self, idle_timeout_s, loop)
        try:
            while True:
                if exchange.chunks:
                    yield self._connection.take(exchange)
                    continue
                if exchange.complete:
                    return
                await _next_arrival(exchange, watch, loop, failure)
        finally:
            if watch is not None:
                watch.stop()

    async def pushed(
        self,
        sink: Callable[[bytes], None],
        idle_timeout_s: float | None = None,
        failure: Callable[[OSError | TimeoutError], Exception] | None = None,
    ) -> bool:
        """Hand the body to `sink` as it is parsed, inside the connection's own callback, until
        it ends (True) or until `hold` is called (False: call `pushed` again after `release`).
        Errors as `chunks` raises them.

        No task wakes per piece of body: a stream's relay is woken only when the body ends,
        fails or is held. Woken per piece (`chunks`), the future, the task's step and the
        generators it resumes, with ASGI's `send` after them, cost about a fifth of a relayed
        event's CPU (docs/performance.md, "Pushed, not pulled").
        """
        exchange = self._exchange
        loop = asyncio.get_running_loop()
        watch = None if idle_timeout_s is None else _IdleWatch(self, idle_timeout_s, loop)
        try:
            if exchange.chunks:
                sink(self._connection.take(exchange))
            exchange.sink = sink
            while True:
                if exchange.held:
                    return False
                if exchange.complete:
                    return True
                await _next_arrival(exchange, watch, loop, failure)
        finally:
            exchange.sink = None
            if watch is not None:
                watch.stop()

    def hold(self) -> None:
        """Stop reading the body from the socket; `pushed` returns False."""
        self._connection.hold(self._exchange)

    def release(self) -> None:
        """Read from the socket again after `hold`."""
        self._connection.release(self._exchange)

    async def read(self) -> bytes:
        exchange = self._exchange
        if exchange.complete:  # the usual short answer: its body came with its head
            return self._connection.take(exchange)
        return b"".join([chunk async for chunk in self.chunks()])

    def finish(self) -> None:
        """Give the connection back when the body was read to the end, else drop it."""
        if self._finished:
            return
        self._finished = True
        self._exchange.stop_deadline()
        if self._connection.reusable():
            self._pool.release(self._connection)
        else:
            self._connection.close()


async def _next_arrival(
    exchange: _ArrivingResponse,
    watch: _IdleWatch | None,
    loop: asyncio.AbstractEventLoop,
    failure: Callable[[OSError | TimeoutError], Exception] | None,
) -> None:
    """Raise the exchange's error if it failed (as `failure` makes it, if given), else wait
    until something arrives for it (timed by `watch`, if given)."""
    if exchange.error is not None:
        error = _reading_error(exchange.error)
        if failure is None:
            raise error
        raise failure(error) from error
    if watch is not None:
        watch.waiting(loop.time())
    exchange.wakeup = loop.create_future()
    await exchange.wakeup
    exchange.wakeup = None


def _reading_error(error: BaseException) -> OSError | TimeoutError:
    """What a reader of the body raises for the exchange's error."""
    if isinstance(error, TimeoutError):
        return error
    closed = ConnectionClosed(str(error))
    closed.__cause__ = error
    return closed


class _IdleWatch:
    """Fails a response's exchange once its reader has waited `idle_s` with no body bytes.

    One timer, set when the reader waits and none is set; when it fires while the reader
    waits and bytes came meanwhile, it is set again for `idle_s` after the later of the last
    bytes and the start of the current wait (a reader that is busy elsewhere is not timed).
    """

    __slots__ = ("_idle_s", "_loop", "_response", "_timer", "_waiting_since")

    def __init__(self, response: Response, idle_s: float, loop: asyncio.AbstractEventLoop):
        self._response = response
        self._idle_s = idle_s
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    def waiting(self, now: float) -> None:
        self._waiting_since = now
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._idle_s, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        exchange = self._response._exchange
        if exchange.complete or exchange.error is not None:
            return
        if exchange.wakeup is None:
            return  # the reader is busy, not waiting: set again at its next wait
        deadline = max(exchange.received_at, self._waiting_since) + self._idle_s
        if self._loop.time() >= deadline:
            self._response._connection.fail_idle(exchange, self._idle_s)
            return
        self._timer = self._loop.call_at(deadline, self._check)


class ConnectionPool:
    """Idle keep-alive connections per origin, opened on demand."""

    def __init__(self, connect_timeout_s: float) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl = ssl.create_default_context()

    async def request(
        self,
        origin: Origin,
        method: bytes,
        path: str,
        body: bytes,
        headers: bytes,
        timeout_s: float | None = None,
        timed_body: bool = False,
    ) -> Response:
        """Send a request and wait for the response's head.

        `timeout_s`: `TimeoutError` unless the head arrives within it (opening a connection
        included) and, with `timed_body`, the whole body too (its reader meets the error, and
        the connection is dropped). One timer per exchange, not `asyncio.timeout`, whose object,
        task lookup, timer and exit took 7 - 8% of the event loop's samples for a whole answer
        (docs/performance.md, "The request path, cut").

        A reused connection that the server had already closed (keep-alive expiry) is retried
        once on a fresh one: no byte of the response had arrived, so the server never saw it.
        """
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n" % (
            method, path.encode(), origin.host_header, len(body), headers,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        timing = (deadline, timeout_s, timed_body)
        connection = self._idle_connection(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, head, body, loop, *timing)
            except ConnectionError:
                pass
        connection = await self._connect(origin, loop, deadline)
        return await self._exchange(connection, head, body, loop, *timing)

    def release(self, connection: _Connection) -> None:
        self._idle.setdefault(connection.origin, deque()).append(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: bytes,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
        timeout_s: float | None,
        timed_body: bool,
    ) -> Response:
        """Send on `connection` and wait for the head; until `deadline` (loop time), the
        exchange fails with `TimeoutError` naming `timeout_s`."""
        exchange = connection.send(head, body, loop)
        if deadline is not None and timeout_s is not None:
            exchange.deadline = loop.call_at(deadline, connection.fail_late, exchange, timeout_s)
        try:
            await exchange.headers_done
        except BaseException:
            exchange.stop_deadline()
            connection.close()
            raise
        if not timed_body:
            exchange.stop_deadline()
        return Response(connection, exchange, self)

    async def _connect(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> _Connection:
        timeout_s = self._connect_timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, max(0.0, deadline - loop.time()))
        async with asyncio.timeout(timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(origin),
                origin.host,
                origin.port,
                ssl=self._ssl if origin.scheme == "https" else None,
            )
        return connection
