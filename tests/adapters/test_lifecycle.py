"""Adapter lifecycle on real vLLM servers: loaded before traffic, refused when bad, reloaded
after a backend restart without restarting the gateway."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from adapters.base_model import profile_base_model
from adapters.demo import DEMO_VERSION
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import AdaptersConfig
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from tests.support.demo import BASE_MODEL, embedded_config, gateway_config
from tests.support.processes import running_gateway
from tests.support.sockets import closed_port_url
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PROMPT = "Please summarize the late delivery ticket."
LIMITS = AdapterLimits(max_lora_rank=16)


def greedy(origin: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    return httpx.post(f"{origin}/v1/completions", json=body, timeout=60)


def greedy_text(origin: str, model: str) -> str:
    response = greedy(origin, model)
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["text"]
    return text


def store_with(demo_model: Path, folder: Path, name: str, source: str) -> AdapterRegistry:
    """A fresh store holding one demo adapter's weights pushed under a new name."""
    registry = AdapterRegistry(str(folder))
    base = profile_base_model(demo_model / "base", BASE_MODEL)
    registry.save_base(base)
    registry.push(demo_model / "adapters" / source / DEMO_VERSION, name, base, LIMITS)
    return registry


def vllm_adapters(vllm_url: str) -> set[str]:
    cards = httpx.get(f"{vllm_url}/v1/models", timeout=10).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


def test_a_pushed_version_is_loaded_before_traffic_and_serves_its_own_weights(
    vllm_url: str, demo_model: Path, tmp_path: Path
) -> None:
    store_with(demo_model, tmp_path / "store", "triage-copy", "summarize")
    assert "triage-copy@v1" not in vllm_adapters(vllm_url)
    config = gateway_config(
        [vllm_url],
        adapters={"store": str(tmp_path / "store")},
        routes={"copy": {"stable": "triage-copy@v1"}},
    )
    with running_gateway(config, tmp_path) as origin:
        # The gateway answers /healthz only after its start-up loaded the adapter.
        assert "triage-copy@v1" in vllm_adapters(vllm_url)
        served = greedy(origin, "copy")
        assert served.headers["x-turnout-adapter"] == "triage-copy@v1"
        text = served.json()["choices"][0]["text"]
        assert text == greedy_text(vllm_url, f"summarize@{DEMO_VERSION}")
        assert text != greedy_text(vllm_url, BASE_MODEL)


def serve_expecting_refusal(config: dict[str, object], folder: Path) -> str:
    """Run `turnout serve` on a config it must refuse; returns what it printed."""
    path = folder / "refused.yaml"
    path.write_text(yaml.safe_dump({**config, "server": {"port": free_port()}}))
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    return finished.stdout + finished.stderr


def test_a_corrupted_version_is_refused_at_start_and_never_loaded(
    vllm_url: str, demo_model: Path, tmp_path: Path
) -> None:
    store_with(demo_model, tmp_path / "store", "corrupt", "summarize")
    weights = tmp_path / "store" / "corrupt" / "v1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    config = gateway_config(
        [vllm_url],
        adapters={"store": str(tmp_path / "store")},
        routes={"bad": {"stable": "corrupt@v1"}},
    )
    output = serve_expecting_refusal(config, tmp_path)
    assert "adapter corrupt@v1: refused (checksum)" in output
    assert "corrupt@v1" not in vllm_adapters(vllm_url)


def test_routing_more_versions_than_the_backends_hold_is_refused(
    demo_model: Path, tmp_path: Path
) -> None:
    registry = store_with(demo_model, tmp_path / "store", "a", "summarize")
    base = registry.base(BASE_MODEL)
    for _ in range(2):
        registry.push(demo_model / "adapters" / "summarize" / DEMO_VERSION, "a", base, LIMITS)
    config = gateway_config(
        [closed_port_url()],
        adapters={"store": str(tmp_path / "store"), "max_loras": 2},
        routes={f"r{n}": {"stable": f"a@v{n}"} for n in (1, 2, 3)},
    )
    output = serve_expecting_refusal(config, tmp_path)
    assert "routes send traffic to 3 adapter versions" in output
    assert "at most 2" in output


def test_a_restarted_backend_gets_its_adapters_back_without_a_gateway_restart(
    demo_model: Path, tmp_path: Path
) -> None:
    store_with(demo_model, tmp_path / "store", "restart", "sql-writer")
    port = free_port()
    command = vllm_command(embedded_config(demo_model), AdaptersConfig(), BASE_MODEL, port)

    def start_vllm(log: str) -> EmbeddedVllm:
        server = EmbeddedVllm(command, port, tmp_path / log)
        server.start()
        server.wait_ready(timeout_s=300)
        return server

    vllm = start_vllm("vllm-1.log")
    config = gateway_config(
        [vllm.url],
        adapters={"store": str(tmp_path / "store"), "reconcile_interval_s": 0.5},
        routes={"sql": {"stable": "restart@v1"}},
    )
    try:
        with running_gateway(config, tmp_path) as origin:
            expected = greedy_text(origin, "sql")
            vllm.stop()
            down = greedy(origin, "sql")
            assert down.status_code in (502, 503)
            vllm = start_vllm("vllm-2.log")
            answers: list[httpx.Response] = []
            wait_until(
                lambda: answers.append(greedy(origin, "sql")) or answers[-1].status_code == 200,
                60,
                "the route to serve again",
            )
            for answer in answers[:-1]:
                assert answer.status_code == 503
                assert answer.headers["retry-after"]
                assert answer.json()["error"]["code"] == "adapter_not_ready"
            assert answers[-1].json()["choices"][0]["text"] == expected
            assert "restart@v1" in vllm_adapters(vllm.url)
    finally:
        vllm.stop()
    shutil.rmtree(tmp_path / "store")
