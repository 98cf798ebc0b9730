"""Backend faults over real sockets and a real vLLM: every one is an OpenAI-style JSON error
with the right status. Bad input and the same faults in-process: test_bad_input.py."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.demo import gateway_config
from tests.support.errors import assert_openai_error
from tests.support.processes import running_gateway
from tests.support.sockets import scripted_backend, tcp_backend
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]


def test_upstream_errors_pass_through_with_vllm_status_and_message(gateway_url: str) -> None:
    for stream in (False, True):
        response = httpx.post(
            gateway_url + CHAT,
            # Within the gateway's ceiling (4096), past the demo model's context (2048).
            json={"model": "chat", "messages": MESSAGES, "max_tokens": 4000, "stream": stream},
        )
        assert response.status_code == 400
        assert "max_model_len" in response.json()["error"]["message"]


def test_a_backend_that_is_too_slow_gives_504_after_the_timeout(tmp_path: Path) -> None:
    with scripted_backend() as backend:
        config = gateway_config([backend], timeouts={"response_s": 0.5})
        with running_gateway(config, tmp_path) as origin:
            for stream in (False, True):
                response = httpx.post(
                    origin + CHAT,
                    json={"model": "chat", "messages": MESSAGES, "stream": stream},
                    timeout=10,
                )
                assert_openai_error(response, 504, "backend_timeout")
                assert response.elapsed.total_seconds() < 5


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
FIRST_EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
)


@pytest.mark.parametrize(
    ("then_close", "code"), [(False, "backend_timeout"), (True, "backend_unavailable")]
)
def test_a_backend_failing_mid_stream_ends_the_stream_with_an_error_event(
    tmp_path: Path, then_close: bool, code: str
) -> None:
    reply = STREAM_HEAD + b"%x\r\n%s\r\n" % (len(FIRST_EVENT), FIRST_EVENT)
    with scripted_backend(reply, then_close=then_close) as backend:
        config = gateway_config([backend], timeouts={"stream_idle_s": 0.5})
        with running_gateway(config, tmp_path) as origin:
            api = openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)
            stream = api.chat.completions.create(model="chat", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            first = next(stream)
            assert first.model == "chat"
            assert first.choices[0].delta.content == "Hel"
            with pytest.raises(openai.APIError) as raised:
                next(stream)
            assert raised.value.code == code


@contextmanager
def endless_stream_backend(closed: list[float]) -> Iterator[str]:
    """A real TCP backend that streams an SSE event every 20 ms to every POST until the peer
    closes the connection, and notes when that happened (health GETs get an empty 200)."""
    chunk = b"%x\r\n%s\r\n" % (len(FIRST_EVENT), FIRST_EVENT)

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        try:
            while head := connection.recv(65536):
                if not head.startswith(b"POST"):
                    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                connection.sendall(STREAM_HEAD)
                while not stop.is_set():
                    connection.sendall(chunk)
                    time.sleep(0.02)
        except OSError:  # the gateway dropped the connection
            closed.append(time.monotonic())

    with tcp_backend(answer) as url:
        yield url


def test_a_client_leaving_mid_stream_drops_the_upstream_connection(tmp_path: Path) -> None:
    # vLLM aborts a request when its connection drops; this is the gateway's half of that,
    # against a backend that would stream for ever.
    closed: list[float] = []
    body = {"model": "chat", "messages": MESSAGES, "stream": True}
    with (
        endless_stream_backend(closed) as backend,
        running_gateway(gateway_config([backend]), tmp_path) as origin,
    ):
        with httpx.stream("POST", origin + CHAT, json=body, timeout=10) as response:
            assert response.status_code == 200
            assert next(line for line in response.iter_lines() if line.startswith("data: "))
            assert closed == []  # still streaming while the client reads
            left = time.monotonic()
        wait_until(lambda: bool(closed), 5, "the gateway to drop the upstream connection")
    assert closed[0] - left < 2.0


def _vllm_gauge(vllm_url: str, name: str) -> float:
    text = httpx.get(vllm_url + "/metrics").text
    found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert found, f"vLLM exports no {name}"
    return float(found.group(1))


def test_a_client_leaving_mid_stream_cancels_the_upstream_request(
    gateway_url: str, vllm_url: str
) -> None:
    asked = 2000  # about 4 s of generation for the demo model on this CPU
    body = {
        "model": "summarize",
        "messages": MESSAGES,
        "max_tokens": asked,
        "ignore_eos": True,
        "stream": True,
    }

    def idle() -> bool:
        return all(
            _vllm_gauge(vllm_url, f"vllm:num_requests_{state}") == 0
            for state in ("running", "waiting")
        )

    # The yardstick for "early": how long the whole generation takes now, on this machine
    # under whatever else it runs (about 4 s idle here). A slow or stalled CI machine
    # stretches both this and the attempts below.
    wait_until(idle, 60, "vLLM to finish earlier requests")
    started = time.monotonic()
    whole = httpx.post(gateway_url + CHAT, json={**body, "stream": False}, timeout=300)
    assert whole.json()["usage"]["completion_tokens"] == asked
    whole_s = time.monotonic() - started

    # The client leaves as soon as the first event arrives, and nothing asks vLLM anything
    # while the stream is open (its API server answers /metrics late while it streams). When
    # the machine is busy, vLLM's CPU API server falls behind its engine and holds a whole
    # stream back until the generation is done (reproduced here with two CPU-bound processes
    # beside it): such an attempt says nothing about departures, so it is repeated for up to
    # two minutes, and the test is skipped, saying so, if the machine never calms down.
    deadline = time.monotonic() + 120
    while True:
        # Alone on vLLM: a generation left over from an earlier request would slow this one's
        # first event and keep vLLM's API server too busy to notice the departure in time.
        wait_until(idle, 60, "vLLM to finish earlier requests")
        tokens_before = _vllm_gauge(vllm_url, "vllm:generation_tokens_total")
        sent = time.monotonic()
        with httpx.stream("POST", gateway_url + CHAT, json=body, timeout=300) as response:
            assert response.status_code == 200
            assert next(line for line in response.iter_lines() if line.startswith("data: "))
            left_after_s = time.monotonic() - sent  # idle: 0.03-0.05 s
        wait_until(idle, max(20.0, 3 * whole_s), "vLLM to stop generating")
        if left_after_s < whole_s / 8:
            break
        if time.monotonic() > deadline:
            pytest.skip(
                f"vLLM held every stream back (the last first event came after"
                f" {left_after_s:.2f} s of a {whole_s:.2f} s generation): too busy a machine"
                " to observe a departure; the gateway's half is tested against a TCP backend"
            )
    generated = _vllm_gauge(vllm_url, "vllm:generation_tokens_total") - tokens_before
    assert generated < asked / 2, f"vLLM generated {generated} tokens for a departed client"
