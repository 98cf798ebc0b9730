"""`turnout up`: vLLM plus the gateway from one command; Ctrl-C stops both, leaving no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from gateway.serving.embedded_vllm import free_port
from tests.support.demo import DEMO_ROUTES, TEST_GPU_MEMORY_UTILIZATION
from tests.support.waiting import answers, wait_until

pytestmark = pytest.mark.slow


def ask_summarize(origin: str) -> httpx.Response:
    return httpx.post(
        f"{origin}/v1/chat/completions",
        json={"model": "summarize", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 4},
        timeout=60,
    )  # fmt: skip


def test_up_serves_restarts_a_dead_vllm_and_ctrl_c_stops_all_with_no_orphans(
    demo_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "routes": DEMO_ROUTES,
                "adapters": {"store": str(demo_model / "adapters")},
                "embedded": {
                    "model": str(demo_model / "base"),
                    "gpu_memory_utilization": TEST_GPU_MEMORY_UTILIZATION,
                },
            }
        )
    )
    port = free_port()
    output = tmp_path / "up.log"
    with output.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "up", "--config", str(config),
             "--port", str(port), "--log-dir", str(tmp_path / "logs")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    origin = f"http://127.0.0.1:{port}"
    try:
        # The banner is the signal to start: the gateway is ready by the time it is printed.
        wait_until(
            lambda: up.poll() is None and "Turnout serves on" in output.read_text(),
            300,
            "turnout up's banner",
        )
        assert answers(f"{origin}/readyz")
        answer = ask_summarize(origin)
        assert answer.status_code == 200
        assert answer.headers["x-turnout-adapter"] == "summarize@v1"
        printed = output.read_text()
        assert f"Turnout serves on {origin}" in printed
        assert "support-triage" in printed
        assert "curl -s" in printed
        steps = ["Starting vLLM", "Loading 3 adapter versions onto 1 backend", "Turnout serves"]
        assert [printed.index(step) for step in steps] == sorted(
            printed.index(step) for step in steps
        )

        # vLLM dies: the gateway keeps answering (clean errors), and `turnout up` brings vLLM
        # back; the gateway reloads the adapter onto it without a restart of its own.
        (vllm,) = [c for c in psutil.Process(up.pid).children() if "vllm" in " ".join(c.cmdline())]
        vllm.kill()
        vllm.wait(timeout=30)
        during = ask_summarize(origin)
        assert during.status_code in (502, 503)
        assert during.json()["error"]["code"]
        wait_until(lambda: ask_summarize(origin).status_code == 200, 300, "vLLM to come back")
        assert "restarting it" in output.read_text()

        family = psutil.Process(up.pid).children(recursive=True)
        assert family, "vLLM should run as a child of turnout up"
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        assert up.wait(timeout=90) == 0
        _gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        assert not answers(f"{origin}/healthz")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
