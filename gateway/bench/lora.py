"""`turnout bench lora`: generation throughput through the gateway on the base, one adapter, and
spread over 3 and 8 adapters, plus the cold-load time of one adapter, against a real vLLM.

Adapter count is the variable: every adapter holds the same demo weights under its own vLLM name,
so vLLM treats each as a separate LoRA (its own slot), and only the switching cost differs.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from adapters.base_model import profile_base_model
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import AdaptersConfig, TurnoutConfig, load_config
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from gateway.serving.readiness import wait_until_answers
from gateway.upstream.http1_pool import ConnectionPool, Origin

SPREADS = {"base": 0, "one_adapter": 1, "three_adapters": 3, "eight_adapters": 8}
SOURCE_ADAPTER = "summarize"
CONCURRENCY = 8
MAX_TOKENS = 32
TARGET_SPREAD_RATIO = 0.9
_JSON = b"content-type: application/json\r\n"


def _prepare_store(config: TurnoutConfig, folder: Path) -> AdapterRegistry:
    """Eight versions of one demo adapter, each its own vLLM name."""
    source_store = AdapterRegistry(config.adapters.store)
    source = source_store.manifest(SOURCE_ADAPTER, "v1")
    registry = AdapterRegistry(str(folder / "store"))
    base = profile_base_model(Path(config.embedded.model), config.base_model)
    registry.save_base(base)
    raw = folder / "raw"
    raw.mkdir()
    for file_name, content in source_store.read_files(source).items():
        (raw / file_name).write_bytes(content)
    limits = AdapterLimits(max_lora_rank=config.adapters.max_lora_rank)
    for index in range(max(SPREADS.values()) + 1):  # one more: the cold-load probe
        registry.push(raw, f"bench-{index}", base, limits, version="v1")
    return registry


def _gateway_config(folder: Path, vllm_url: str, base_model: str, adapters: AdaptersConfig) -> Path:
    routes: dict[str, dict[str, str]] = {"base": {}}
    routes.update({f"r{i}": {"stable": f"bench-{i}@v1"} for i in range(max(SPREADS.values()))})
    config = {
        "server": {"port": free_port()},
        "base_model": base_model,
        "backends": [{"url": vllm_url}],
        "adapters": {**adapters.model_dump(), "store": str(folder / "store")},
        "routes": routes,
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _drive(origin: Origin, models: list[str], duration_s: float) -> dict[str, float]:
    """CONCURRENCY closed-loop clients cycling over `models`; completion tokens per second."""
    pool = ConnectionPool(connect_timeout_s=5)
    turn = itertools.cycle(models)
    tokens = 0
    first_latencies: dict[str, float] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal tokens
        while time.perf_counter() < deadline:
            model = next(turn)
            body = orjson.dumps(
                {"model": model, "prompt": "Summarise the ticket:", "max_tokens": MAX_TOKENS,
                 "temperature": 0, "ignore_eos": True}
            )  # fmt: skip
            started = time.perf_counter()
            response = await pool.request(origin, b"POST", "/v1/completions", body, _JSON)
            payload = orjson.loads(await response.read())
            response.finish()
            if response.status != 200:
                raise RuntimeError(f"{model}: {response.status} {payload}")
            elapsed = time.perf_counter() - started
            first_latencies.setdefault(model, elapsed)
            latencies.append(elapsed)
            tokens += payload["usage"]["completion_tokens"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    pool.close()
    return {
        "tokens_per_s": tokens / elapsed,
        "p50_s": statistics.median(latencies),
        "slowest_first_request_s": max(first_latencies.values()),
    }


def _cold_load_s(vllm_url: str, registry: AdapterRegistry) -> float:
    """One adapter loaded through vLLM's runtime endpoint, as the gateway's loader does."""
    import urllib.request

    folder = registry.local_folder(f"bench-{max(SPREADS.values())}", "v1")
    assert folder is not None
    body = orjson.dumps({"lora_name": "cold-probe@v1", "lora_path": str(folder)})
    request = urllib.request.Request(
        f"{vllm_url}/v1/load_lora_adapter", body, {"content-type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def run_lora_benchmark(config_path: Path, duration_s: float) -> dict[str, Any]:
    config = load_config(config_path)
    adapters = config.adapters.model_copy(update={"max_loras": 8, "max_cpu_loras": 10})
    with tempfile.TemporaryDirectory(prefix="turnout-bench-lora-") as tmp:
        folder = Path(tmp)
        registry = _prepare_store(config, folder)
        port = free_port()
        vllm = EmbeddedVllm(
            vllm_command(config.embedded, adapters, config.base_model, port),
            port,
            folder / "vllm.log",
        )
        vllm.start()
        gateway: subprocess.Popen[bytes] | None = None
        try:
            vllm.wait_ready(config.embedded.startup_timeout_s)
            cold_load_s = _cold_load_s(vllm.url, registry)
            gateway_config = _gateway_config(folder, vllm.url, config.base_model, adapters)
            gateway_port = yaml.safe_load(gateway_config.read_text())["server"]["port"]
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(gateway_config)],
                stdout=subprocess.DEVNULL,
                stderr=(folder / "gateway.log").open("wb"),
            )
            healthz = f"http://127.0.0.1:{gateway_port}/healthz"
            wait_until_answers(healthz, 120, gateway, "the gateway")
            origin = Origin("http", "127.0.0.1", gateway_port)
            asyncio.run(_drive(origin, ["base", "r0"], min(duration_s, 3)))  # warm-up
            results = {
                label: asyncio.run(
                    _drive(origin, [f"r{i}" for i in range(spread)] or ["base"], duration_s)
                )
                for label, spread in SPREADS.items()
            }
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            vllm.stop()
    tokens = {label: round(r["tokens_per_s"], 1) for label, r in results.items()}
    ratio = tokens["eight_adapters"] / tokens["one_adapter"]
    return {
        "tokens_per_s": tokens,
        "cold_load_s": round(cold_load_s, 3),
        "eight_over_one_adapter": round(ratio, 3),
        "target_eight_over_one_adapter": TARGET_SPREAD_RATIO,
        "meets_target": ratio >= TARGET_SPREAD_RATIO,
        "p50_latency_s": {label: round(r["p50_s"], 3) for label, r in results.items()},
        "slowest_first_request_s": {
            label: round(r["slowest_first_request_s"], 3) for label, r in results.items()
        },
        "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS,
        "duration_s": duration_s,
    }
