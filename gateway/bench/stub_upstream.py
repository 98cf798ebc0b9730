"""An instant OpenAI-compatible upstream for benchmarks: answers every request from memory.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to stand in for vLLM, so a
benchmark measures the gateway's own cost and not the model's. It echoes the request's `model`
so the gateway's response rewriting runs as it would against vLLM. With `--record` it keeps
the inference request bodies it received, and `GET /recorded` hands them over (and forgets
them): tests use it to see exactly what the gateway forwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from typing import cast

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_TEXT = "The quick brown fox jumps over the lazy dog."
_USAGE = b'"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}'


def _completion(model: bytes, chat: bool) -> bytes:
    if chat:
        choice = (
            b'{"index":0,"message":{"role":"assistant","content":"' + _TEXT.encode() + b'"},'
            b'"finish_reason":"stop"}'
        )
        kind = b"chat.completion"
    else:
        choice = b'{"index":0,"text":"' + _TEXT.encode() + b'","finish_reason":"stop"}'
        kind = b"text_completion"
    return (
        b'{"id":"cmpl-stub","object":"'
        + kind
        + b'","created":'
        + str(int(time.time())).encode()
        + b',"model":"'
        + model
        + b'","choices":['
        + choice
        + b"],"
        + _USAGE
        + b"}"
    )


def _stream_events(model: bytes, chat: bool) -> bytes:
    events = []
    for word in _TEXT.split(" "):
        piece = (word + " ").encode()
        if chat:
            choice = b'{"index":0,"delta":{"content":"' + piece + b'"},"finish_reason":null}'
            kind = b"chat.completion.chunk"
        else:
            choice = b'{"index":0,"text":"' + piece + b'","finish_reason":null}'
            kind = b"text_completion"
        events.append(
            b'data: {"id":"cmpl-stub","object":"'
            + kind
            + b'","model":"'
            + model
            + b'","choices":['
            + choice
            + b"]}\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)


class StubUpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection of the stub server."""

    def __init__(self, loaded_adapters: set[str], recorded: deque[bytes] | None = None) -> None:
        self.loaded_adapters = loaded_adapters  # shared by every connection
        self.recorded = recorded  # shared too; None: nothing is kept
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so narrow by cast.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end]
            length_match = _CONTENT_LENGTH.search(head)
            length = int(length_match.group(1)) if length_match else 0
            total = head_end + 4 + length
            if len(self._buffer) < total:
                return
            body = self._buffer[head_end + 4 : total]
            self._buffer = self._buffer[total:]
            self._respond(head, body)

    def _respond(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        request_line = head.split(b"\r\n", 1)[0]
        if request_line.startswith(b"GET /health"):
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            return
        if request_line.startswith((b"GET /v1/models", b"POST /v1/load_lora_adapter")):
            self._write_json(self._adapter_endpoint(request_line, body))
            return
        if self.recorded is not None:
            if request_line.startswith(b"GET /recorded"):
                bodies = b",".join(self.recorded)
                self.recorded.clear()
                self._write_json(b"[" + bodies + b"]")
                return
            self.recorded.append(body)
        model_match = _MODEL.search(body)
        model = model_match.group(1) if model_match else b"stub"
        chat = b"/chat/" in request_line
        if _STREAM.search(body):
            self._transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + _chunked(_stream_events(model, chat))
            )
            return
        self._write_json(_completion(model, chat))

    def _adapter_endpoint(self, request_line: bytes, body: bytes) -> bytes:
        """vLLM's adapter loading, as far as the gateway's loader uses it: names only."""
        if request_line.startswith(b"POST"):
            self.loaded_adapters.add(json.loads(body)["lora_name"])
            return b'"loaded"'
        cards = [{"id": "tiny", "object": "model", "parent": None}] + [
            {"id": name, "object": "model", "parent": "tiny"}
            for name in sorted(self.loaded_adapters)
        ]
        return json.dumps({"object": "list", "data": cards}).encode()

    def _write_json(self, payload: bytes) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )


async def serve_stub_upstream(host: str, port: int, record: bool = False) -> None:
    """Serve the stub until cancelled; with `record`, keep request bodies for `GET /recorded`."""
    loop = asyncio.get_running_loop()
    loaded_adapters: set[str] = set()
    recorded: deque[bytes] | None = deque(maxlen=10_000) if record else None
    server = await loop.create_server(
        lambda: StubUpstreamProtocol(loaded_adapters, recorded), host, port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", action="store_true", help="keep bodies for GET /recorded")
    args = parser.parse_args()
    uvloop.run(serve_stub_upstream(args.host, args.port, args.record))


if __name__ == "__main__":
    main()
