"""`turnout bench fleet-scale`: a config routing 10,000 adapter versions, checked and published.

The issue's target: config check + table publish under 1 s, gateway memory growth under 200 MB.
Set-up (not timed): a local adapter store of `versions` synthetic versions (one pushed through
the registry, the rest written as copies with their own manifests) and a config with one route
per version (`adapters.placement: demand`, the first `warm` routes `warm: true`), served by
simulated vLLM backends (`fleet_sim.py`) on loopback. Then, in this process, timed one after
the other as `turnout serve` runs them:
- `load_s`: reading and validating the config file (`load_config`);
- `check_s`: the pre-start check of every routed version in the store (`check_adapters`,
  without hashing files: each version is verified once in the background and before each load);
- `build_s`: the routing table (`build_routing_table`);
- `publish_s`: publishing it to placement (warm pins, their loads started, unrouted versions);
- `deferred_gc_s`: a full garbage collection right after (what the phases left for later);
- `republish_s`: building and publishing the table again (what a rollout change does).
`check_and_publish_s` is the first four summed, the target's number; `cpu_s` has this process's
CPU seconds per phase (on a machine shared with other work, wall-clock time is longer).
`rss_growth_mb` is this process's resident memory after the publish minus before the load.
With `--verify`, the background verification of every version (files hashed) is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from adapters.manifest import MANIFEST_FILE
from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from gateway.bench.fleet_sim import SimBackend, SimSpec, start_sim
from gateway.config import load_config
from gateway.placement.warm import routed_versions, warm_versions
from gateway.routing.table import PublishedTable, build_routing_table, declared_rollouts
from gateway.serving.embedded_vllm import free_port
from gateway.serving.startup import check_adapters
from gateway.upstream.adapter_loader import AdapterLoader, VllmAdapterAdmin
from gateway.upstream.backends import Http1Upstream
from gateway.upstream.demand_placement import demand_placement
from gateway.upstream.residency import Residency

BASE = "synthetic-base"


@dataclass(frozen=True, slots=True)
class ScaleScenario:
    versions: int = 10_000
    backends: int = 4
    resident: int = 64
    batch: int = 8
    warm: int = 100


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_store(store: Path, versions: int) -> None:
    """`versions` adapter versions `lora-NNNNN@v1`: one pushed, the rest copies of it under
    their own names (same files, each with its own manifest)."""
    registry = AdapterRegistry(str(store))
    base = synthetic_base_profile(BASE)
    registry.save_base(base)
    source = store.parent / "adapter-source"
    write_zero_adapter(source)
    first = registry.push(source, "lora-00000", base, AdapterLimits(max_lora_rank=16), version="v1")
    first_folder = store / first.name / first.version
    for index in range(1, versions):
        name = f"lora-{index:05d}"
        folder = store / name / "v1"
        folder.mkdir(parents=True)
        for file_name in first.files:
            shutil.copyfile(first_folder / file_name, folder / file_name)
        manifest = first.model_copy(update={"name": name})
        (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))


def write_config(path: Path, store: Path, urls: list[str], scenario: ScaleScenario) -> None:
    routes: dict[str, dict[str, Any]] = {}
    for index in range(scenario.versions):
        route: dict[str, Any] = {"stable": f"lora-{index:05d}@v1"}
        if index < scenario.warm:
            route["warm"] = True
        routes[f"route-{index:05d}"] = route
    config = {
        "base_model": BASE,
        "backends": [{"url": url} for url in urls],
        "adapters": {
            "store": str(store),
            "placement": "demand",
            "max_loras": scenario.batch,
            "max_cpu_loras": scenario.resident,
        },
        "routes": routes,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class _Timings:
    """Wall-clock and CPU seconds (this process's) per phase: on a loaded machine they part."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu


async def _measure(folder: Path, scenario: ScaleScenario, verify: bool) -> dict[str, Any]:
    spec = SimSpec(
        resident=scenario.resident,
        batch=scenario.batch,
        max_seqs=32,
        load_s=0.01,
        decode_s=0.01,
        slowdown=0.0,
    )
    sims = [SimBackend(spec) for _ in range(scenario.backends)]
    servers, urls = [], []
    for sim in sims:
        port = free_port()
        servers.append(await start_sim(sim, "127.0.0.1", port))
        urls.append(f"http://127.0.0.1:{port}")
    store, config_path = folder / "store", folder / "turnout.yaml"
    started = time.perf_counter()
    write_store(store, scenario.versions)
    write_config(config_path, store, urls, scenario)
    setup_s = time.perf_counter() - started
    timings = _Timings()
    try:
        gc.collect()
        rss_before = _rss_bytes()
        with timings.phase("load"):
            config = load_config(config_path)
        with timings.phase("check"):
            checked = check_adapters(config, verify=False)
        with timings.phase("build"):
            table = build_routing_table(config, declared_rollouts(config))
        upstream = Http1Upstream(config.timeouts)
        loader = AdapterLoader(
            AdapterRegistry(config.adapters.store),
            config.base_model,
            config.adapters,
            VllmAdapterAdmin(upstream),
            Residency(urls),
            urls,
        )
        placement = demand_placement(config.adapters, urls, loader)
        assert placement is not None
        published = PublishedTable(table)
        with timings.phase("publish"):
            loader.route(table.adapter_versions())
            published.publish(table)
            placement.publish(routed_versions(table), warm_versions(table, config.routes))
        with timings.phase("deferred_gc"):  # what collection left for later is paid here
            gc.collect()
        rss_after = _rss_bytes()
        with timings.phase("republish"):
            again = build_routing_table(config, declared_rollouts(config))
            loader.route(again.adapter_versions())
            published.publish(again)
            placement.publish(routed_versions(again), warm_versions(again, config.routes))
        warm_loaded = await _wait_warm(placement.fleet, scenario.warm, deadline_s=60.0)
        if verify:
            with timings.phase("verify_all"):
                await loader.prepare(table.adapter_versions())
    finally:
        for server, sim in zip(servers, sims, strict=True):
            server.close()
            sim.stop()
    phases = ("load", "check", "build", "publish")
    total = sum(timings.wall[phase] for phase in phases)
    total_cpu = sum(timings.cpu[phase] for phase in phases)
    return {
        "scenario": {
            "versions": scenario.versions,
            "routes": len(config.routes),
            "backends": scenario.backends,
            "resident": scenario.resident,
            "warm_routes": scenario.warm,
        },
        "versions_checked": checked,
        "setup_s": round(setup_s, 2),
        **{f"{phase}_s": round(seconds, 3) for phase, seconds in timings.wall.items()},
        "check_and_publish_s": round(total, 3),
        "cpu_s": {phase: round(seconds, 3) for phase, seconds in timings.cpu.items()},
        "check_and_publish_cpu_s": round(total_cpu, 3),
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "warm_versions_loaded": warm_loaded,
        "targets": {
            "check_and_publish_under_1s": total < 1.0,
            "rss_growth_under_200mb": (rss_after - rss_before) < 200 * 2**20,
        },
    }


async def _wait_warm(fleet: Any, warm: int, deadline_s: float) -> int:
    """How many warm versions some backend holds, once all are or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        held = set().union(*(fleet.resident(backend) for backend in fleet.backends))
        if len(held) >= warm or time.monotonic() > deadline:
            return len(held)
        await asyncio.sleep(0.05)


def run_scale_benchmark(scenario: ScaleScenario, verify: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="turnout-fleet-scale-") as folder:
        return asyncio.run(_measure(Path(folder), scenario, verify))


def cmd_bench_fleet_scale(args: argparse.Namespace) -> int:
    scenario = ScaleScenario(
        versions=args.versions,
        backends=args.backends,
        resident=args.resident,
        batch=args.batch,
        warm=args.warm,
    )
    logging.getLogger("turnout.adapters").setLevel(logging.WARNING)  # one line per warm load
    report = run_scale_benchmark(scenario, verify=args.verify)
    option = 0 if args.json else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(report, option=option).decode() + "\n")
    return 0


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `fleet-scale` on the `turnout bench` subparsers."""
    default = ScaleScenario()
    command = subparsers.add_parser(
        "fleet-scale",
        help="config load, check and table publish for 10,000 routed versions; memory growth",
    )
    command.add_argument("--versions", type=int, default=default.versions)
    command.add_argument("--backends", type=int, default=default.backends)
    command.add_argument("--resident", type=int, default=default.resident)
    command.add_argument("--batch", type=int, default=default.batch)
    command.add_argument("--warm", type=int, default=default.warm, help="routes marked warm")
    command.add_argument(
        "--verify", action="store_true", help="also time verifying every version (files hashed)"
    )
    command.add_argument("--json", action="store_true", help="one JSON object")
    command.set_defaults(run=cmd_bench_fleet_scale)
