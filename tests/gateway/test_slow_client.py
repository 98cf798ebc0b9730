"""A streaming client that stops reading: the gateway holds a bounded amount for it, cuts its
stream with an SSE error after `timeouts.client_stall_s`, counts it, and other streams go on.

Real processes over loopback: the paced streaming stub as upstream (no pause: it streams as
fast as the gateway reads), the gateway under uvicorn, and raw sockets as clients.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import orjson
import pytest
import yaml

from gateway.bench.overhead import _process, push_stub_adapter
from gateway.bench.stream_load import run_streams
from gateway.bench.streaming import rss_bytes
from gateway.serving.embedded_vllm import free_port

pytestmark = pytest.mark.slow

STALL_S = 1.0
SLOW_EVENTS = 500_000  # about 70 MB of events: far more than any buffer on the way


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        folder = Path(scratch)
        upstream_port, gateway_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        stub = [
            sys.executable, "-m", "gateway.bench.stream_stub", "--port", str(upstream_port),
            "--chunks", str(SLOW_EVENTS), "--interval-ms", "0",
        ]  # fmt: skip
        running.enter_context(_process(stub, None, f"{upstream}/health"))
        push_stub_adapter(folder)
        config = {
            "server": {"port": gateway_port},
            "backends": [{"url": upstream}],
            "adapters": {"store": str(folder / "adapters")},
            "routes": {"bench": {"stable": "bench@v1"}},
            "timeouts": {"client_stall_s": STALL_S},
            "limits": {"max_tokens": None},  # the slow stream asks for SLOW_EVENTS tokens
        }
        (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config"]
        process = running.enter_context(
            _process(
                [*command, str(folder / "gateway.yaml")],
                None,
                f"http://127.0.0.1:{gateway_port}/healthz",
            )
        )
        yield f"http://127.0.0.1:{gateway_port}", process.pid


def _stream_request(port: int, max_tokens: int) -> bytes:
    body = orjson.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "Go on for ever."}],
            "max_tokens": max_tokens,
            "stream": True,
        }
    )
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _cut_count(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("turnout_streams_cut_slow_client_total{")
    )


def test_a_client_that_stops_reading_is_cut_bounded_and_alone(gateway: tuple[str, int]) -> None:
    url, pid = gateway

    port = int(url.rsplit(":", 1)[1])
    asyncio.run(run_streams(f"{url}/v1/chat/completions", "bench", 4, 60, 10))  # warm up
    cuts_before = _cut_count(url)
    rss_before = rss_bytes(pid)

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    slow.sendall(_stream_request(port, SLOW_EVENTS))
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_bytes(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # While the slow client reads nothing, other streams run through at full length.
        started = time.perf_counter()
        others = asyncio.run(run_streams(f"{url}/v1/chat/completions", "bench", 8, 30, 200))
        others_s = time.perf_counter() - started
        time.sleep(STALL_S * 3)
    finally:
        stop.set()
        sampler.join()
    # Bounded: the upstream would send ~70 MB; the gateway held a few MB at most for it.
    assert peak[0] - rss_before < 16 * 1024 * 1024
    assert others["errors"] == 0
    assert others["events"] == 8 * 200
    assert others_s < STALL_S * 3  # they did not wait for the slow one

    # The slow client, reading again, finds the events it left, a clear error, and the end.
    slow.settimeout(30)
    received = bytearray()
    while chunk := slow.recv(1 << 20):
        received += chunk
    slow.close()
    assert b'"code":"client_too_slow"' in received
    assert received.endswith(b"\r\n0\r\n\r\n")
    assert received.count(b"chat.completion.chunk") < SLOW_EVENTS
    assert _cut_count(url) == cuts_before + 1
