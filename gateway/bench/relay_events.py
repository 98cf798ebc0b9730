"""CPU time the relay stack spends per streamed event, in process (docs/performance.md).

The paced stub (`gateway.bench.stream_stub`, its own process) streams `--chunks` events
`--interval-ms` apart per answer, each in its own HTTP chunk, so events reach the relay one at
a time. This process serves them through the real stack: uvicorn's httptools protocol with
the gateway's `CoalescingHttpToolsProtocol`, an ASGI app that parses the request body and
opens the stream with `InferenceProxy.open_stream` (admission, the HTTP/1.1 pool, model
rewrite), then `StreamRelay` (stall guard, `StreamTranscript`). The load client
(`gateway.bench.stream_load`, its own process) opens `--streams` connections at once and reads
every event. Not included: the gateway's routing, auth, rate limits, metrics and signals.

Per round, the CPU time of this process's event-loop thread (`time.thread_time`) from just
before the load client starts to just after it ends, divided by the events the client received
(`[DONE]` not counted): CPU µs per relayed event, request handling included (one request per
`--chunks` events); and that time split into user and system time (`getrusage`, the kernel's
split: system time is mostly the socket reads and writes and the loop's waits). Also per round,
`garbage_objects`: the objects garbage collection freed during the round and in a collection
just after it, that is, what the round left in reference cycles instead of freeing as it went
(0 for the relay stack: a stream's objects go when it ends). A warm-up
round opens the upstream connections first; as in the gateway, what was allocated before
traffic is frozen out of garbage collection (`gc.freeze`).

    python gateway/bench/relay_events.py [--streams 64] [--chunks 100] [--interval-ms 20]
                                         [--rounds 3] [--no-floor]

Each round is followed by one through the floor on the same loop: `gateway.bench.forwarder`,
which passes each client connection's bytes to an upstream connection of its own and back,
unparsed (one read and one write per event and nothing else; its upstream connections are opened
per stream). What an event costs this machine's event loop at least, to read the relay's figure
against.

Run by path with PYTHONPATH at another checkout to time that checkout's code side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import sys
import time
from typing import Any

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.api.relay import StreamRelay
from gateway.bench.forwarder import Forwarder
from gateway.config import TimeoutsConfig
from gateway.outcomes.recorder import StreamTranscript
from gateway.routing.table import Target
from gateway.serving.embedded_vllm import free_port
from gateway.serving.transport import CoalescingHttpToolsProtocol
from gateway.upstream.admission import AdmissionLimits, BackendGates
from gateway.upstream.backends import BackendPool, Http1Upstream
from gateway.upstream.breaker import BreakerPolicy, RetryBudget, RetryBudgetPolicy
from gateway.upstream.proxy import InferenceProxy, OpenStream
from gateway.upstream.residency import Residency

_PATH = "/v1/chat/completions"
_MODEL = "stub-model"


class RelayApp:
    """The relay stack as one ASGI app: every request is streamed from the stub."""

    def __init__(self, upstream_url: str) -> None:
        self.client = Http1Upstream(TimeoutsConfig())
        many = AdmissionLimits(max_concurrent=100_000, max_queued=100_000)
        self._proxy = InferenceProxy(
            self.client,
            BackendPool([upstream_url], Residency([upstream_url]), BreakerPolicy()),
            BackendGates([upstream_url], many),
            RetryBudget(RetryBudgetPolicy()),
        )
        self._target = Target("bench", None, _MODEL)
        self.answers = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        opened = await self._proxy.open_stream(self._target, _PATH, orjson.loads(body), "bench")
        assert isinstance(opened, OpenStream), "the stub refused to stream"
        transcript = StreamTranscript()

        def on_close() -> None:
            if transcript.answer().text:
                self.answers += 1

        relay = StreamRelay(opened, {}, transcript, lambda: None, on_close)
        await relay(scope, receive, send)


def _measured(report: dict[str, Any], cpu_s: float, before: Any, after: Any) -> dict[str, Any]:
    events = max(1, report["events"])
    return {
        "events": report["events"],
        "errors": report["errors"],
        "cpu_s": round(cpu_s, 4),
        "cpu_us_per_event": round(cpu_s / events * 1e6, 2),
        "user_us_per_event": round((after.ru_utime - before.ru_utime) / events * 1e6, 2),
        "system_us_per_event": round((after.ru_stime - before.ru_stime) / events * 1e6, 2),
    }


async def _timed_load(url: str, streams: int) -> dict[str, Any]:
    garbage = _GarbageCount()
    gc.callbacks.append(garbage)
    try:
        started, before = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
        report = await _load(url, streams)
        cpu_s = time.thread_time() - started
        after = resource.getrusage(resource.RUSAGE_THREAD)
        gc.collect()  # what the round left in reference cycles, counted by the callback
    finally:
        gc.callbacks.remove(garbage)
    return {**_measured(report, cpu_s, before, after), "garbage_objects": garbage.collected}


class _GarbageCount:
    """A `gc.callbacks` entry adding up the objects that collections freed."""

    def __init__(self) -> None:
        self.collected = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            self.collected += info["collected"]


async def _load(url: str, streams: int) -> dict[str, Any]:
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bench.stream_load", "--url", url, "--model", "bench",
        "--streams", str(streams), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await client.communicate()
    report: dict[str, Any] = json.loads(out)
    return report


async def _wait_listening(port: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def run(
    streams: int, chunks: int, interval_ms: float, rounds: int, with_floor: bool = True
) -> dict[str, Any]:
    stub_port, relay_port = free_port(), free_port()
    stub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bench.stream_stub", "--port", str(stub_port),
        "--chunks", str(chunks), "--interval-ms", str(interval_ms),
    )  # fmt: skip
    app = RelayApp(f"http://127.0.0.1:{stub_port}")
    config = uvicorn.Config(
        app, host="127.0.0.1", port=relay_port, loop="none", http=CoalescingHttpToolsProtocol,
        lifespan="off", access_log=False, log_level="warning", server_header=False,
        proxy_headers=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{relay_port}{_PATH}"
    measured: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    floor_url: str | None = None
    forwarder: asyncio.Server | None = None
    if with_floor:
        floor_port = free_port()
        forwarder = await asyncio.get_running_loop().create_server(
            lambda: Forwarder(stub_port), "127.0.0.1", floor_port, backlog=4096
        )
        floor_url = f"http://127.0.0.1:{floor_port}{_PATH}"
    try:
        await _wait_listening(stub_port, 10)
        await _wait_listening(relay_port, 10)
        gc.collect()  # as the gateway does once started (gateway/serving/app.py)
        gc.freeze()
        await _load(url, streams)  # warm-up: upstream connections opened, code paths warm
        for _ in range(rounds):
            measured.append(await _timed_load(url, streams))
            if floor_url is not None:
                floor.append(await _timed_load(floor_url, streams))
    finally:
        server.should_exit = True
        await serving
        if forwarder is not None:
            forwarder.close()
        await app.client.close()
        stub.terminate()
        await stub.wait()
    per_event = [r["cpu_us_per_event"] for r in measured]
    user = [r["user_us_per_event"] for r in measured]
    return {
        "streams": streams,
        "chunks": chunks,
        "interval_ms": interval_ms,
        "rounds": measured,
        "cpu_us_per_event_median": round(statistics.median(per_event), 2) if per_event else None,
        "cpu_us_per_event_range": [min(per_event), max(per_event)] if per_event else None,
        "user_us_per_event_median": round(statistics.median(user), 2) if user else None,
        "answers_with_text": app.answers,
        "floor_rounds": floor,
        "floor_cpu_us_per_event_median": (
            round(statistics.median(r["cpu_us_per_event"] for r in floor), 2) if floor else None
        ),
    }


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-floor", action="store_true", help="skip the forwarder's rounds")
    args = parser.parse_args()
    report = uvloop.run(
        run(args.streams, args.chunks, args.interval_ms, args.rounds, not args.no_floor)
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
