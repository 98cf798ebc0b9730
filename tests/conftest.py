"""Shared fixtures: the demo model, one real vLLM server per session, gateways as real processes.

Fixtures only: the helpers they call live in `tests/support`, which tests import directly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION, write_demo_model
from gateway.config import AdaptersConfig
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from tests.support.demo import BASE_MODEL, embedded_config, gateway_config
from tests.support.processes import running_gateway


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "demo"
    write_demo_model(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_url(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM (CPU build) serving the demo base model and its three adapters."""
    port = free_port()
    adapters = {
        f"{name}@{DEMO_VERSION}": demo_model / "adapters" / name / DEMO_VERSION
        for name in DEMO_ADAPTERS
    }
    server = EmbeddedVllm(
        vllm_command(embedded_config(demo_model), AdaptersConfig(), BASE_MODEL, port, adapters),
        port,
        tmp_path_factory.mktemp("logs") / "vllm.log",
    )
    server.start()
    try:
        server.wait_ready(timeout_s=300)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway_url(
    vllm_url: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway in front of the session's vLLM, with every demo route."""
    config = gateway_config([vllm_url], demo_model / "adapters")
    with running_gateway(config, tmp_path_factory.mktemp("gw")) as origin:
        yield origin


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: a proxy variable from the environment must not reroute test traffic.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
