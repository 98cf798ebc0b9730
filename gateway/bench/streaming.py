"""`turnout bench streaming`: time to the first event and the gaps after it, direct and relayed.

One paced upstream (`gateway.bench.stream_stub`: `--chunks` events `--interval-ms` apart, or
back to back with 0) and one gateway in front of it per `--workers` count (`server.workers`;
with several counts, every gateway uses one Redis, so the worker count is the only
difference). For each level of concurrent streams, the load client (`gateway.bench.stream_load`)
runs the streams against the upstream directly and then through each gateway, so every side is
measured side by side in one run. Processes are pinned as `bench overhead` pins them against
its stub: a one-worker gateway gets CPU 0, the load client and the upstream share CPU 1; a
gateway of several workers may use every CPU (on two CPUs its second worker shares CPU 1 with
the load client and the upstream). `--layout shared` puts the gateway on the load's CPU instead:
then no wake-up crosses CPUs, which inside a virtual machine can cost more than the gateway's
own work (`gateway.bench.wake_probe`; every report carries the machine's round trips as
`machine`). `--arrivals steady` starts the streams at an even pace instead of all at once.
`--connections pooled` lets each stream reuse an idle keep-alive connection, as an OpenAI
client's pool does, instead of opening its own (`fresh`): then a stream's figures leave out
what opening and closing a connection costs the server.

Each level also runs through the floor (`gateway.bench.forwarder`, pinned where a one-worker
gateway is): a forwarder that passes bytes between the client and the upstream unparsed, on the
gateway's event loop. What it adds over direct (`floor`: first event, gap p99, events/s and
its CPU per event) is what any proxy adds on this machine, before doing anything: the part of
the gateway's figures that is the machine's, not the gateway's.

For the direct side it reads the upstream's CPU time per event it sent: what an event costs a
plain asyncio process on this machine. For the gateway side it also reads the gateway's
processes (a supervisor's workers summed) from /proc: their peak resident memory during the
level less its memory after warm-up, per open stream, its CPU time (all threads,
nanosecond scheduler accounting) over the level per relayed event, and how long it waited,
runnable, for a CPU (a shared core shows here before it shows in the latencies). From the
gateway's own `/metrics`, its garbage collections during the level (`turnout_gc_pause_seconds`):
how many, how long in all, and how many held the event loop for a millisecond or more.
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
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.serving.gc_timing import FLUSH_S

DEFAULT_STREAMS = (1, 64, 256, 1024)
ROUTE = "bench"
STUB_ADAPTER = "bench@v1"
PATH = "/v1/chat/completions"
WARM_UP_STREAMS = 8
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _family(pid: int) -> list[int]:
    """`pid` and its children (a supervisor's workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children now."""
    return sum(
        int(Path(f"/proc/{member}/statm").read_text().split()[1]) * _PAGE for member in _family(pid)
    )


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` (all its threads) has used so far.

    From the scheduler's per-thread accounting in nanoseconds where the kernel keeps it
    (/proc/PID/task/*/schedstat), else from /proc/PID/stat's user + system clock ticks (10 ms
    each: too coarse for a level of a few hundred events).
    """
    schedstat = _schedstat(pid)
    if schedstat is not None:
        return schedstat[0]
    total = 0.0
    for member in _family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def run_queue_seconds(pid: int) -> float | None:
    """How long `pid`'s threads have waited, runnable, for a CPU so far (None: not kept).

    A gateway that waited for its core about as long as it ran was sharing it: its latencies
    then measure the machine, not the gateway."""
    schedstat = _schedstat(pid)
    return None if schedstat is None else schedstat[1]


def _schedstat(pid: int) -> tuple[float, float] | None:
    """Seconds on a CPU and seconds waiting for one, summed over the live threads of `pid`
    and its children."""
    running = waiting = 0
    try:
        for member in _family(pid):
            for task in Path(f"/proc/{member}/task").iterdir():
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


@dataclass(frozen=True)
class LoadShape:
    """How a level's streams come: `steady_s` (one stream's length) above 0 starts them at an
    even pace, else all at once; `pooled` streams reuse idle keep-alive connections."""

    steady_s: float = 0.0
    pooled: bool = False


def _load(
    url: str, model: str, streams: int, cpu: int | None, shape: LoadShape = LoadShape()
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "gateway.bench.stream_load",
        "--url", url, "--model", model, "--streams", str(streams),
        "--steady-s", str(shape.steady_s), *(["--pooled"] if shape.pooled else []),
    ]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def _gateway_command(
    folder: Path, upstream_url: str, port: int, workers: int = 1, redis_url: str | None = None
) -> list[str]:
    config: dict[str, Any] = {
        "server": {"port": port, "workers": workers},
        "backends": [{"url": upstream_url}],
        "adapters": {"store": str(folder / "adapters")},
        "routes": {ROUTE: {"stable": STUB_ADAPTER}},
        # Every stream of the largest level in flight at once: admission is not measured here.
        "admission": {"max_concurrent": 8192, "max_queued": 0},
    }
    if redis_url is not None:
        config["state"] = {"dir": str(folder / f"state-{port}"), "redis_url": redis_url}
    path = folder / f"bench-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]


@dataclass(frozen=True)
class GcPauses:
    """A gateway's garbage collections so far, from its `turnout_gc_pause_seconds`."""

    count: int = 0
    seconds: float = 0.0
    over_1ms: int = 0

    def __sub__(self, before: GcPauses) -> GcPauses:
        count, over_1ms = self.count - before.count, self.over_1ms - before.over_1ms
        return GcPauses(count, self.seconds - before.seconds, over_1ms)


def gc_pauses(metrics_url: str) -> GcPauses:
    """A gateway's collections so far, from its `/metrics`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        return gc_pauses_in(answer.read().decode())


def gc_pauses_in(text: str) -> GcPauses:
    """All generations summed (and a supervisor's workers, which `/metrics` sums)."""
    from prometheus_client.parser import text_string_to_metric_families

    count, seconds, within_1ms = 0.0, 0.0, 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "turnout_gc_pause_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                seconds += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.001:
                within_1ms += sample.value
    return GcPauses(round(count), seconds, round(count - within_1ms))


def _added_over(direct: dict[str, Any], side: dict[str, Any]) -> dict[str, float]:
    """What a side in front of the upstream (the gateway, the floor) added over direct."""
    return {
        "added_first_event_p50_ms": round(
            side["first_event_p50_ms"] - direct["first_event_p50_ms"], 3
        ),
        "added_first_event_p99_ms": round(
            side["first_event_p99_ms"] - direct["first_event_p99_ms"], 3
        ),
        "added_gap_p99_ms": round(side["gap_p99_ms"] - direct["gap_p99_ms"], 3),
        "events_per_s_ratio": (
            round(side["events_per_s"] / direct["events_per_s"], 3)
            if direct["events_per_s"]
            else 0.0
        ),
    }


def _level(
    streams: int, direct: dict[str, Any], gateway: dict[str, Any],
    rss_growth: int, cpu_s: float, waited_s: float | None, collections: GcPauses,
) -> dict[str, Any]:  # fmt: skip
    relayed = gateway["events"]
    return {
        "streams": streams,
        "direct": direct,
        "gateway": gateway,
        **_added_over(direct, gateway),
        "gateway_rss_growth_kib": round(rss_growth / 1024, 1),
        "gateway_kib_per_open_stream": round(rss_growth / 1024 / streams, 2),
        "gateway_cpu_s": round(cpu_s, 3),
        "gateway_cpu_us_per_event": round(cpu_s / relayed * 1e6, 2) if relayed else None,
        "gateway_run_queue_wait_s": None if waited_s is None else round(waited_s, 3),
        "gateway_gc_pauses": collections.count,
        "gateway_gc_pause_ms": round(collections.seconds * 1e3, 2),
        "gateway_gc_pauses_over_1ms": collections.over_1ms,
    }


def _floor(
    forwarder_pid: int, url: str, streams: int, cpu: int | None, shape: LoadShape,
    direct: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One level through the forwarder: its load report, what it added over direct, and its
    CPU time per event."""
    cpu_before = cpu_seconds(forwarder_pid)
    floor = _load(url, STUB_ADAPTER, streams, cpu, shape)
    spent = cpu_seconds(forwarder_pid) - cpu_before
    events = floor["events"]
    floor.update(_added_over(direct, floor))
    floor["cpu_us_per_event"] = round(spent / events * 1e6, 2) if events else None
    return floor


def _direct(
    upstream_pid: int, url: str, streams: int, cpu: int | None, shape: LoadShape
) -> dict[str, Any]:
    """One level against the upstream itself, with the upstream's CPU time per event it sent:
    what one event costs a plain asyncio process on this machine, beside the gateway's."""
    cpu_before = cpu_seconds(upstream_pid)
    direct = _load(url, STUB_ADAPTER, streams, cpu, shape)
    spent = cpu_seconds(upstream_pid) - cpu_before
    events = direct["events"]
    direct["upstream_cpu_us_per_event"] = round(spent / events * 1e6, 2) if events else None
    return direct


def _relayed(
    pid: int, url: str, streams: int, cpu: int | None, baseline: int, shape: LoadShape
) -> tuple[dict[str, Any], int, float, float | None, GcPauses]:
    """One level through one gateway: the load's report, the gateway's memory growth, CPU
    seconds, run-queue wait and garbage collections over it."""
    peaks: list[int] = []
    metrics_url = url.removesuffix(PATH) + "/metrics"
    collected_before = gc_pauses(metrics_url)
    cpu_before = cpu_seconds(pid)
    waited_before = run_queue_seconds(pid)
    with _peak_rss(pid, peaks):
        relayed = _load(url, ROUTE, streams, cpu, shape)
    cpu_s = cpu_seconds(pid) - cpu_before
    waited_after = run_queue_seconds(pid)
    time.sleep(FLUSH_S * 1.5)  # the gateway observes its collections every FLUSH_S
    collected = gc_pauses(metrics_url) - collected_before
    waited_s = (
        None if waited_before is None or waited_after is None else waited_after - waited_before
    )
    return relayed, max(0, peaks[0] - baseline), cpu_s, waited_s, collected


def run_streaming_benchmark(
    levels: tuple[int, ...], chunks: int, interval_ms: float, workers: tuple[int, ...] = (1,),
    arrivals: str = "burst", layout: str = "split", connections: str = "fresh",
) -> list[dict[str, Any]]:  # fmt: skip
    """One report per level of concurrent streams and gateway (`workers` processes); see the
    module docstring for the set-up."""
    from gateway.bench.overhead import _process, _two_cpus, push_stub_adapter
    from gateway.bench.redis_server import running_redis_server
    from gateway.bench.wake_probe import machine_wake_report
    from gateway.serving.embedded_vllm import free_port

    if arrivals == "steady" and interval_ms <= 0:
        raise ValueError("steady arrivals need paced streams (--interval-ms above 0)")
    steady_s = chunks * interval_ms / 1000 if arrivals == "steady" else 0.0
    shape = LoadShape(steady_s, connections == "pooled")
    cpus = _two_cpus()
    machine = machine_wake_report(cpus)
    gateway_cpu, load_cpu = cpus if cpus is not None else (None, None)
    if layout == "shared" and cpus is not None:
        gateway_cpu = load_cpu = cpus[0]
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        folder = Path(scratch)
        upstream_port = free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        stub = [
            sys.executable, "-m", "gateway.bench.stream_stub", "--port", str(upstream_port),
            "--chunks", str(chunks), "--interval-ms", str(interval_ms),
        ]  # fmt: skip
        upstream = running.enter_context(_process(stub, load_cpu, f"{upstream_url}/health"))
        floor_port = free_port()
        forward = [
            sys.executable, "-m", "gateway.bench.forwarder", "--port", str(floor_port),
            "--upstream-port", str(upstream_port),
        ]  # fmt: skip
        floor_url = f"http://127.0.0.1:{floor_port}"
        forwarder = running.enter_context(_process(forward, gateway_cpu, f"{floor_url}/health"))
        push_stub_adapter(folder)
        redis_url = running.enter_context(running_redis_server()).url if max(workers) > 1 else None
        gateways: list[tuple[int, int, str]] = []  # workers, pid, relayed URL
        for count in workers:
            port = free_port()
            gateway = running.enter_context(
                _process(
                    _gateway_command(folder, upstream_url, port, count, redis_url),
                    gateway_cpu if count == 1 else None,
                    f"http://127.0.0.1:{port}/readyz",
                )
            )
            gateways.append((count, gateway.pid, f"http://127.0.0.1:{port}{PATH}"))
        direct_url = upstream_url + PATH
        _load(direct_url, STUB_ADAPTER, WARM_UP_STREAMS, load_cpu)
        _load(floor_url + PATH, STUB_ADAPTER, WARM_UP_STREAMS, load_cpu)
        for _, _, url in gateways:
            _load(url, ROUTE, WARM_UP_STREAMS, load_cpu)
        time.sleep(0.2)
        baselines = {pid: rss_bytes(pid) for _, pid, _ in gateways}
        reports = []
        for streams in levels:
            direct = _direct(upstream.pid, direct_url, streams, load_cpu, shape)
            floor = _floor(forwarder.pid, floor_url + PATH, streams, load_cpu, shape, direct)
            for count, pid, url in gateways:
                relayed, growth, cpu_s, waited_s, collected = _relayed(
                    pid, url, streams, load_cpu, baselines[pid], shape
                )
                report = _level(streams, direct, relayed, growth, cpu_s, waited_s, collected)
                reports.append(
                    {"workers": count, "arrivals": arrivals, "layout": layout,
                     "connections": connections, **report,
                     "floor": floor, "machine": machine}
                )  # fmt: skip
        return reports


def cmd_bench_streaming(args: argparse.Namespace) -> int:
    levels = tuple(int(part) for part in args.streams.split(","))
    workers = tuple(int(part) for part in args.workers.split(","))
    report = run_streaming_benchmark(
        levels, args.chunks, args.interval_ms, workers, args.arrivals, args.layout,
        args.connections,
    )  # fmt: skip
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
    command.add_argument(
        "--workers",
        default="1",
        help="gateway worker counts (server.workers), comma-separated: one gateway each, "
        "measured side by side",
    )
    command.add_argument(
        "--arrivals",
        choices=("burst", "steady"),
        default="burst",
        help="burst: a level's streams all start at once; steady: twice as many start at an "
        "even pace that keeps that many open",
    )
    command.add_argument(
        "--layout",
        choices=("split", "shared"),
        default="split",
        help="split: the gateway on one CPU, the load and upstream on another; shared: all on "
        "one CPU (no wake-up crosses CPUs)",
    )
    command.add_argument(
        "--connections",
        choices=("fresh", "pooled"),
        default="fresh",
        help="fresh: each stream opens its own connection; pooled: streams reuse idle "
        "keep-alive connections, as an OpenAI client's pool does",
    )
    command.add_argument("--json", action="store_true", help="one JSON object per line")
    command.set_defaults(run=cmd_bench_streaming)
