"""The pooled async HTTP client to vLLM backends: forward a body, stream an answer, probe health.

The client sits behind the small `UpstreamClient` interface; the one in use is Turnout's own
HTTP/1.1 pool (`gateway.upstream.http1_pool`), chosen over aiohttp and httpx by measurement
(docs/performance.md). Transport failures become `BackendUnavailable` (502) or
`BackendTimeout` (504) here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.config import TimeoutsConfig
from gateway.errors import (
    AdapterNotReady,
    BackendTimeout,
    BackendUnavailable,
    NoHealthyBackend,
    TurnoutError,
)
from gateway.placement.loads import AdapterLoads
from gateway.upstream import http1_pool as http1
from gateway.upstream.breaker import BackendPicker, BreakerPolicy
from gateway.upstream.health import BackendHealth
from gateway.upstream.residency import Residency
from monitoring import metrics

_JSON_HEADERS = b"content-type: application/json\r\n"


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete upstream answer."""

    status: int
    content_type: str
    body: bytes


class UpstreamStream(Protocol):
    """An upstream answer whose body is still arriving."""

    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises a `TurnoutError` if the transport fails."""
        ...

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        """The body handed to `sink` as it arrives, until it ends (True) or `hold` is called
        (False; call again after `release`); raises a `TurnoutError` if the transport fails."""
        ...

    def hold(self) -> None:
        """Stop taking the body from upstream for now: `pushed` returns False."""
        ...

    def release(self) -> None:
        """Take the body from upstream again after `hold`."""
        ...

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        ...


class UpstreamClient(Protocol):
    """What the data plane needs from an HTTP client."""

    async def post(self, backend: str, path: str, body: bytes, request_id: str) -> UpstreamReply:
        """POST `body` to `backend + path` and read the whole answer."""
        ...

    def stream(
        self, backend: str, path: str, body: bytes, request_id: str
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        """POST and hold the answer open while its body arrives."""
        ...

    async def get(self, backend: str, path: str, timeout_s: float) -> UpstreamReply:
        """`GET backend + path`, whole answer within `timeout_s`."""
        ...

    async def probe(self, backend: str, path: str, timeout_s: float) -> bool:
        """Whether `GET backend + path` answers 200 within `timeout_s`."""
        ...

    async def start(self) -> None:
        """Open connection pools; called inside the server's event loop."""
        ...

    async def close(self) -> None: ...


def _transport_error(error: BaseException, backend: str) -> TurnoutError:
    if isinstance(error, TimeoutError):
        return BackendTimeout(f"The backend {backend} did not answer in time.")
    return BackendUnavailable(f"The backend {backend} is unavailable: {type(error).__name__}.")


class _Http1Stream:
    def __init__(self, response: http1.Response, backend: str, idle_timeout_s: float) -> None:
        self._response = response
        self._backend = backend
        self._idle_timeout_s = idle_timeout_s
        self.status = response.status
        self.content_type = _content_type(response)

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.chunks(self._idle_timeout_s, self._failed)

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        return await self._response.pushed(sink, self._idle_timeout_s, self._failed)

    def hold(self) -> None:
        self._response.hold()

    def release(self) -> None:
        self._response.release()

    def _failed(self, error: OSError | TimeoutError) -> TurnoutError:
        return _transport_error(error, self._backend)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


def _content_type(response: http1.Response) -> str:
    return response.headers.get(b"content-type", b"application/json").decode("latin-1")


class Http1Upstream:
    """`UpstreamClient` over Turnout's own keep-alive HTTP/1.1 pool (`upstream.http1_pool`)."""

    def __init__(self, timeouts: TimeoutsConfig) -> None:
        self._timeouts = timeouts
        self._pool = http1.ConnectionPool(connect_timeout_s=timeouts.connect_s)
        self._origins: dict[str, http1.Origin] = {}

    def _origin(self, backend: str) -> http1.Origin:
        origin = self._origins.get(backend)
        if origin is None:
            origin = self._origins[backend] = http1.Origin.parse(backend)
        return origin

    async def post(self, backend: str, path: str, body: bytes, request_id: str) -> UpstreamReply:
        headers = _JSON_HEADERS + b"x-request-id: " + request_id.encode() + b"\r\n"
        return await self._whole(backend, b"POST", path, body, headers, self._timeouts.response_s)

    async def _whole(
        self, backend: str, method: bytes, path: str, body: bytes, headers: bytes, timeout_s: float
    ) -> UpstreamReply:
        """One exchange read to its end within `timeout_s`."""
        response: http1.Response | None = None
        try:
            response = await self._pool.request(
                self._origin(backend), method, path, body, headers, timeout_s, timed_body=True
            )
            payload = await response.read()
        except (OSError, TimeoutError) as error:
            raise _transport_error(error, backend) from error
        finally:
            if response is not None:
                response.finish()
        return UpstreamReply(response.status, _content_type(response), payload)

    @asynccontextmanager
    async def stream(
        self, backend: str, path: str, body: bytes, request_id: str
    ) -> AsyncIterator[UpstreamStream]:
        headers = _JSON_HEADERS + b"x-request-id: " + request_id.encode() + b"\r\n"
        try:
            response = await self._pool.request(
                self._origin(backend), b"POST", path, body, headers, self._timeouts.response_s
            )
        except (OSError, TimeoutError) as error:
            raise _transport_error(error, backend) from error
        try:
            yield _Http1Stream(response, backend, self._timeouts.stream_idle_s)
        finally:
            # An unfinished body means the client went away or the upstream failed: the
            # connection is dropped, and a dropped connection is what makes vLLM abort.
            response.finish()

    async def get(self, backend: str, path: str, timeout_s: float) -> UpstreamReply:
        return await self._whole(backend, b"GET", path, b"", b"", timeout_s)

    async def probe(self, backend: str, path: str, timeout_s: float) -> bool:
        try:
            reply = await self.get(backend, path, timeout_s)
        except TurnoutError:
            return False
        return reply.status == 200

    async def start(self) -> None:
        """Nothing to open ahead of time: connections are made on first use."""

    async def close(self) -> None:
        self._pool.close()


class BackendPool:
    """The vLLM servers of the base model: which may take a request for which adapter.

    A backend is eligible when its circuit breaker admits calls and it holds the adapter; one
    whose adapters are unknown (unreachable at the last check) is tried only when no holder
    is left. Attempts rotate over the backends; a retry passes the ones tried to fail over.
    """

    def __init__(self, urls: Sequence[str], residency: Residency, breakers: BreakerPolicy) -> None:
        if not urls:
            raise ValueError("at least one backend is needed")
        self.urls = tuple(urls)
        self.residency = residency
        self.picker = BackendPicker(self.urls, breakers)
        self.health = BackendHealth(self.urls)
        self.placement: AdapterLoads | None = None  # set when adapters.placement is demand

    def serves(self, served_adapter: str) -> bool:
        """Whether some backend is known to hold the adapter."""
        if self.placement is not None:
            return bool(self.placement.fleet.holders(served_adapter))
        return any(self.residency.holds(backend, served_adapter) for backend in self.urls)

    def pick(self, served_adapter: str | None, tried: Collection[str] = ()) -> str:
        """The backend for the next attempt at a request for `served_adapter` (None: base)."""

        def holds(backend: str) -> bool:
            return served_adapter is None or self.residency.holds(backend, served_adapter)

        try:
            return self.picker.pick(tried, holds)
        except NoHealthyBackend as unhealthy:
            try:
                return self.picker.pick(tried, self.residency.unknown)
            except NoHealthyBackend:
                if served_adapter is None or self.serves(served_adapter) or tried:
                    raise unhealthy from None
        raise AdapterNotReady(
            f"The adapter {served_adapter} is being loaded onto the backends; retry shortly."
        )

    def record(self, backend: str, ok: bool) -> None:
        """One call's outcome for the backend's breaker (5xx and transport failures are not ok)."""
        breaker = self.picker.breakers[backend]
        if ok:
            breaker.record_success()
        else:
            breaker.record_failure()

    async def probe_all(self, client: UpstreamClient, timeout_s: float) -> dict[str, bool]:
        """Each backend's answer to vLLM's /health, probed concurrently; each answer is
        recorded in `health` as it arrives, so a backend that hangs delays no other's."""

        async def probe(url: str) -> bool:
            up = await client.probe(url, "/health", timeout_s)
            self.health.record(url, up)
            metrics.BACKEND_UP.labels(url).set(1 if up else 0)
            return up

        answers = await asyncio.gather(*(probe(url) for url in self.urls))
        return dict(zip(self.urls, answers, strict=True))

    async def watch_health(self, client: UpstreamClient, interval_s: float) -> None:
        """Probe every backend every `interval_s` (for `health` and `turnout_backend_up`)
        until cancelled: the only probes the gateway makes."""
        while True:
            await self.probe_all(client, interval_s)
            await asyncio.sleep(interval_s)
