"""`turnout bench shadow`: what shadowing every request adds to the served answer's latency.

One gateway (one worker) in front of the instant stub upstream serves two routes on the same
adapter version: `plain`, and `shadowed`, whose every request is also sent to a candidate
version (a shadow at 100 %). wrk calls each route in turn, alternating over several rounds at
each concurrency, so both are measured side by side in one run on the same processes; the
added latency is the difference of the medians. The gateway process's CPU time (user and
system, from /proc) is read around each run and divided by the requests served: the added CPU
per request is what a copy costs the gateway in all (serialising, the upstream call, parsing,
comparing, recording), on the served path and off it; it bounds the throughput shadowing
costs where the gateway's CPU is saturated, and a loaded machine blurs it less than it blurs
latencies. The gateway's shadow counters are read at the end, to show that the copies were
made and compared rather than dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from gateway.bench.overhead import _body, _process, _two_cpus
from gateway.bench.wrk import LoadResult, run_wrk
from gateway.config import TurnoutConfig
from gateway.serving.embedded_vllm import free_port

CONCURRENCY_LEVELS = (1, 16)
ROUNDS = 3
STABLE, CANDIDATE = "bench@v1", "bench@v2"
TARGET_ADDED_P50_MS = 0.2
_SAMPLE = re.compile(r'^turnout_shadow_requests_total\{result="(\w+)",route="shadowed"\} (\S+)$')


def _store(folder: Path) -> Path:
    """Two zero-weight versions of one adapter in a fresh store."""
    registry = AdapterRegistry(str(folder / "adapters"))
    base = synthetic_base_profile(TurnoutConfig().base_model)
    registry.save_base(base)
    write_zero_adapter(folder / "zero")
    for ref in (STABLE, CANDIDATE):
        name, _, version = ref.partition("@")
        registry.push(folder / "zero", name, base, AdapterLimits(max_lora_rank=16), version=version)
    return folder / "adapters"


def _gateway_command(folder: Path, upstream_url: str, port: int) -> list[str]:
    config = {
        "server": {"port": port},
        "backends": [{"url": upstream_url}],
        "adapters": {"store": str(_store(folder))},
        "routes": {
            "plain": {"stable": STABLE},
            "shadowed": {
                "stable": STABLE,
                "candidate": CANDIDATE,
                "mode": "shadow",
                "shadow_percent": 100,
                "shadow_min_pairs": 10**9,  # no verdict while the benchmark runs
            },
        },
        "shadow": {"max_in_flight": 64},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]


def _shadow_counts(gateway_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if found := _SAMPLE.match(line):
            counts[found.group(1)] = float(found.group(2))
    return counts


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system, every thread), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Measured:
    """One wrk run, and the gateway's CPU milliseconds per request served during it."""

    load: LoadResult
    cpu_ms_per_request: float


def _measure(
    pid: int, url: str, body: bytes, concurrency: int, duration_s: float, cpu: int | None
) -> Measured:
    before = _cpu_s(pid)
    load = run_wrk(url, body, concurrency, duration_s, cpu)
    spent_ms = (_cpu_s(pid) - before) * 1000
    served = load.requests_per_s * duration_s
    return Measured(load, spent_ms / served if served else float("nan"))


def _level(concurrency: int, plain: list[Measured], shadowed: list[Measured]) -> dict[str, Any]:
    no_shadow = LoadResult.median([m.load for m in plain])
    shadow_100 = LoadResult.median([m.load for m in shadowed])
    cpu_plain = statistics.median(m.cpu_ms_per_request for m in plain)
    cpu_shadowed = statistics.median(m.cpu_ms_per_request for m in shadowed)
    added_p50 = round(shadow_100.p50_ms - no_shadow.p50_ms, 3)
    report: dict[str, Any] = {
        "concurrency": concurrency,
        "no_shadow": {**no_shadow.as_dict(), "gateway_cpu_ms_per_request": round(cpu_plain, 3)},
        "shadow_100": {
            **shadow_100.as_dict(),
            "gateway_cpu_ms_per_request": round(cpu_shadowed, 3),
        },
        "added_p50_ms": added_p50,
        "added_p99_ms": round(shadow_100.p99_ms - no_shadow.p99_ms, 3),
        "added_gateway_cpu_ms_per_request": round(cpu_shadowed - cpu_plain, 3),
    }
    if concurrency == 1:
        report["target_added_p50_ms"] = TARGET_ADDED_P50_MS
        report["meets_target"] = added_p50 <= TARGET_ADDED_P50_MS
    return report


def run_shadow_benchmark(duration_s: float, rounds: int = ROUNDS) -> dict[str, Any]:
    """Served-answer latency with and without 100 % shadowing, and the shadow counters."""
    cpus = _two_cpus()
    gateway_cpu, load_cpu = cpus if cpus is not None else (None, None)
    path = "/v1/chat/completions"
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        folder = Path(scratch)
        upstream_port, gateway_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        stub = [sys.executable, "-m", "gateway.bench.stub_upstream", "--port", str(upstream_port)]
        running.enter_context(_process(stub, load_cpu, f"{upstream_url}/health"))
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        command = _gateway_command(folder, upstream_url, gateway_port)
        gateway = running.enter_context(_process(command, gateway_cpu, f"{gateway_url}/healthz"))
        bodies = {"plain": _body("plain", 16), "shadowed": _body("shadowed", 16)}
        for route in bodies:  # warm both paths
            run_wrk(gateway_url + path, bodies[route], 16, 2, load_cpu)
        before = _shadow_counts(gateway_url)
        levels = []
        for concurrency in CONCURRENCY_LEVELS:
            runs: dict[str, list[Measured]] = {"plain": [], "shadowed": []}
            for index in range(rounds):
                order = ("plain", "shadowed") if index % 2 == 0 else ("shadowed", "plain")
                for route in order:
                    url = gateway_url + path
                    runs[route].append(
                        _measure(gateway.pid, url, bodies[route], concurrency, duration_s, load_cpu)
                    )
            levels.append(_level(concurrency, runs["plain"], runs["shadowed"]))
        after = _shadow_counts(gateway_url)
    shadows = {result: after.get(result, 0) - before.get(result, 0) for result in after}
    return {"benchmark": "shadow", "upstream": "stub", "levels": levels, "shadows": shadows}


def cmd_bench_shadow(args: argparse.Namespace) -> int:
    report = run_shadow_benchmark(args.duration, args.rounds)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `shadow` on the `turnout bench` subparsers."""
    command = subparsers.add_parser(
        "shadow", help="served-answer latency with every request shadowed vs none (stub upstream)"
    )
    command.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    command.add_argument("--rounds", type=int, default=ROUNDS, help="alternating runs per side")
    command.add_argument("--json", action="store_true", help="one JSON object")
    command.set_defaults(run=cmd_bench_shadow)
