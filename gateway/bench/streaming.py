"""`turnout bench streaming`: time to the first event and the gaps after it, direct and relayed.

One paced upstream (`gateway.bench.stream_stub`: `--chunks` events `--interval-ms` apart, or
back to back with 0) and one gateway (one worker) in front of it. For each level of concurrent
streams, the load client (`gateway.bench.stream_load`) runs the streams against the upstream
directly and then through the gateway, so both sides are measured side by side in one run.
Processes are pinned as `bench overhead` pins them against its stub: the gateway gets CPU 0,
the load client and the upstream share CPU 1.

For the gateway side it also reads the gateway process from /proc: its peak resident memory
during the level less its memory after warm-up, per open stream, its CPU time (all threads,
nanosecond scheduler accounting) over the level per relayed event, and how long it waited,
runnable, for a CPU (a shared core shows here before it shows in the latencies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

DEFAULT_STREAMS = (1, 64, 256, 1024)
ROUTE = "bench"
STUB_ADAPTER = "bench@v1"
PATH = "/v1/chat/completions"
WARM_UP_STREAMS = 8
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` now."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` (all its threads) has used so far.

    From the scheduler's per-thread accounting in nanoseconds where the kernel keeps it
    (/proc/PID/task/*/schedstat), else from /proc/PID/stat's user + system clock ticks (10 ms
    each: too coarse for a level of a few hundred events).
    """
    schedstat = _schedstat(pid)
    if schedstat is not None:
        return schedstat[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def run_queue_seconds(pid: int) -> float | None:
    """How long `pid`'s threads have waited, runnable, for a CPU so far (None: not kept).

    A gateway that waited for its core about as long as it ran was sharing it: its latencies
    then measure the machine, not the gateway."""
    schedstat = _schedstat(pid)
    return None if schedstat is None else schedstat[1]


def _schedstat(pid: int) -> tuple[float, float] | None:
    """Seconds on a CPU and seconds waiting for one, summed over `pid`'s live threads."""
    running = waiting = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "schedstat").read_text().split()
            running += int(fields[0])
            waiting += int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
    return running / 1e9, waiting / 1e9


@contextmanager
def _peak_rss(pid: int, into: list[int]) -> Iterator[None]:
    """Sample `pid`'s resident memory every 10 ms; the peak is appended to `into`."""
    stop = threading.Event()
    peak = [rss_bytes(pid)]

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        into.append(max(peak[0], rss_bytes(pid)))


def _load(url: str, model: str, streams: int, cpu: int | None) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "gateway.bench.stream_load",
        "--url", url, "--model", model, "--streams", str(streams),
    ]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def _gateway_command(folder: Path, upstream_url: str, port: int) -> list[str]:
    config = {
        "server": {"port": port},
        "backends": [{"url": upstream_url}],
        "adapters": {"store": str(folder / "adapters")},
        "routes": {ROUTE: {"stable": STUB_ADAPTER}},
        # Every stream of the largest level in flight at once: admission is not measured here.
        "admission": {"max_concurrent": 8192, "max_queued": 0},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]


def _level(
    streams: int, direct: dict[str, Any], gateway: dict[str, Any],
    rss_growth: int, cpu_s: float, waited_s: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    relayed = gateway["events"]
    return {
        "streams": streams,
        "direct": direct,
        "gateway": gateway,
        "added_first_event_p50_ms": round(
            gateway["first_event_p50_ms"] - direct["first_event_p50_ms"], 3
        ),
        "added_first_event_p99_ms": round(
            gateway["first_event_p99_ms"] - direct["first_event_p99_ms"], 3
        ),
        "added_gap_p99_ms": round(gateway["gap_p99_ms"] - direct["gap_p99_ms"], 3),
        "events_per_s_ratio": (
            round(gateway["events_per_s"] / direct["events_per_s"], 3)
            if direct["events_per_s"]
            else 0.0
        ),
        "gateway_rss_growth_kib": round(rss_growth / 1024, 1),
        "gateway_kib_per_open_stream": round(rss_growth / 1024 / streams, 2),
        "gateway_cpu_s": round(cpu_s, 3),
        "gateway_cpu_us_per_event": round(cpu_s / relayed * 1e6, 2) if relayed else None,
        "gateway_run_queue_wait_s": None if waited_s is None else round(waited_s, 3),
    }


def run_streaming_benchmark(
    levels: tuple[int, ...], chunks: int, interval_ms: float
) -> list[dict[str, Any]]:
    """One report per level of concurrent streams; see the module docstring for the set-up."""
    from gateway.bench.overhead import _process, _two_cpus, push_stub_adapter
    from gateway.serving.embedded_vllm import free_port

    cpus = _two_cpus()
    gateway_cpu, load_cpu = cpus if cpus is not None else (None, None)
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        folder = Path(scratch)
        upstream_port, gateway_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        stub = [
            sys.executable, "-m", "gateway.bench.stream_stub", "--port", str(upstream_port),
            "--chunks", str(chunks), "--interval-ms", str(interval_ms),
        ]  # fmt: skip
        running.enter_context(_process(stub, load_cpu, f"{upstream_url}/health"))
        push_stub_adapter(folder)
        gateway = running.enter_context(
            _process(
                _gateway_command(folder, upstream_url, gateway_port),
                gateway_cpu,
                f"{gateway_url}/healthz",
            )
        )
        direct_url, relayed_url = upstream_url + PATH, gateway_url + PATH
        _load(direct_url, STUB_ADAPTER, WARM_UP_STREAMS, load_cpu)
        _load(relayed_url, ROUTE, WARM_UP_STREAMS, load_cpu)
        time.sleep(0.2)
        baseline = rss_bytes(gateway.pid)
        reports = []
        for streams in levels:
            direct = _load(direct_url, STUB_ADAPTER, streams, load_cpu)
            peaks: list[int] = []
            cpu_before = cpu_seconds(gateway.pid)
            waited_before = run_queue_seconds(gateway.pid)
            with _peak_rss(gateway.pid, peaks):
                relayed = _load(relayed_url, ROUTE, streams, load_cpu)
            cpu_s = cpu_seconds(gateway.pid) - cpu_before
            waited_after = run_queue_seconds(gateway.pid)
            waited_s = (
                None
                if waited_before is None or waited_after is None
                else waited_after - waited_before
            )
            growth = max(0, peaks[0] - baseline)
            reports.append(_level(streams, direct, relayed, growth, cpu_s, waited_s))
        return reports


def cmd_bench_streaming(args: argparse.Namespace) -> int:
    levels = tuple(int(part) for part in args.streams.split(","))
    report = run_streaming_benchmark(levels, args.chunks, args.interval_ms)
    for level in report:
        print(json.dumps(level, indent=None if args.json else 2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `streaming` on the `turnout bench` subparsers."""
    command = subparsers.add_parser(
        "streaming", help="first-event latency and event gaps of streams, direct and relayed"
    )
    command.add_argument(
        "--streams",
        default=",".join(str(level) for level in DEFAULT_STREAMS),
        help="levels of concurrent streams, comma-separated",
    )
    command.add_argument("--chunks", type=int, default=50, help="events per stream")
    command.add_argument(
        "--interval-ms", type=float, default=20.0, help="between events (0: no pause)"
    )
    command.add_argument("--json", action="store_true", help="one JSON object per line")
    command.set_defaults(run=cmd_bench_streaming)
