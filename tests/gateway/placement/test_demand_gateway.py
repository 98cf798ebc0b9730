"""Demand placement through the gateway as a process, in front of two simulated vLLM backends
(`gateway.bench.fleet_sim`: vLLM's load/unload endpoints, its 404 for an adapter it does not
hold, and its own LRU of `--max-cpu-loras`), with the official OpenAI client.

Twelve routes over distinct adapter versions share four slots; a version unloaded behind the
gateway's back (as a vLLM restart does) gets vLLM's 404, which the gateway answers by loading it
again and retrying: never an answer from another adapter, never a 5xx.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gateway.protection.auth import issue_key
from tests.support.demo import BASE_MODEL, demo_weights_store
from tests.support.processes import running_gateway, simulated_vllm

ADAPTERS = 12
ADMIN = issue_key()


@pytest.fixture(scope="module")
def store(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve adapter versions (the demo weights under twelve names) and the base profile."""
    return demo_weights_store(demo_model, tmp_path_factory.mktemp("demand"), ADAPTERS)


@pytest.fixture(scope="module")
def sim_backends() -> Iterator[list[str]]:
    with ExitStack() as stack:
        flags = ("--resident", "2", "--batch", "2")
        yield [stack.enter_context(simulated_vllm(*flags)) for _ in range(2)]


@pytest.fixture(scope="module")
def gateway(
    store: Path, sim_backends: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    routes: dict[str, dict[str, object]] = {
        f"r{i}": {"stable": f"task-{i}@v1"} for i in range(ADAPTERS - 1)
    }
    routes["pinned"] = {"stable": f"task-{ADAPTERS - 1}@v1", "warm": True}
    folder = tmp_path_factory.mktemp("gw")
    admins = folder / "admins.yaml"
    admins.write_text(yaml.safe_dump({"admins": {"ops": [{"sha256": ADMIN.sha256}]}}))
    config = {
        "base_model": BASE_MODEL,
        "backends": [{"url": url} for url in sim_backends],
        "adapters": {
            "store": str(store),
            "placement": "demand",
            "max_loras": 2,
            "max_cpu_loras": 2,
            "load_wait_s": 20,
            # The reload-and-retry on vLLM's 404 is what this module tests: no listing of the
            # backends' adapters forgets a version first (test_reconcile_gateway.py does).
            "reconcile_interval_s": 3600,
        },
        "auth": {"admin_keys_file": str(admins)},
        "routes": routes,
    }
    with running_gateway(config, folder) as origin:
        yield origin


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_twelve_adapters_on_two_backends_of_two_slots_answer_each_from_its_own(
    gateway: str, sim_backends: list[str]
) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    rng = random.Random(7)
    routes = [f"r{i}" for i in range(ADAPTERS - 1)] + ["pinned"]
    asked = [rng.choice(routes) for _ in range(120)]

    def ask(route: str) -> tuple[str, str]:
        answer = client.completions.create(model=route, prompt="hi", max_tokens=4, temperature=0)
        return route, answer.choices[0].text

    def stream(route: str) -> tuple[str, str]:
        events = client.completions.create(
            model=route, prompt="hi", max_tokens=4, temperature=0, stream=True
        )
        return route, "".join(event.choices[0].text for event in events)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, asked))
    for route, text in results:
        index = ADAPTERS - 1 if route == "pinned" else int(route[1:])
        assert text == f"adapter:task-{index}@v1", (route, text)
    with ThreadPoolExecutor(4) as pool:  # streams hold their version until they end
        streamed = list(pool.map(stream, [f"r{i}" for i in range(ADAPTERS - 1)] * 2))
    for route, text in streamed:
        assert text == f"adapter:task-{int(route[1:])}@v1", (route, text)
    # Every backend forgets task-0 (a restart would): the next request reloads and retries.
    assert ask("r0") == ("r0", "adapter:task-0@v1")  # resident now, as the gateway knows
    for backend in sim_backends:
        httpx.post(backend + "/v1/unload_lora_adapter", json={"lora_name": "task-0@v1"})
    for _ in range(3):
        assert ask("r0") == ("r0", "adapter:task-0@v1")
    metrics = httpx.get(gateway + "/metrics", timeout=10).text
    loads = "turnout_adapter_placement_loads_total"
    assert metric(metrics, loads, reason="warm") == 1  # `pinned`, before any request
    assert metric(metrics, loads, reason="first_use") >= ADAPTERS - 1
    assert metric(metrics, loads, reason="failed") == 0
    assert metric(metrics, "turnout_adapter_evictions_total", reason="capacity") > 0
    assert metric(metrics, "turnout_adapter_evictions_total", reason="lost") >= 1
    assert metric(metrics, "turnout_adapter_placement_requests_total", result="hit") > 0
    assert re.search(r"turnout_adapter_cold_start_wait_seconds_count\{[^}]*\} [1-9]", metrics)


def test_adapters_placement_shows_which_backend_holds_what_and_why(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    client.completions.create(model="r3", prompt="hi", max_tokens=4, temperature=0)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "adapters", "placement", "--url", gateway],
        env={**os.environ, "TURNOUT_ADMIN_KEY": ADMIN.key},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    view = json.loads(done.stdout)
    assert view["placement"] == "demand"
    held = {
        entry["version"]: entry for backend in view["backends"] for entry in backend["versions"]
    }
    assert held["task-11@v1"]["warm"] is True
    assert held["task-11@v1"]["reason"] == "warm"
    assert all(len(backend["versions"]) <= 2 for backend in view["backends"])
    refused = httpx.get(gateway + "/admin/placement", timeout=10)
    assert refused.status_code == 401
