"""The gateway and the benchmark's stub upstream as real processes on free ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import yaml

from gateway.serving.embedded_vllm import free_port
from tests.support.waiting import answers, wait_until


@contextmanager
def running_gateway(config: dict[str, Any], folder: Path) -> Iterator[str]:
    """`turnout serve` as a real process on a free port; yields its origin."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    path = folder / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (folder / f"gateway-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and answers(f"{origin}/healthz"), 30, "the gateway"
        )
        yield origin
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextmanager
def serving_module(module: str, *options: str, what: str) -> Iterator[str]:
    """`python -m module --port PORT *options` as a real process on a free port, once its
    `/health` answers; yields its origin. `what` names it in a time-out."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *options])
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{origin}/health"), 30, what)
        yield origin
    finally:
        process.terminate()
        process.wait(timeout=30)


def stub_upstream(record: bool = False) -> AbstractContextManager[str]:
    """The benchmark's instant OpenAI-compatible upstream, as a real process on a free port;
    with `record`, `GET /recorded` on it returns the bodies it received since the last call."""
    options = ["--record"] if record else []
    return serving_module("gateway.bench.stub_upstream", *options, what="the stub upstream")


def paced_stub_upstream(chunks: int, interval_ms: float) -> AbstractContextManager[str]:
    """The streaming benchmark's upstream (`gateway.bench.stream_stub`: every stream `chunks`
    events `interval_ms` apart) as a real process on a free port; yields its origin."""
    options = ["--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    return serving_module("gateway.bench.stream_stub", *options, what="the paced stub upstream")


def simulated_vllm(*options: str) -> AbstractContextManager[str]:
    """`gateway.bench.fleet_sim` as a real process on a free port: vLLM's adapter load/unload
    endpoints, its 404 for an adapter it does not hold and its own LRU, no model. `options` are
    the simulator's flags (`--resident`, `--batch`, `--load-ms`, ...)."""
    return serving_module("gateway.bench.fleet_sim", *options, what="a simulated backend")
