"""Waiting for a just-started local server, with real processes on loopback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.serving.embedded_vllm import free_port
from gateway.serving.readiness import NotAnswering, wait_until_answers


def test_a_server_that_comes_up_is_waited_for() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/", 30, server, "http.server")
    finally:
        server.terminate()
        server.wait()


def test_a_process_that_exits_is_reported_at_once() -> None:
    dying = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dying.wait()
    with pytest.raises(NotAnswering, match="dying exited with status 3"):
        wait_until_answers(f"http://127.0.0.1:{free_port()}/", 30, dying, "dying")


def test_nothing_answering_times_out_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(NotAnswering, match=f"did not answer at {url} within 1 s"):
        wait_until_answers(url, 1)
