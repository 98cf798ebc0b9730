"""Graceful shutdown: SIGTERM stops new connections, lets a running stream finish, and the
process exits cleanly with its audit log flushed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.serving.embedded_vllm import free_port
from tests.support.demo import gateway_config
from tests.support.waiting import answers, wait_until
from training.capture import read_captures

pytestmark = pytest.mark.slow


def test_sigterm_drains_a_running_stream_and_refuses_new_connections(
    vllm_url: str, tmp_path: Path
) -> None:
    port = free_port()
    captures = tmp_path / "captures.db"
    config = gateway_config(
        [vllm_url],
        server={"port": port},
        state={"dir": str(tmp_path)},
        capture={"path": str(captures), "default": {"success_sample_rate": 1.0}},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    )
    origin = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{origin}/healthz"), 60, "the gateway")
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 600,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines: list[str] = []
    first_event = threading.Event()

    def read_stream() -> None:
        headers = {"x-request-id": "drained-stream"}
        with httpx.stream(
            "POST", f"{origin}/v1/chat/completions", json=body, headers=headers, timeout=120
        ) as r:
            for line in r.iter_lines():
                lines.append(line)
                first_event.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert first_event.wait(60)
    gateway.send_signal(signal.SIGTERM)
    wait_until(lambda: not answers(f"{origin}/healthz"), 10, "new connections to be refused")
    reader.join(timeout=120)
    # uvicorn re-raises the signal once it has drained, so the status is SIGTERM's.
    assert gateway.wait(timeout=60) in (0, -signal.SIGTERM)
    assert [line for line in lines if line][-1] == "data: [DONE]"
    usage = [line for line in lines if '"usage"' in line and '"completion_tokens":600' in line]
    assert usage, "the stream was cut short"
    # The answer's capture record was written before the process exited: nothing lost.
    (stored,) = [
        c for c in read_captures(captures) if c.record.client_request_id == "drained-stream"
    ]
    assert stored.record.finish_reason == "length"
    assert len(stored.record.output) > 100
