"""Shared fixtures: the demo model, one real vLLM server per session, gateways as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION, write_demo_model
from gateway.config import AdaptersConfig, EmbeddedConfig
from gateway.embedded import EmbeddedVllm, free_port, vllm_command

BASE_MODEL = "tiny"
# The test vLLM reserves a tenth of the RAM for its KV cache: two can run side by side.
TEST_GPU_MEMORY_UTILIZATION = 0.1
DEMO_ROUTES: dict[str, dict[str, str]] = {
    **{name: {"stable": f"{name}@{DEMO_VERSION}"} for name in DEMO_ADAPTERS},
    "chat": {},
}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "demo"
    write_demo_model(folder)
    return folder


def embedded_config(demo_model: Path) -> EmbeddedConfig:
    return EmbeddedConfig(
        model=str(demo_model / "base"), gpu_memory_utilization=TEST_GPU_MEMORY_UTILIZATION
    )


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


BASE_ROUTE_ONLY = {"chat": {}}


def gateway_config(
    backends: list[str], store: Path | None = None, **sections: Any
) -> dict[str, Any]:
    """A gateway config for `backends`: the demo routes (whose adapters live in `store`), or
    with `store=None` only the bare-base route `chat`."""
    config: dict[str, Any] = {
        "base_model": BASE_MODEL,
        "backends": [{"url": url} for url in backends],
        "routes": DEMO_ROUTES if store is not None else BASE_ROUTE_ONLY,
    }
    if store is not None:
        config["adapters"] = {"store": str(store)}
    config.update(sections)
    return config


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


@pytest.fixture(scope="session")
def gateway_url(
    vllm_url: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway in front of the session's vLLM, with every demo route."""
    config = gateway_config([vllm_url], demo_model / "adapters")
    with running_gateway(config, tmp_path_factory.mktemp("gw")) as origin:
        yield origin


@contextmanager
def tcp_backend(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A real TCP server on loopback: `answer(connection, stop)` runs on a thread of its own
    for every connection accepted; `stop` is set when the server shuts down."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except TimeoutError:
                continue
            accepted.append(connection)
            threading.Thread(target=answer, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


@contextmanager
def scripted_backend(reply: bytes = b"", then_close: bool = False) -> Iterator[str]:
    """A real TCP server that reads a request, sends `reply`, then hangs (or closes).

    With no reply it is a backend that accepts and never answers; with the head and first
    event of an SSE stream it is a backend that stalls or dies mid-stream.
    """

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        # Every request on the connection gets `reply` (health probes reuse connections).
        try:
            while connection.recv(65536):
                connection.sendall(reply)
                if then_close:
                    connection.close()
                    return
        except OSError:
            return

    with tcp_backend(answer) as url:
        yield url


def closed_port_url() -> str:
    """An origin where nothing listens: a backend that is down."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: a proxy variable from the environment must not reroute test traffic.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def stub_upstream(record: bool = False) -> Iterator[str]:
    """The benchmark's instant OpenAI-compatible upstream, as a real process on a free port;
    with `record`, `GET /recorded` on it returns the bodies it received since the last call."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.bench.stub_upstream", "--port", str(port)]
        + (["--record"] if record else [])
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{origin}/health"), 30, "the stub upstream")
        yield origin
    finally:
        process.terminate()
        process.wait(timeout=30)
