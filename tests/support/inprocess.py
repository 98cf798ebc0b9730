"""The gateway built in the test's own process: `create_app` over an in-memory upstream, its
lifespan run, driven through `httpx.ASGITransport` (as starlette's and httpx's suites do).

`in_process_gateway` writes the config to a file and loads it as `turnout serve` would
(`load_config`), builds the apps with `create_app(config, client=upstream)`, and runs their
event loop on a thread of its own (an anyio blocking portal, as starlette's `TestClient`
does), so tests stay synchronous: `gateway.client` is an `httpx.Client` and `gateway.openai()`
the official client, both over an `httpx.AsyncClient`-style ASGI transport into the app; many
threads may call at once. No socket is opened anywhere.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.types import ASGIApp, Message

from gateway.config import load_config
from gateway.serving.app import GatewayApps, create_app
from tests.support.upstream import InMemoryUpstream

ORIGIN = "http://gateway.test"


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan: startup on enter (raising if it failed), shutdown on exit."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def run() -> None:
        await app(scope, to_app.get, from_app.put)

    task = asyncio.create_task(run())
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        await task
        raise RuntimeError(f"the gateway did not start: {started.get('message')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class _Body(httpx.SyncByteStream):
    # A stream (not `content=`): httpx times `elapsed` from the moment it is read and closed.
    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self._body


class PortalTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app through `httpx.ASGITransport`, on the
    portal's event loop; the request body keeps its chunks (a body without Content-Length
    arrives as several `http.request` messages)."""

    def __init__(self, portal: BlockingPortal, app: ASGIApp) -> None:
        self._portal = portal
        self._asgi = httpx.ASGITransport(app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        chunks = list(request.stream)
        inner = httpx.Request(
            request.method, request.url, headers=request.headers, stream=_Chunks(chunks)
        )

        async def exchange() -> tuple[int, httpx.Headers, bytes]:
            response = await self._asgi.handle_async_request(inner)
            return response.status_code, response.headers, await response.aread()

        status, headers, body = self._portal.call(exchange)
        return httpx.Response(status, headers=headers, stream=_Body(body))


@dataclass(frozen=True, slots=True)
class Departure:
    """A streamed answer the client left after its first event."""

    status: int
    first_event: bytes
    left_at: float  # time.monotonic() when the client left
    finished_at: float  # when the gateway's handler returned


@dataclass
class InProcessGateway:
    """The in-process gateway, its in-memory upstream, and clients into it."""

    apps: GatewayApps
    upstream: InMemoryUpstream
    portal: BlockingPortal
    config_path: Path
    client: httpx.Client
    admin: httpx.Client | None  # the admin API when it has a listener of its own

    def openai(self, key: str = "unused") -> openai.OpenAI:
        """The official client, into the gateway."""
        # openai accepts an `httpx.Client` beside its own `httpx2.Client` (its "legacy" client).
        return openai.OpenAI(
            base_url=f"{ORIGIN}/v1",
            api_key=key,
            max_retries=0,
            http_client=self.client,  # type: ignore[arg-type]
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples with `labels`, read from the gateway's `/metrics`."""
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def leave_mid_stream(
        self, path: str, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
    ) -> Departure:
        """POST `body` straight to the ASGI app, read the answer's first SSE event, then leave
        as a client does: `receive` says `http.disconnect` and sends fail from then on."""
        departure: Departure = self.portal.call(
            _leave_mid_stream, self.apps.gateway, path, body, list(headers)
        )
        return departure


async def _leave_mid_stream(
    app: ASGIApp, path: str, body: dict[str, Any], headers: list[tuple[str, str]]
) -> Departure:
    payload = orjson.dumps(body)
    left = asyncio.Event()
    pending: list[Message] = [{"type": "http.request", "body": payload, "more_body": False}]
    status = 0
    first = b""
    left_at = 0.0

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, first, left_at
        if left.is_set():
            raise OSError("the client has gone")
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and b"data: " in message.get("body", b""):
            first = message["body"]
            left_at = time.monotonic()
            left.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"gateway.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
            *[(name.encode(), value.encode()) for name, value in headers],
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
        "state": {},
        "extensions": {},
    }
    async with asyncio.timeout(30):
        await app(scope, receive, send)
    return Departure(status, first, left_at, time.monotonic())


def _with_local_paths(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """State and captures in the test's folder unless the config names them."""
    state = {"dir": str(folder / "state"), **config.get("state", {})}
    capture = {"path": str(folder / "captures.sqlite"), **config.get("capture", {})}
    return {**config, "state": state, "capture": capture}


@contextmanager
def in_process_gateway(
    config: dict[str, Any],
    folder: Path,
    upstream: InMemoryUpstream | None = None,
    watch_config: bool = False,
) -> Iterator[InProcessGateway]:
    """The gateway for `config` (a dict as in a config file; state and captures go to `folder`
    unless it says otherwise), in front of `upstream` (a fresh in-memory one by default),
    started; the config file is watched when `watch_config`. Stopped on exit."""
    upstream = upstream if upstream is not None else InMemoryUpstream()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(_with_local_paths(config, folder)))
    apps = create_app(load_config(path), path if watch_config else None, client=upstream)
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(lifespan(apps.gateway)),
            httpx.Client(
                base_url=ORIGIN, transport=PortalTransport(portal, apps.gateway)
            ) as client,
        ):
            admin = (
                httpx.Client(base_url=ORIGIN, transport=PortalTransport(portal, apps.admin))
                if apps.admin is not None
                else None
            )
            try:
                yield InProcessGateway(apps, upstream, portal, path, client, admin)
            finally:
                if admin is not None:
                    admin.close()
    finally:
        # The lifespan freezes what the process holds (a serving process lives once); a test
        # process builds many gateways, which must be collectable again.
        gc.unfreeze()
