"""The floor a proxy stands on: a forwarder that passes bytes between each client connection
and an upstream connection of its own, unparsed, on the same event loop the gateway uses.

One read and one write per event and nothing else: what relaying an event costs this
machine's event loop at least, and what any proxy between a client and its upstream adds to
the first event and the gaps (two more processes to wake, two more sockets). `turnout bench
streaming` runs each level through it beside the gateway; `gateway.bench.relay_events` times
its CPU beside the relay stack's in one process.

    python -m gateway.bench.forwarder --port P --upstream-port U
"""

from __future__ import annotations

import asyncio
from typing import cast


class Forwarder(asyncio.Protocol):
    """A client connection, passed to its own upstream connection and back as bytes come."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream_host = upstream_host
        self._upstream_port = upstream_port
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._upstream, _ = await loop.create_connection(
                lambda: _Back(self), self._upstream_host, self._upstream_port
            )
        except OSError:
            if self._client is not None:
                self._client.close()
            return
        for data in self._early:
            self._upstream.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._early.append(data)
        else:
            self._upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upstream is not None:
            self._upstream.close()

    def back(self, data: bytes) -> None:
        if self._client is not None:
            self._client.write(data)

    def upstream_closed(self) -> None:
        if self._client is not None:
            self._client.close()


class _Back(asyncio.Protocol):
    def __init__(self, front: Forwarder) -> None:
        self._front = front

    def data_received(self, data: bytes) -> None:
        self._front.back(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.upstream_closed()


async def serve(host: str, port: int, upstream_port: int) -> None:
    """Forward until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Forwarder(upstream_port), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.upstream_port))


if __name__ == "__main__":
    main()
