"""`turnout bench fleet`: adapter placement against a simulated fleet of vLLM backends.

Three policies serve the same Zipf-distributed request sequence, one after the other in one
run, each against fresh simulated backends (`fleet_sim.py`, over loopback HTTP):
- `turnout`: the gateway's placement (`gateway.placement`): affinity to holders, single-flight
  loads through vLLM's load endpoint, replication of busy versions, eviction by the gateway;
- `round_robin`: what a Kubernetes Service over vLLM gives: requests rotate over backends and
  each backend loads adapters on demand into its own LRU;
- `ideal`: every adapter resident everywhere before the first request, so nothing ever waits
  for a load or evicts; requests are routed as `turnout` routes them (the bound on what
  loading costs).
Load is closed-loop: `concurrency` clients each send the next request as soon as theirs ends.
`turnout` and `ideal` read each backend's `/metrics` every second, as the gateway does (queue
depths for placement; `backend_metrics=False` turns it off, to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from gateway.bench.fleet_bounds import load_bounds
from gateway.bench.fleet_sim import SimBackend, SimSpec, start_sim
from gateway.config import TimeoutsConfig
from gateway.errors import AdapterLoading
from gateway.placement.fleet import (
    BackendCapacity,
    Eviction,
    EvictReason,
    FleetPlacement,
    LoadReason,
    Serve,
)
from gateway.placement.loads import AdapterLoads
from gateway.serving.embedded_vllm import free_port
from gateway.upstream.backend_metrics import BackendMetrics
from gateway.upstream.backends import Http1Upstream
from gateway.upstream.demand_placement import PlacementFeed
from gateway.upstream.http1_pool import ConnectionPool, Origin

_JSON = b"content-type: application/json\r\n"


@dataclass(frozen=True, slots=True)
class Scenario:
    adapters: int = 1000
    zipf_s: float = 1.1
    hot_share: float = 0.0  # when above Zipf's own, the share of traffic adapter 0 takes
    backends: int = 4
    resident: int = 64
    batch: int = 8
    max_seqs: int = 32
    load_s: float = 0.2
    decode_s: float = 0.1
    slowdown: float = 0.1
    requests: int = 3000
    concurrency: int = 64
    seed: int = 1
    eviction: Eviction = Eviction.LFU
    replicate_at: int = 4
    load_blocks: bool = True
    backend_metrics: bool = True  # placement reads each backend's /metrics (queue depth)
    other_clients: int = 0  # closed-loop clients calling the first backend directly, not counted


def request_sequence(scenario: Scenario) -> list[str]:
    """The adapter of each request, drawn once and replayed for every policy."""
    rng = random.Random(scenario.seed)
    weights = [1.0 / (rank**scenario.zipf_s) for rank in range(1, scenario.adapters + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    natural = weights[0] / total
    # Forced picks of adapter 0, so that its whole share (forced + Zipf) is `hot_share`.
    forced = max(0.0, (scenario.hot_share - natural) / (1 - natural))
    sequence = []
    for _ in range(scenario.requests):
        if rng.random() < forced:
            index = 0
        else:
            index = min(bisect.bisect_left(cumulative, rng.random() * total), scenario.adapters - 1)
        sequence.append(f"lora-{index:05d}")
    return sequence


@dataclass(slots=True)
class Tally:
    latencies: list[float] = field(default_factory=list)
    cold: int = 0
    errors_5xx: int = 0
    wrong: int = 0
    per_backend: Counter[str] = field(default_factory=Counter)


class _Observer:
    """Counts placement's own reports (the bench's view of the gateway metrics)."""

    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    def loaded(self, backend: str, reason: LoadReason, seconds: float, ok: bool) -> None:
        self.loads[reason.value if ok else "failed"] += 1

    def evicted(self, backend: str, reason: EvictReason) -> None:
        self.evictions[reason.value] += 1

    def served(self, backend: str, cold: bool, waited_s: float) -> None:
        pass

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1


class _HttpCalls:
    """vLLM's load and unload endpoints over the gateway's own HTTP/1.1 pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def _post(self, backend: str, path: str, body: dict[str, str]) -> int:
        response = await self._pool.request(
            Origin.parse(backend), b"POST", path, orjson.dumps(body), _JSON
        )
        try:
            await response.read()
        finally:
            response.finish()
        return response.status

    async def load(self, backend: str, version: str) -> None:
        status = await self._post(
            backend, "/v1/load_lora_adapter", {"lora_name": version, "lora_path": f"/a/{version}"}
        )
        if status != 200:
            raise RuntimeError(f"load of {version} on {backend}: {status}")

    async def unload(self, backend: str, version: str) -> None:
        await self._post(backend, "/v1/unload_lora_adapter", {"lora_name": version})


async def _complete(pool: ConnectionPool, backend: str, version: str) -> tuple[int, Any]:
    body = orjson.dumps({"model": version, "prompt": "hi", "max_tokens": 16, "temperature": 0})
    response = await pool.request(Origin.parse(backend), b"POST", "/v1/completions", body, _JSON)
    try:
        payload = await response.read()
    finally:
        response.finish()
    return response.status, orjson.loads(payload)


Sender = Callable[[str, Tally], Awaitable[None]]


async def _other_client(pool: ConnectionPool, backend: str, stop: asyncio.Event) -> None:
    """Another client of one backend, beside the gateway: its requests fill that backend's
    queue (and are not counted in any policy's report)."""
    while not stop.is_set():
        await _complete(pool, backend, "other")


def _check_answer(status: int, answer: Any, version: str, backend: str, tally: Tally) -> None:
    if status >= 500:
        tally.errors_5xx += 1
        return
    if status != 200 or answer["choices"][0]["text"] != f"adapter:{version}":
        tally.wrong += 1
        return
    tally.per_backend[backend] += 1
    if answer["sim"]["cold"]:
        tally.cold += 1


def _turnout_sender(pool: ConnectionPool, loads: AdapterLoads, count_cold: bool) -> Sender:
    async def send(version: str, tally: Tally) -> None:
        for attempt in range(2):  # a 404 (vLLM dropped it) is reloaded and retried once
            cold = not isinstance(loads.fleet.route(version), Serve)
            try:
                placed = await loads.acquire(version)
            except AdapterLoading:
                tally.errors_5xx += 1
                return
            backend, mark = placed.backend, placed.mark
            try:
                status, answer = await _complete(pool, backend, version)
            finally:
                loads.release(backend, version, mark)
            if status == 404 and attempt == 0:
                loads.lost(backend, version, mark)
                continue
            _check_answer(status, answer, version, backend, tally)
            if cold and count_cold and status == 200:
                tally.cold += 1
            return

    return send


def _rotating_sender(pool: ConnectionPool, urls: list[str]) -> Sender:
    rotation = itertools.cycle(urls)

    async def send(version: str, tally: Tally) -> None:
        backend = next(rotation)
        status, answer = await _complete(pool, backend, version)
        _check_answer(status, answer, version, backend, tally)

    return send


async def _drive(sequence: list[str], concurrency: int, send: Sender) -> tuple[Tally, float]:
    tally = Tally()
    cursor = iter(sequence)

    async def client() -> None:
        for version in cursor:
            started = time.monotonic()
            await send(version, tally)
            tally.latencies.append(time.monotonic() - started)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally, time.monotonic() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run_policy(policy: str, scenario: Scenario, sequence: list[str]) -> dict[str, Any]:
    """Fresh simulated backends, one policy, the whole sequence; the policy's report."""
    ideal = policy == "ideal"
    spec = SimSpec(
        resident=scenario.adapters if ideal else scenario.resident,
        batch=scenario.batch,
        max_seqs=scenario.max_seqs,
        load_s=scenario.load_s,
        decode_s=scenario.decode_s,
        slowdown=scenario.slowdown,
        on_demand=policy == "round_robin",
        load_blocks=scenario.load_blocks,
    )
    sims = [SimBackend(spec) for _ in range(scenario.backends)]
    # The bound: every adapter already resident everywhere, so no request ever waits for a
    # load or an eviction; requests are routed as Turnout routes them.
    if ideal:
        names = sorted(set(sequence))
        for sim in sims:
            sim.preload(names)
    servers, urls = [], []
    for sim in sims:
        port = free_port()
        servers.append(await start_sim(sim, "127.0.0.1", port))
        urls.append(f"http://127.0.0.1:{port}")
    pool = ConnectionPool(connect_timeout_s=5.0)
    observer = _Observer()
    scraper = Http1Upstream(TimeoutsConfig())
    watch: asyncio.Task[None] | None = None
    try:
        if policy in ("turnout", "ideal"):
            resident = scenario.adapters if ideal else scenario.resident
            capacity = BackendCapacity(resident=resident, batch=scenario.batch)
            fleet = FleetPlacement(
                dict.fromkeys(urls, capacity),
                eviction=scenario.eviction,
                replicate_at=scenario.replicate_at,
            )
            loads = AdapterLoads(
                fleet, _HttpCalls(pool), max_waiting=4096, wait_deadline_s=30.0, observer=observer
            )
            send = _turnout_sender(pool, loads, count_cold=not ideal)
            if scenario.backend_metrics:
                feed = PlacementFeed(fleet, discover=False)
                watch = asyncio.create_task(BackendMetrics(urls, on_reading=feed).watch(scraper))
        else:
            send = _rotating_sender(pool, urls)
        if scenario.other_clients:
            sims[0].preload(["other"])
        stop = asyncio.Event()
        others = [
            asyncio.create_task(_other_client(pool, urls[0], stop))
            for _ in range(scenario.other_clients)
        ]
        try:
            tally, elapsed = await _drive(sequence, scenario.concurrency, send)
        finally:
            stop.set()  # each ends its request first, so no backend is left answering one
            await asyncio.gather(*others, return_exceptions=True)
    finally:
        if watch is not None:
            watch.cancel()
        await scraper.close()
        pool.close()
        for server, sim in zip(servers, sims, strict=True):
            server.close()
            sim.stop()
    served = sum(tally.per_backend.values())
    per_backend = [tally.per_backend[url] for url in urls]
    mean = statistics.fmean(per_backend) if served else 0.0
    backend_loads = sum(sim.stats.loads for sim in sims)
    report: dict[str, Any] = {
        "requests": len(sequence),
        "ok": served,
        "throughput_rps": round(served / elapsed, 1),
        "p50_ms": round(_percentile(tally.latencies, 0.5) * 1000, 1),
        "p99_ms": round(_percentile(tally.latencies, 0.99) * 1000, 1),
        "cold_start_share": round(tally.cold / len(sequence), 4),
        "loads_per_1000": round(backend_loads * 1000 / len(sequence), 1),
        "max_mean_backend_load": round(max(per_backend) / mean, 3) if mean else None,
        "errors_5xx": tally.errors_5xx,
        "wrong_answers": tally.wrong,
        "backend_404s": sum(sim.stats.not_found for sim in sims),
        "seconds": round(elapsed, 2),
    }
    if policy == "turnout":
        report["placement_loads"] = dict(observer.loads)
        report["placement_evictions"] = dict(observer.evictions)
        report["refused"] = dict(observer.refusals)
    return report


def _targets(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, base, ideal = policies["turnout"], policies["round_robin"], policies["ideal"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    checks = {
        "loads_vs_round_robin": ratio(ours["loads_per_1000"], base["loads_per_1000"]),
        "p99_vs_round_robin": ratio(ours["p99_ms"], base["p99_ms"]),
        "throughput_vs_round_robin": ratio(ours["throughput_rps"], base["throughput_rps"]),
        "throughput_vs_ideal": ratio(ours["throughput_rps"], ideal["throughput_rps"]),
        "max_mean_backend_load": ours["max_mean_backend_load"],
    }
    met = {
        "loads_le_half_of_round_robin": (checks["loads_vs_round_robin"] or 0) <= 0.5,
        "p99_le_half_of_round_robin": (checks["p99_vs_round_robin"] or 0) <= 0.5,
        "throughput_ge_round_robin": (checks["throughput_vs_round_robin"] or 0) >= 1.0,
        "throughput_within_15pct_of_ideal": (checks["throughput_vs_ideal"] or 0) >= 0.85,
        "imbalance_le_1_25": (checks["max_mean_backend_load"] or 99) <= 1.25,
        "no_5xx_no_wrong_answers": all(
            p["errors_5xx"] == 0 and p["wrong_answers"] == 0 for p in policies.values()
        ),
    }
    return {"ratios": checks, "met": met}


async def run_fleet_benchmark(scenario: Scenario) -> dict[str, Any]:
    sequence = request_sequence(scenario)
    top_share = Counter(sequence).most_common(1)[0][1] / len(sequence)
    policies = {}
    for policy in ("turnout", "round_robin", "ideal"):
        policies[policy] = await run_policy(policy, scenario, sequence)
    return {
        "scenario": {
            k: str(v) if isinstance(v, Eviction) else v for k, v in asdict(scenario).items()
        },
        "top_adapter_share": round(top_share, 3),
        "policies": policies,
        "targets": _targets(policies),
        # Offline replays of the same requests on one pool of every resident slot: how low
        # loads per 1,000 requests can go on this traffic (gateway/bench/fleet_bounds.py).
        "load_bounds": load_bounds(sequence, scenario.backends * scenario.resident),
    }


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    scenario = Scenario(
        adapters=args.adapters,
        zipf_s=args.zipf_s,
        hot_share=args.hot_share,
        backends=args.backends,
        resident=args.resident,
        batch=args.batch,
        load_s=args.load_ms / 1000,
        decode_s=args.decode_ms / 1000,
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        eviction=Eviction(args.eviction),
        replicate_at=args.replicate_at,
        load_blocks=not args.loads_beside_engine,
        backend_metrics=not args.no_backend_metrics,
        other_clients=args.other_clients,
    )
    report = asyncio.run(run_fleet_benchmark(scenario))
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `fleet` (and `fleet-scale`) on the `turnout bench` subparsers."""
    from gateway.bench import fleet_scale

    fleet_scale.add_command(subparsers)
    default = Scenario()
    command = subparsers.add_parser(
        "fleet", help="adapter placement vs round-robin vs ideal on a simulated vLLM fleet"
    )
    command.add_argument("--adapters", type=int, default=default.adapters)
    command.add_argument("--zipf-s", type=float, default=default.zipf_s)
    command.add_argument(
        "--hot-share", type=float, default=default.hot_share, help="adapter 0's share of traffic"
    )
    command.add_argument("--backends", type=int, default=default.backends)
    command.add_argument("--resident", type=int, default=default.resident)
    command.add_argument("--batch", type=int, default=default.batch)
    command.add_argument("--load-ms", type=float, default=default.load_s * 1000)
    command.add_argument("--decode-ms", type=float, default=default.decode_s * 1000)
    command.add_argument(
        "--requests", type=int, default=default.requests, help="per policy (the run's length)"
    )
    command.add_argument("--concurrency", type=int, default=default.concurrency)
    command.add_argument("--seed", type=int, default=default.seed)
    command.add_argument(
        "--eviction", choices=[e.value for e in Eviction], default=default.eviction.value
    )
    command.add_argument("--replicate-at", type=int, default=default.replicate_at)
    command.add_argument(
        "--loads-beside-engine",
        action="store_true",
        help="backends decode while loading (default: a load stalls the engine, as in vLLM)",
    )
    command.add_argument(
        "--no-backend-metrics",
        action="store_true",
        help="placement ignores the backends' /metrics (queue depth), as before it read them",
    )
    command.add_argument(
        "--other-clients",
        type=int,
        default=default.other_clients,
        help="clients calling the first backend directly, beside the policy's traffic",
    )
    command.add_argument("--json", action="store_true", help="one JSON object")
    command.set_defaults(run=cmd_bench_fleet)
