"""`turnout bench soak`: a fixed request rate through a gateway; errors, latency and memory.

It starts the instant stub upstream and a real gateway process (`turnout serve`) in front of
it, then sends requests on a fixed schedule: request i leaves at start + i / rate whether or not
earlier ones have answered (an open loop, so a slow gateway cannot slow the load down and hide
its own latency). Latency is measured from the scheduled time, not the actual send. It reports
errors (anything but a 200; the target is none), latency percentiles per interval, and the
gateway's resident memory over time with its growth after a warm-up (target under 5%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop
import yaml

from gateway.bench.overhead import STUB_ADAPTER, push_stub_adapter
from gateway.serving.readiness import wait_until_answers
from gateway.upstream.http1_pool import ConnectionPool, Origin

ROUTE = "soak"
TARGET_GROWTH_PERCENT = 5.0
_STARTUP_TIMEOUT_S = 60.0
_REQUEST_TIMEOUT_S = 30.0
_HEADERS = b"content-type: application/json\r\n"


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds into the run), how long it took from then, what
    went wrong, and how late the generator sent it."""

    due_s: float
    latency_s: float
    error: str | None
    send_lag_s: float = 0.0


@dataclass(frozen=True)
class MemorySample:
    at_s: float
    rss_bytes: int


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _latency_ms(samples: Sequence[Sample]) -> dict[str, float | None]:
    """Percentiles of the successful requests' latency; None where there were none."""
    values = sorted(s.latency_s * 1000 for s in samples if s.error is None)
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "p99.9_ms": None, "max_ms": None}
    report: dict[str, float | None] = {
        f"p{q}_ms": round(percentile(values, q), 3) for q in (50, 90, 99, 99.9)
    }
    report["max_ms"] = round(values[-1], 3)
    return report


def memory_report(memory: Sequence[MemorySample], warmup_s: float) -> dict[str, Any]:
    """RSS over time and its growth from the end of the warm-up to the end of the run."""
    after = [m for m in memory if m.at_s >= warmup_s] or list(memory[-1:])
    baseline, end = after[0].rss_bytes, after[-1].rss_bytes
    growth = (end - baseline) / baseline * 100
    return {
        "samples": [{"at_s": round(m.at_s, 2), "rss_bytes": m.rss_bytes} for m in memory],
        "warmup_s": warmup_s,
        "rss_after_warmup_bytes": baseline,
        "rss_end_bytes": end,
        "rss_max_bytes": max(m.rss_bytes for m in memory),
        "growth_percent": round(growth, 2),
        "target_growth_percent": TARGET_GROWTH_PERCENT,
        "meets_target": growth < TARGET_GROWTH_PERCENT,
    }


def _max_send_lag_ms(samples: Sequence[Sample]) -> float:
    """The longest any request was sent after its due time: a large value means this
    generator, not the gateway, could not keep the rate."""
    return round(max((s.send_lag_s for s in samples), default=0) * 1000, 3)


def soak_report(
    samples: Sequence[Sample],
    memory: Sequence[MemorySample],
    rate: float,
    duration_s: float,
    interval_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """The JSON report: totals, latency after warm-up, one entry per interval, memory."""
    errors = Counter(s.error for s in samples if s.error is not None)
    intervals = []
    for index in range(math.ceil(duration_s / interval_s)):
        start = index * interval_s
        window = [s for s in samples if start <= s.due_s < start + interval_s]
        intervals.append(
            {
                "start_s": round(start, 2),
                "requests": len(window),
                "errors": sum(s.error is not None for s in window),
                "max_send_lag_ms": _max_send_lag_ms(window),
                **_latency_ms(window),
            }
        )
    return {
        "upstream": "stub",
        "rate_per_s": rate,
        "duration_s": duration_s,
        "requests": len(samples),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "max_send_lag_ms": _max_send_lag_ms(samples),
        "latency_after_warmup": _latency_ms([s for s in samples if s.due_s >= warmup_s]),
        "intervals": intervals,
        "memory": memory_report(memory, warmup_s),
    }


async def _send(
    pool: ConnectionPool, origin: Origin, path: str, body: bytes, due: float, samples: list[Sample]
) -> None:
    # time.monotonic, not loop.time(): uvloop's clock ticks in whole milliseconds.
    sent = time.monotonic()
    error: str | None = None
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT_S):
            response = await pool.request(origin, b"POST", path, body, _HEADERS)
            try:
                await response.read()
            finally:
                response.finish()
        if response.status != 200:
            error = f"status {response.status}"
    except TimeoutError:
        error = "timeout"
    except OSError as failure:  # refused, reset, closed mid-answer
        error = type(failure).__name__
    samples.append(Sample(due, time.monotonic() - due, error, sent - due))


async def drive_load(
    url: str, body: bytes, rate: float, duration_s: float, pid: int, memory_every_s: float
) -> tuple[list[Sample], list[MemorySample]]:
    """POST `body` to `url` `rate` times a second for `duration_s`; sample a process's RSS.

    Returns the samples (with `due_s` relative to the start) and the memory samples.
    """
    origin, path = Origin.parse(url), urlsplit(url).path
    # The gateway's own lean HTTP/1.1 client: httpx's pool costs ~1 ms of CPU a request and
    # falls behind the schedule on a small machine (docs/performance.md).
    pool = ConnectionPool(connect_timeout_s=_REQUEST_TIMEOUT_S)
    samples: list[Sample] = []
    memory: list[MemorySample] = []
    pending: set[asyncio.Task[None]] = set()
    # While the loop runs, a Python-level signal handler may not get to run: cancel instead,
    # which unwinds through the caller's `finally` that stops the gateway and the stub.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    start = time.monotonic()
    next_memory_s = 0.0
    try:
        for index in range(round(rate * duration_s)):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the schedule, not waiting on a condition
            task = asyncio.create_task(_send(pool, origin, path, body, due, samples))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if due - start >= next_memory_s:
                memory.append(MemorySample(due - start, rss_bytes(pid)))
                next_memory_s += memory_every_s
        await asyncio.gather(*pending)
        memory.append(MemorySample(time.monotonic() - start, rss_bytes(pid)))
    finally:
        pool.close()
    relative = [Sample(s.due_s - start, s.latency_s, s.error, s.send_lag_s) for s in samples]
    return relative, memory


@contextmanager
def _running(command: list[str], ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_answers(ready_url, _STARTUP_TIMEOUT_S, process, what)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_soak(
    minutes: float, rate: float, interval_s: float = 60.0, warmup_s: float | None = None
) -> dict[str, Any]:
    """Run the soak (stub upstream, gateway process, load) and return the report."""
    from gateway.serving.embedded_vllm import free_port

    duration_s = minutes * 60
    if warmup_s is None:
        warmup_s = min(60.0, duration_s / 5)
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        running.enter_context(
            _running(
                [sys.executable, "-m", "gateway.bench.stub_upstream", "--port", str(upstream_port)],
                f"{upstream}/health",
                "the stub upstream",
            )
        )
        config = Path(scratch) / "soak.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": gateway_port},
                    "backends": [{"url": upstream}],
                    "adapters": {"store": str(push_stub_adapter(Path(scratch)))},
                    "state": {"dir": str(Path(scratch) / "state")},
                    "routes": {ROUTE: {"stable": STUB_ADAPTER}},
                }
            )
        )
        process = running.enter_context(
            _running(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                f"{gateway}/healthz",
                "the gateway",
            )
        )
        body = orjson.dumps(
            {
                "model": ROUTE,
                "messages": [{"role": "user", "content": "Summarise: the order arrived late."}],
                "max_tokens": 16,
            }
        )
        memory_every_s = max(0.5, min(5.0, duration_s / 60))
        samples, memory = uvloop.run(
            drive_load(
                f"{gateway}/v1/chat/completions", body, rate, duration_s, process.pid,
                memory_every_s,
            )
        )  # fmt: skip
    return soak_report(samples, memory, rate, duration_s, interval_s, warmup_s)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the processes


def cmd_bench_soak(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        report = run_soak(args.minutes, args.rate, args.interval, args.warmup)
    except asyncio.CancelledError:  # SIGTERM while the load ran
        return 128 + signal.SIGTERM
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


def add_commands(bench_subparsers: Any) -> None:
    """Register `soak` on the `turnout bench` subcommands."""
    soak = bench_subparsers.add_parser(
        "soak", help="a fixed request rate through a gateway for minutes: errors, latency, memory"
    )
    soak.add_argument("--minutes", type=float, required=True, help="how long (fractions allowed)")
    soak.add_argument("--rate", type=float, default=100.0, help="requests per second")
    soak.add_argument("--interval", type=float, default=60.0, help="seconds per latency interval")
    soak.add_argument(
        "--warmup",
        type=float,
        help="seconds before memory growth is measured (default: a fifth of the run, at most 60)",
    )
    soak.add_argument("--json", action="store_true", help="the report on one line")
    soak.set_defaults(run=cmd_bench_soak)
