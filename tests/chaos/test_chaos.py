"""Chaos with a real vLLM of its own: frozen, killed mid-stream and restarted under load, and a
config file corrupted while serving. The gateway is never restarted; clients only ever see
answers or clean OpenAI-style errors."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.config import AdaptersConfig
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from tests.support.demo import BASE_MODEL, embedded_config, gateway_config
from tests.support.processes import running_gateway
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
SHORT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Chaos:
    vllm: EmbeddedVllm
    origin: str
    config_path: Path
    folder: Path


@pytest.fixture(scope="module")
def chaos(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    folder = tmp_path_factory.mktemp("chaos")
    port = free_port()
    vllm = EmbeddedVllm(
        vllm_command(embedded_config(demo_model), AdaptersConfig(), BASE_MODEL, port),
        port,
        folder / "vllm.log",
    )
    vllm.start()
    try:
        vllm.wait_ready(300)
        config = gateway_config(
            [vllm.url],
            timeouts={"response_s": 3, "stream_idle_s": 3},
            admission={"max_concurrent": 1, "max_queued": 1, "queue_timeout_s": 20},
            breaker={"consecutive_failures": 1000, "min_calls": 1000},
            state={"dir": str(folder / "state"), "config_poll_s": 0.2},
        )
        with running_gateway(config, folder) as origin:
            path = folder / f"gateway-{origin.rsplit(':', 1)[1]}.yaml"
            yield Chaos(vllm, origin, path, folder)
    finally:
        vllm.stop()


@dataclass
class Load:
    """Requests in a loop from a thread; every answer's status and error code, in order."""

    origin: str
    results: list[tuple[int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                answer = client.post(self.origin + CHAT, json=SHORT)
                code = answer.json()["error"]["code"] if answer.status_code >= 400 else None
                self.results.append((answer.status_code, code))

    def stop(self) -> list[tuple[int, str | None]]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.results


def test_vllm_killed_mid_stream_and_restarted_under_load(chaos: Chaos) -> None:
    body = {**SHORT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", chaos.origin + CHAT, json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 1:
                # Frozen at once (it can generate nothing more), then killed: a crash mid-stream.
                os.killpg(chaos.vllm.pid or 0, signal.SIGSTOP)
                chaos.vllm.stop(grace_s=0)
    events = [line for line in lines if line.startswith("data: ")]
    assert '"error"' in events[-1]
    assert "backend" in events[-1]

    load = Load(chaos.origin)
    time.sleep(2)  # the outage, under load
    chaos.vllm.start()
    chaos.vllm.wait_ready(300)
    wait_until(lambda: len(load.results) > 0 and load.results[-1][0] == 200, 60, "recovery")
    time.sleep(1)
    results = load.stop()
    statuses = [status for status, _ in results]
    first_ok = statuses.index(200)
    assert all(status in (502, 503) for status in statuses[:first_ok])
    assert all(code for _, code in results[:first_ok])
    assert set(statuses[first_ok:]) == {200}, "errors after recovery"


def test_a_frozen_backend_times_out_and_the_queue_sheds(chaos: Chaos) -> None:
    os.killpg(chaos.vllm.pid or 0, signal.SIGSTOP)
    try:
        with httpx.Client(timeout=30) as client:
            threads = [
                threading.Thread(
                    target=lambda: results.append(client.post(chaos.origin + CHAT, json=SHORT))
                )
                for _ in range(4)
            ]
            results: list[httpx.Response] = []
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        codes = sorted(r.json()["error"]["code"] for r in results)
        assert "backend_timeout" in codes
        assert "overloaded" in codes
        assert set(codes) <= {"backend_timeout", "overloaded"}
    finally:
        os.killpg(chaos.vllm.pid or 0, signal.SIGCONT)
    wait_until(
        lambda: httpx.post(chaos.origin + CHAT, json=SHORT).status_code == 200, 60, "recovery"
    )


def test_a_config_corrupted_under_load_leaves_the_old_one_serving(chaos: Chaos) -> None:
    good = chaos.config_path.read_text()
    load = Load(chaos.origin)
    try:
        chaos.config_path.write_text("routes: {chat: {stable: [broken")
        time.sleep(1.5)  # several polls of the file, under load
        chaos.config_path.write_text(good.replace("chat: {}", "chat: {stable: 'nope@v1'}"))
        time.sleep(1.5)
    finally:
        results = load.stop()
        chaos.config_path.write_text(good)
    assert results
    assert {status for status, _ in results} == {200}
    metrics = httpx.get(chaos.origin + "/metrics").text.splitlines()
    (rejected,) = [m for m in metrics if m.startswith('turnout_config_reloads_total{result="rej')]
    assert float(rejected.rsplit(" ", 1)[1]) >= 2
