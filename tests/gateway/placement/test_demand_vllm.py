"""Demand placement against two real vLLM servers (CPU build) that keep 2 adapters each:
twelve routes over twelve distinct adapter versions, concurrent clients, loads and evictions
all the while, and every answer at temperature 0 equal to its adapter's reference answer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import safetensors.numpy

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import AdaptersConfig
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from tests.support.demo import BASE_MODEL, embedded_config
from tests.support.processes import running_gateway

pytestmark = pytest.mark.slow

SCALES = (0.5, 1.0, 2.0, 4.0)  # x 3 demo adapters = 12 distinct versions
LIMITS = AdaptersConfig(max_loras=2, max_cpu_loras=2)


@pytest.fixture(scope="module")
def store(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Twelve versions with weights of their own: each demo adapter with lora_B scaled 4 ways."""
    source = AdapterRegistry(str(demo_model / "adapters"))
    folder = tmp_path_factory.mktemp("vllm-demand")
    registry = AdapterRegistry(str(folder / "store"))
    base = source.base(BASE_MODEL)
    registry.save_base(base)
    names = []
    for adapter in DEMO_ADAPTERS:
        files = source.read_files(source.manifest(adapter, DEMO_VERSION))
        for index, scale in enumerate(SCALES):
            raw = folder / f"{adapter}-{index}"
            raw.mkdir()
            (raw / "adapter_config.json").write_bytes(files["adapter_config.json"])
            tensors = safetensors.numpy.load(files["adapter_model.safetensors"])
            scaled = {
                key: (value * scale).astype(value.dtype) if "lora_B" in key else value
                for key, value in tensors.items()
            }
            safetensors.numpy.save_file(scaled, str(raw / "adapter_model.safetensors"))
            name = f"{adapter}-{index}"
            registry.push(raw, name, base, AdapterLimits(max_lora_rank=16), version="v1")
            names.append(name)
    return folder / "store", names


@pytest.fixture(scope="module")
def two_vllms(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = []
    try:
        for index in range(2):
            port = free_port()
            command = vllm_command(embedded_config(demo_model), LIMITS, BASE_MODEL, port)
            servers.append(EmbeddedVllm(command, port, logs / f"vllm-{index}.log"))
            servers[-1].start()
        for server in servers:
            server.wait_ready(timeout_s=600)
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.stop()


def test_twelve_distinct_adapters_on_two_vllms_of_two_slots_answer_as_their_reference(
    store: tuple[Path, list[str]], two_vllms: list[str], tmp_path: Path
) -> None:
    folder, names = store
    config = {
        "base_model": BASE_MODEL,
        "backends": [{"url": url} for url in two_vllms],
        "adapters": {
            "store": str(folder),
            "placement": "demand",
            "max_loras": LIMITS.max_loras,
            "max_cpu_loras": LIMITS.max_cpu_loras,
            "load_wait_s": 300,
        },
        "timeouts": {"response_s": 300},
        "routes": {name: {"stable": f"{name}@v1"} for name in names},
    }
    with running_gateway(config, tmp_path) as gateway:
        client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)

        def ask(route: str) -> tuple[str, str]:
            answer = client.completions.create(
                model=route, prompt="The quick brown fox", max_tokens=8, temperature=0, timeout=300
            )
            return route, answer.choices[0].text

        reference = dict(ask(name) for name in names)  # one at a time: each loads, some evict
        assert len(set(reference.values())) >= 6, reference  # a mix-up would show
        rng = random.Random(3)
        asked = [rng.choice(names) for _ in range(48)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, asked))
        assert [text for _, text in answers] == [reference[route] for route, _ in answers]
        metrics = httpx.get(gateway + "/metrics", timeout=10).text
    evictions = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("turnout_adapter_evictions_total{") and 'reason="capacity"' in line
    ]
    assert sum(evictions) >= len(names) - 4  # 12 versions through 4 slots
