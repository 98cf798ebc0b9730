"""Bad input, upstream errors and backend faults, in-process: the gateway built by `create_app`
in front of the in-memory upstream. Every one is an OpenAI-style JSON error with the right
status. The same faults over real sockets (timeouts, streams cut mid-way, a client leaving
a real vLLM): test_bad_input_and_faults.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from gateway.errors import BackendTimeout, BackendUnavailable
from tests.support.demo import gateway_config
from tests.support.errors import assert_openai_error
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.upstream import Answer, InMemoryUpstream
from tests.support.waiting import wait_until

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]
BACKEND = "http://vllm.test"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with in_process_gateway(
        gateway_config([BACKEND]), tmp_path_factory.mktemp("bad-input")
    ) as running:
        yield running


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b'{"model": "chat", "messages": [', 400, "invalid_json", None),
        (b"[1, 2, 3]", 400, "invalid_request", None),
        (b"", 400, "invalid_json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 422, "invalid_value", "model"),
        (b'{"model": "chat"}', 422, "invalid_value", "messages"),
        (b'{"model": "chat", "messages": []}', 422, "invalid_value", "messages"),
        (
            b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}',
            422,
            "invalid_value",
            "model",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}],'
            b' "temperature": "hot"}',
            422,
            "invalid_value",
            "temperature",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "wizard", "content": "hi"}]}',
            422,
            "invalid_value",
            "messages.0.role",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
            422,
            "invalid_value",
            "max_tokens",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}],'
            b' "guided_json": {"type": "object"}}',
            400,
            "invalid_request",
            "guided_json",
        ),
        (
            b'{"model": "no-such-route", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "model_not_found",
            "model",
        ),
    ],
)
def test_bad_chat_requests_get_openai_errors(
    gateway: InProcessGateway, body: bytes, status: int, code: str, param: str | None
) -> None:
    gateway.upstream.forwarded()
    response = gateway.client.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, status, code)
    assert error["param"] == param
    assert gateway.upstream.forwarded() == []


def test_completions_without_a_prompt_is_rejected(gateway: InProcessGateway) -> None:
    response = gateway.client.post("/v1/completions", json={"model": "chat"})
    assert assert_openai_error(response, 422, "invalid_value")["param"] == "prompt"


def test_the_openai_client_sees_an_unknown_route_as_not_found(gateway: InProcessGateway) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        gateway.openai().chat.completions.create(model="no-such-route", messages=MESSAGES)  # type: ignore[arg-type]


def test_unknown_paths_and_wrong_methods_are_json_errors(gateway: InProcessGateway) -> None:
    assert_openai_error(gateway.client.get("/v1/nothing"), 404, "not_found")
    assert_openai_error(gateway.client.get(CHAT), 405, "method_not_allowed")
    # vLLM's own control endpoints are never reachable through the gateway.
    for path in ("/v1/load_lora_adapter", "/tokenize", "/pause"):
        assert_openai_error(gateway.client.post(path, json={}), 404, "not_found")


def test_the_gateway_keeps_serving_after_bad_input(gateway: InProcessGateway) -> None:
    for body in (b"{", b"null", b'{"model": []}', b"\xff\xfe"):
        assert gateway.client.post(CHAT, content=body).status_code in (400, 422)
    ok = gateway.client.post(CHAT, json={"model": "chat", "messages": MESSAGES, "max_tokens": 2})
    assert ok.status_code == 200


# vLLM's error body (`ErrorResponse`) for a request past the model's context.
VLLM_REFUSAL = orjson.dumps(
    {
        "error": {
            "message": "This model's maximum context length is 2048 tokens (max_model_len).",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
)


def test_upstream_errors_pass_through_with_their_status_and_message(
    gateway: InProcessGateway,
) -> None:
    for stream in (False, True):
        gateway.upstream.will_answer(Answer(status=400, body=VLLM_REFUSAL))
        response = gateway.client.post(
            CHAT, json={"model": "chat", "messages": MESSAGES, "max_tokens": 4000, "stream": stream}
        )
        assert response.status_code == 400
        assert "max_model_len" in response.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_with_413(tmp_path: Path) -> None:
    config = gateway_config([BACKEND], server={"max_body_bytes": 2048})
    with in_process_gateway(config, tmp_path) as gateway:
        client = gateway.client
        small = {"model": "chat", "messages": MESSAGES, "max_tokens": 2}
        assert client.post(CHAT, json=small).status_code == 200
        big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 4096}]}
        assert_openai_error(client.post(CHAT, json=big), 413, "request_too_large")

        def chunked_body() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1024
            yield b'"}]}'

        response = client.post(CHAT, content=chunked_body())
        assert_openai_error(response, 413, "request_too_large")
        assert client.post(CHAT, json=small).status_code == 200
        assert len(gateway.upstream.forwarded()) == 2


def test_a_backend_that_is_down_gives_502_and_not_ready(tmp_path: Path) -> None:
    upstream = InMemoryUpstream(down=[BACKEND])
    with in_process_gateway(gateway_config([BACKEND]), tmp_path, upstream) as gateway:
        for stream in (False, True):
            response = gateway.client.post(
                CHAT, json={"model": "chat", "messages": MESSAGES, "stream": stream}
            )
            assert_openai_error(response, 502, "backend_unavailable")
        ready = gateway.client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})
        assert gateway.client.get("/healthz").status_code == 200


def test_a_backend_that_is_too_slow_gives_504_after_the_timeout(tmp_path: Path) -> None:
    upstream = InMemoryUpstream(response_s=0.5)
    upstream.will_answer(Answer(hang=True), Answer(hang=True))
    config = gateway_config([BACKEND], timeouts={"response_s": 0.5})
    with in_process_gateway(config, tmp_path, upstream) as gateway:
        for stream in (False, True):
            response = gateway.client.post(
                CHAT, json={"model": "chat", "messages": MESSAGES, "stream": stream}, timeout=10
            )
            assert_openai_error(response, 504, "backend_timeout")
            assert 0.5 <= response.elapsed.total_seconds() < 5


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (BackendTimeout("The backend did not answer in time."), "backend_timeout"),
        (
            BackendUnavailable("The backend is unavailable: ConnectionResetError."),
            "backend_unavailable",
        ),
    ],
)
def test_a_backend_failing_mid_stream_ends_the_stream_with_an_error_event(
    gateway: InProcessGateway, failure: Exception, code: str
) -> None:
    gateway.upstream.will_answer(Answer(content="Hel", fail_mid_stream=failure))  # type: ignore[arg-type]
    stream = gateway.openai().chat.completions.create(model="chat", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    first = next(stream)
    assert first.model == "chat"
    assert first.choices[0].delta.content == "Hel"
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert raised.value.code == code


def test_a_client_leaving_mid_stream_closes_the_upstream_request(
    gateway: InProcessGateway,
) -> None:
    # vLLM aborts a request when its connection drops: the gateway closes the upstream
    # request (and so drops its connection) as soon as its client leaves, against an upstream
    # that would stream for ever.
    gateway.upstream.will_answer(Answer(endless=True, event_gap_s=0.02))
    body = {"model": "chat", "messages": MESSAGES, "stream": True}
    departure = gateway.leave_mid_stream(CHAT, body)
    assert departure.status == 200
    assert departure.first_event.startswith(b"data: ")
    exchange = gateway.upstream.exchanges[-1]
    wait_until(lambda: exchange.closed, 5, "the gateway to close the upstream request")
    assert exchange.closed_at is not None
    assert exchange.closed_at - departure.left_at < 2.0
    # Closed because the client left, not because the stream ended.
    assert departure.finished_at - departure.left_at < 2.0
    time.sleep(0.1)
    assert exchange.events_sent < 100
