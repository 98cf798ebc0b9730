"""`turnout bench overhead`: the gateway's added latency and throughput against the same upstream.

In one run, for concurrency 1 and 16, wrk calls the upstream directly and then through a
gateway (one worker) in front of it. The upstream is the instant stub (the gateway's own cost)
or the real vLLM with the demo model. With two or more CPUs the processes are pinned so that
neither side steals the other's core: against the stub, the gateway gets CPU 0 and wrk and the
stub share CPU 1; against vLLM, whose CPU build spins OpenMP threads on every core it is given,
vLLM gets CPU 1 to itself and the gateway and wrk share CPU 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml

from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from gateway.bench.wrk import LoadResult, run_wrk
from gateway.config import TurnoutConfig, load_config
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from gateway.serving.readiness import wait_until_answers

CONCURRENCY_LEVELS = (1, 16)
ROUNDS = {"stub": 1, "vllm": 3}
ROUTE = "bench"
STUB_ADAPTER = "bench@v1"
TARGETS = {"added_p50_ms_at_1": 0.5, "added_p99_ms_at_16": 2.0, "gateway_rps_at_16": 3000.0}


def _two_cpus() -> tuple[int, int] | None:
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else None


@contextmanager
def _process(
    command: list[str], cpu: int | None, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    process = subprocess.Popen(command, preexec_fn=pin, stdout=subprocess.DEVNULL)
    try:
        wait_until_answers(ready_url, 60, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def push_stub_adapter(folder: Path) -> Path:
    """A zero-weight adapter in a fresh store, so the gateway routes to it as in production."""
    registry = AdapterRegistry(str(folder / "adapters"))
    base = synthetic_base_profile(TurnoutConfig().base_model)
    registry.save_base(base)
    write_zero_adapter(folder / "stub-adapter")
    name, _, version = STUB_ADAPTER.partition("@")
    registry.push(
        folder / "stub-adapter", name, base, AdapterLimits(max_lora_rank=16), version=version
    )
    return folder / "adapters"


def _gateway_command(
    folder: Path, upstream_url: str, route_target: str | None, port: int
) -> list[str]:
    config = {
        "server": {"port": port},
        "backends": [{"url": upstream_url}],
        "adapters": {"store": str(folder / "adapters")},
        "routes": {ROUTE: {"stable": route_target} if route_target else {}},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]


def _body(model: str, max_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Summarise: the order arrived late."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    )


def _level_report(
    concurrency: int, upstream: str, direct: LoadResult, gateway: LoadResult
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "concurrency": concurrency,
        "upstream": upstream,
        "direct": direct.as_dict(),
        "gateway": gateway.as_dict(),
        "added_p50_ms": round(gateway.p50_ms - direct.p50_ms, 3),
        "added_p99_ms": round(gateway.p99_ms - direct.p99_ms, 3),
        "gateway_rps_ratio": round(gateway.requests_per_s / direct.requests_per_s, 3),
    }
    if upstream == "stub" and concurrency == 1:
        report["target_added_p50_ms"] = TARGETS["added_p50_ms_at_1"]
        report["meets_target"] = report["added_p50_ms"] <= TARGETS["added_p50_ms_at_1"]
    if upstream == "stub" and concurrency == 16:
        report["target_added_p99_ms"] = TARGETS["added_p99_ms_at_16"]
        report["target_gateway_rps"] = TARGETS["gateway_rps_at_16"]
        report["meets_target"] = (
            report["added_p99_ms"] <= TARGETS["added_p99_ms_at_16"]
            and gateway.requests_per_s >= TARGETS["gateway_rps_at_16"]
        )
    return report


def _measure(
    direct_url: str, direct_model: str, gateway_url: str, max_tokens: int,
    duration_s: float, load_cpu: int | None, upstream: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Direct and gateway runs alternate, in `ROUNDS[upstream]` rounds, so drift in the
    upstream (a CPU model server warms up and wanders) falls on both sides alike."""
    bodies = {"direct": _body(direct_model, max_tokens), "gateway": _body(ROUTE, max_tokens)}
    urls = {"direct": direct_url, "gateway": gateway_url}
    # Warm both paths (connection pools, caches) before anything is recorded.
    for side in ("direct", "gateway"):
        run_wrk(urls[side], bodies[side], 16, 2, load_cpu)
    reports = []
    for concurrency in CONCURRENCY_LEVELS:
        runs: dict[str, list[LoadResult]] = {"direct": [], "gateway": []}
        for round_index in range(ROUNDS[upstream]):
            order = ("direct", "gateway") if round_index % 2 == 0 else ("gateway", "direct")
            for side in order:
                runs[side].append(
                    run_wrk(urls[side], bodies[side], concurrency, duration_s, load_cpu)
                )
        direct, gateway = LoadResult.median(runs["direct"]), LoadResult.median(runs["gateway"])
        reports.append(_level_report(concurrency, upstream, direct, gateway))
    return reports


def run_overhead_benchmark(
    upstream: str, duration_s: float, config_path: Path
) -> list[dict[str, Any]]:
    """One report per concurrency level; see the module docstring for the set-up."""
    from gateway.bench.wake_probe import machine_wake_report

    cpus = _two_cpus()
    # Before any thread or server starts: the probe forks.
    machine = machine_wake_report(cpus)
    gateway_cpu = load_cpu = model_cpu = None
    if cpus is not None:
        gateway_cpu = cpus[0]
        load_cpu, model_cpu = (cpus[1], None) if upstream == "stub" else (cpus[0], cpus[1])
    gateway_port = free_port()
    path = "/v1/chat/completions"
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        folder = Path(scratch)
        if upstream == "stub":
            upstream_port = free_port()
            upstream_url = f"http://127.0.0.1:{upstream_port}"
            running.enter_context(
                _process(
                    [
                        sys.executable,
                        "-m",
                        "gateway.bench.stub_upstream",
                        "--port",
                        str(upstream_port),
                    ],
                    load_cpu,
                    f"{upstream_url}/health",
                )
            )
            push_stub_adapter(folder)
            direct_model, route_target, max_tokens = STUB_ADAPTER, STUB_ADAPTER, 16
        else:
            config = load_config(config_path)
            upstream_port = free_port()
            vllm = EmbeddedVllm(
                vllm_command(config.embedded, config.adapters, config.base_model, upstream_port),
                upstream_port,
                folder / "vllm.log",
                env={"VLLM_CPU_OMP_THREADS_BIND": str(model_cpu)} if model_cpu is not None else {},
            )
            vllm.start()
            running.callback(vllm.stop)
            vllm.wait_ready(config.embedded.startup_timeout_s)
            upstream_url = vllm.url
            direct_model, route_target, max_tokens = config.base_model, None, 16
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        running.enter_context(
            _process(
                _gateway_command(folder, upstream_url, route_target, gateway_port),
                gateway_cpu,
                f"{gateway_url}/healthz",
            )
        )
        reports = _measure(
            upstream_url + path, direct_model, gateway_url + path, max_tokens,
            duration_s, load_cpu, upstream,
        )  # fmt: skip
        return [{**report, "machine": machine} for report in reports]
