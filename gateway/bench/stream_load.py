"""The streaming benchmark's load client: N concurrent SSE streams, timed event by event.

The N streams start at once (a burst), or, with `--steady-s`, 2N start at an even pace that
keeps about N open (the steady state of N concurrent streams).

Each stream is its own connection (opened before its clock starts), or, with `--pooled`, it
takes an idle keep-alive connection if one is free and opens one only if none is, as an OpenAI
client's connection pool does: one POST with `"stream": true`, then every read is scanned
for the blank line that ends an SSE event. Per stream it records the time from sending the
request to the first event and the gap between consecutive reads that brought events (events
that arrive in one read share a timestamp: their gap is 0). `data: [DONE]` ends a stream and is
not counted. Run as a process of its own (pinned by the caller), it prints one JSON object.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

_DONE = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"  # a chunked body's end


@dataclass(slots=True)
class StreamTiming:
    """What one stream saw."""

    first_event_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    events: int = 0
    error: str | None = None


def _request(host: str, port: int, path: str, model: str, max_tokens: int) -> bytes:
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            # The stub streams its `--chunks` events unless max_tokens is fewer; 4096 is the
            # gateway's default ceiling (limits.max_tokens).
            "max_tokens": max_tokens,
            "stream": True,
        }
    )
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(slots=True)
class Connections:
    """Where streams get their connections: a fresh one each, or (`pooled`) an idle kept-alive
    one, opened only when none is idle."""

    host: str
    port: int
    pooled: bool = False
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    opened: int = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def give_back(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], reusable: bool
    ) -> None:
        if self.pooled and reusable:
            self.idle.append(connection)
        else:
            connection[1].close()


async def _read_to_last_chunk(reader: asyncio.StreamReader, after_done: bytes) -> bool:
    """Read what is left of a chunked answer after its `[DONE]` event; whether it ended."""
    rest = after_done
    while not rest.endswith(_LAST_CHUNK):
        data = await reader.read(65536)
        if not data:
            return False
        rest = rest[-len(_LAST_CHUNK) :] + data
    return True


async def one_stream(
    host: str, port: int, request: bytes, timeout_s: float, connections: Connections | None = None
) -> StreamTiming:
    """Send `request`, read its SSE answer to `[DONE]`, and time it (from the request's
    sending: a fresh connection is opened before)."""
    timing = StreamTiming()
    connections = connections or Connections(host, port)
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    reusable = False
    try:
        async with asyncio.timeout(timeout_s):
            connection = await connections.take()
            reader, writer = connection
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                timing.error = head.split(b"\r\n", 1)[0].decode("latin-1")
                return timing
            tail = b""
            last = sent
            while True:
                data = await reader.read(65536)
                now = time.perf_counter()
                if not data:
                    timing.error = "closed before [DONE]"
                    return timing
                scanned = tail + data
                count = scanned[len(tail) - 1 :].count(b"\n\n") if tail else scanned.count(b"\n\n")
                done = _DONE in scanned
                tail = scanned[-len(_DONE) :]
                events = count - (1 if done else 0)
                if events > 0:
                    if timing.first_event_s is None:
                        timing.first_event_s = now - sent
                    else:
                        timing.gaps_s.append(now - last)
                    timing.gaps_s.extend([0.0] * (events - 1))
                    timing.events += events
                    last = now
                if done:
                    if connections.pooled and b"connection: close" not in head.lower():
                        after = scanned[scanned.rfind(_DONE) + len(_DONE) :]
                        reusable = await _read_to_last_chunk(reader, after)
                    return timing
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
        timing.error = type(error).__name__
        return timing
    finally:
        if connection is not None:
            connections.give_back(connection, reusable)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(timings: list[StreamTiming], wall_s: float) -> dict[str, Any]:
    """Figures over all streams: milliseconds, events and events per second."""
    firsts = [t.first_event_s for t in timings if t.first_event_s is not None]
    gaps = [gap for t in timings for gap in t.gaps_s]
    events = sum(t.events for t in timings)
    errors = [t.error for t in timings if t.error is not None]
    return {
        "streams": len(timings),
        "events": events,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall_s, 3),
        "events_per_s": round(events / wall_s, 1) if wall_s > 0 else 0.0,
        "first_event_p50_ms": round(_percentile(firsts, 0.5) * 1000, 3),
        "first_event_p99_ms": round(_percentile(firsts, 0.99) * 1000, 3),
        "gap_p50_ms": round(_percentile(gaps, 0.5) * 1000, 3),
        "gap_p99_ms": round(_percentile(gaps, 0.99) * 1000, 3),
        "gap_max_ms": round(max(gaps, default=0.0) * 1000, 3),
    }


async def run_streams(
    url: str, model: str, streams: int, timeout_s: float, max_tokens: int = 4096,
    steady_s: float = 0.0, pooled: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """`streams` concurrent streams against `url` (http://host:port/path), summarised.

    With `steady_s` (one stream's length) 0, every stream starts at once (a burst). Otherwise
    twice as many streams start one after another at an even pace, `streams` per `steady_s`,
    so that once the first has ended about `streams` are open at any moment: the steady state
    of that many concurrent streams, without the burst of connections at the start.
    `pooled`: streams reuse idle keep-alive connections (`Connections`)."""
    rest = url.removeprefix("http://")
    address, _, path = rest.partition("/")
    host, _, port = address.partition(":")
    request = _request(host, int(port), "/" + path, model, max_tokens)
    connections = Connections(host, int(port), pooled)
    started = time.perf_counter()
    if steady_s <= 0:
        timings = await asyncio.gather(
            *(one_stream(host, int(port), request, timeout_s, connections) for _ in range(streams))
        )
    else:
        pace_s = steady_s / streams

        async def starting_at(index: int) -> StreamTiming:
            await asyncio.sleep(max(0.0, started + index * pace_s - time.perf_counter()))
            return await one_stream(host, int(port), request, timeout_s, connections)

        timings = await asyncio.gather(*(starting_at(index) for index in range(2 * streams)))
    wall_s = time.perf_counter() - started
    for _, writer in connections.idle:
        writer.close()
    return {**summarise(list(timings), wall_s), "connections_opened": connections.opened}


def main() -> None:
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--steady-s", type=float, default=0.0, help="one stream's length: start at a steady pace"
    )
    parser.add_argument("--pooled", action="store_true", help="reuse idle keep-alive connections")
    args = parser.parse_args()
    run = run_streams(
        args.url, args.model, args.streams, args.timeout, steady_s=args.steady_s, pooled=args.pooled
    )
    report = uvloop.run(run)
    print(orjson.dumps(report).decode())


if __name__ == "__main__":
    main()
