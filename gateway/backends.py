"""The pooled async HTTP client to vLLM backends: forward a body, stream an answer, probe health.

The client is aiohttp behind the small `UpstreamClient` interface: measured against httpx on
this machine it was about 15 times faster under concurrency (docs/performance.md). Transport
failures become `BackendUnavailable` (502) or `BackendTimeout` (504) here and nowhere else.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from gateway.config import TimeoutsConfig
from gateway.errors import BackendTimeout, BackendUnavailable, TurnoutError

_JSON_HEADERS = {"content-type": "application/json"}


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

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        ...


class UpstreamClient(Protocol):
    """What the data plane needs from an HTTP client."""

    async def post(self, url: str, body: bytes, request_id: str) -> UpstreamReply: ...

    def stream(
        self, url: str, body: bytes, request_id: str
    ) -> AbstractAsyncContextManager[UpstreamStream]: ...

    async def probe(self, url: str, timeout_s: float) -> bool: ...

    async def start(self) -> None:
        """Open connection pools; called inside the server's event loop."""
        ...

    async def close(self) -> None: ...


def _transport_error(error: BaseException, url: str) -> TurnoutError:
    if isinstance(error, TimeoutError):
        return BackendTimeout(f"The backend {url} did not answer in time.")
    return BackendUnavailable(f"The backend {url} is unavailable: {type(error).__name__}.")


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error, self._url) from error

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error, self._url) from error


class AiohttpUpstream:
    """`UpstreamClient` over one pooled aiohttp session."""

    def __init__(self, timeouts: TimeoutsConfig, max_connections: int = 1024) -> None:
        self._max_connections = max_connections
        self._session_or_none: aiohttp.ClientSession | None = None
        self._whole = aiohttp.ClientTimeout(total=timeouts.response_s, connect=timeouts.connect_s)
        self._streaming = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect_s, sock_read=timeouts.stream_idle_s
        )

    async def start(self) -> None:
        self._session_or_none = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            auto_decompress=False,
        )

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._session_or_none is None:
            raise RuntimeError("AiohttpUpstream.start() was not called")
        return self._session_or_none

    async def post(self, url: str, body: bytes, request_id: str) -> UpstreamReply:
        headers = {**_JSON_HEADERS, "x-request-id": request_id}
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._whole
            ) as response:
                payload = await response.read()
                return UpstreamReply(
                    status=response.status,
                    content_type=response.headers.get("content-type", "application/json"),
                    body=payload,
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error, url) from error

    @asynccontextmanager
    async def stream(self, url: str, body: bytes, request_id: str) -> AsyncIterator[UpstreamStream]:
        headers = {**_JSON_HEADERS, "x-request-id": request_id}
        try:
            response = await self._session.post(
                url, data=body, headers=headers, timeout=self._streaming
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error, url) from error
        try:
            yield _AiohttpStream(response, url)
        finally:
            # close(), not release(): an unfinished body means the client went away or failed,
            # and dropping the connection is what tells vLLM to abort the generation.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def probe(self, url: str, timeout_s: float) -> bool:
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session_or_none is not None:
            await self._session_or_none.close()


class BackendPool:
    """The vLLM servers of the base model; hands them out in turn."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("at least one backend is needed")
        self.urls = tuple(urls)
        self._turn = itertools.cycle(self.urls)

    def pick(self) -> str:
        return next(self._turn)

    async def probe_all(self, client: UpstreamClient, timeout_s: float) -> dict[str, bool]:
        """Each backend's answer to vLLM's /health, probed concurrently."""
        answers = await asyncio.gather(
            *(client.probe(f"{url}/health", timeout_s) for url in self.urls)
        )
        return dict(zip(self.urls, answers, strict=True))
