"""A streaming upstream for benchmarks: every streamed answer is N chunks at a fixed interval.

It is the instant stub (`gateway.bench.stub_upstream`: health, adapter loading, whole answers)
except for `"stream": true` requests, which it answers with `--chunks` SSE events, each in its
own HTTP chunk, `--interval-ms` apart (0: back to back, yielding to the loop between events and
waiting while the socket's buffer is full), then `data: [DONE]`. A request whose `max_tokens`
is smaller gets that many events instead.
Each event echoes the request's `model`, so the gateway's rewriting runs as against vLLM.
"""

from __future__ import annotations

import asyncio
import re

from gateway.bench.stub_upstream import _MODEL, _STREAM, StubUpstreamProtocol

_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
_FULL_BYTES = 256 * 1024

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def stream_event(model: bytes, index: int) -> bytes:
    """One chat completion chunk event, as vLLM writes it."""
    return (
        b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":0,"model":"'
        + model
        + b'","choices":[{"index":0,"delta":{"content":"token%d "},"finish_reason":null}]}\n\n'
        % index
    )


class PacedStreamProtocol(StubUpstreamProtocol):
    """The stub's connection, streaming paced answers."""

    def __init__(self, loaded_adapters: set[str], chunks: int, interval_s: float) -> None:
        super().__init__(loaded_adapters)
        self._chunks = chunks
        self._interval_s = interval_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._transport is not None
        self._transport.set_write_buffer_limits(high=_FULL_BYTES)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _respond(self, head: bytes, body: bytes) -> None:
        if not _STREAM.search(body):
            super()._respond(head, body)
            return
        model_match = _MODEL.search(body)
        model = model_match.group(1) if model_match else b"stub"
        limit = _MAX_TOKENS.search(body)
        chunks = min(self._chunks, int(limit.group(1))) if limit else self._chunks
        task = asyncio.get_running_loop().create_task(self._stream(model, chunks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, model: bytes, chunks: int) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(_HEAD)
        for index in range(chunks):
            if transport.is_closing():
                return
            transport.write(_chunk(stream_event(model, index)))
            if self._interval_s > 0:
                await asyncio.sleep(self._interval_s)
                continue
            await asyncio.sleep(0)
            await self._writable.wait()
        transport.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        for task in self._tasks:
            task.cancel()


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    """Serve the paced stub until cancelled."""
    loop = asyncio.get_running_loop()
    loaded_adapters: set[str] = set()
    server = await loop.create_server(
        lambda: PacedStreamProtocol(loaded_adapters, chunks, interval_s), host, port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunks, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
