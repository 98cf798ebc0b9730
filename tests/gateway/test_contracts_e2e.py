"""Output contracts end to end: a real vLLM (guided decoding on the random demo model, which
really does run out of tokens mid-JSON), the gateway as a process, the official openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.conftest import gateway_config, running_gateway, scripted_backend

pytestmark = pytest.mark.slow

LABELS = ["billing", "bug", "account"]
LABEL_ONLY = {"enum": LABELS}
TICKET = [{"role": "user", "content": "I was charged twice for my invoice."}]
CHAT = "/v1/chat/completions"


def route(on_invalid: str, schema: object = LABEL_ONLY, **extra: object) -> dict[str, object]:
    return {"stable": "support-triage@v1", "schema": schema, "on_invalid": on_invalid, **extra}


@pytest.fixture(scope="module")
def contract_gateway(
    vllm_url: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    routes = {
        "triage-error": route("error"),
        "triage-retry": route("retry", max_retries=2),
        "triage-flag": route("flag"),
        "triage-buffer": route("retry", max_retries=1, stream_validation="buffer"),
        "chat": {},
    }
    config = gateway_config([vllm_url], demo_model / "adapters", routes=routes)
    with running_gateway(config, tmp_path_factory.mktemp("contracts")) as origin:
        yield origin


def ask(origin: str, model: str, max_tokens: int, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": TICKET, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(origin + CHAT, json={**body, **extra}, timeout=120)


def metric(origin: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{origin}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_valid_answer_is_guided_validated_and_says_so(contract_gateway: str) -> None:
    answer = ask(contract_gateway, "triage-error", 20)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-turnout-schema"] == "valid"
    assert answer.headers["x-turnout-schema-source"] == "route"
    assert orjson.loads(answer.json()["choices"][0]["message"]["content"]) in LABELS


def test_error_policy_refuses_a_truncated_answer_with_the_errors_and_raw_text(
    contract_gateway: str,
) -> None:
    api = openai.OpenAI(base_url=f"{contract_gateway}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(
            model="triage-error",
            messages=TICKET,
            max_tokens=2,
            temperature=0,  # type: ignore[arg-type]
        )
    assert refused.value.status_code == 502
    error = refused.value.response.json()["error"]
    assert error["code"] == "schema_violation"
    assert error["validation_errors"][0]["message"] == "the answer was cut off at max_tokens"
    assert isinstance(error["raw_output"], str)


def test_retry_policy_re_asks_then_refuses(contract_gateway: str) -> None:
    retries_before = metric(contract_gateway, "turnout_schema_retries_total", route="triage-retry")
    answer = ask(contract_gateway, "triage-retry", 2)
    assert answer.status_code == 502
    assert "after 2 retries" in answer.json()["error"]["message"]
    retries = metric(contract_gateway, "turnout_schema_retries_total", route="triage-retry")
    assert retries - retries_before == 2
    truncated = metric(
        contract_gateway, "turnout_schema_validations_total", route="triage-retry",
        result="truncated",
    )  # fmt: skip
    assert truncated >= 3


def test_flag_policy_passes_the_answer_on_marked_invalid(contract_gateway: str) -> None:
    answer = ask(contract_gateway, "triage-flag", 2)
    assert answer.status_code == 200
    assert answer.headers["x-turnout-schema"] == "truncated"
    verdict = answer.json()["turnout"]["schema"]
    assert verdict["result"] == "truncated"
    assert verdict["source"] == "route"


def test_a_stream_ends_with_the_verdict_before_done(contract_gateway: str) -> None:
    api = openai.OpenAI(base_url=f"{contract_gateway}/v1", api_key="unused", max_retries=0)
    chunks = list(
        api.chat.completions.create(
            model="triage-flag",
            messages=TICKET,
            max_tokens=2,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.model_extra is not None
    assert last.model_extra["turnout"]["schema"]["result"] == "truncated"


def test_buffered_streams_are_validated_before_the_first_byte(contract_gateway: str) -> None:
    refused = ask(contract_gateway, "triage-buffer", 2, stream=True)
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "schema_violation"
    api = openai.OpenAI(base_url=f"{contract_gateway}/v1", api_key="unused", max_retries=0)
    chunks = list(
        api.chat.completions.create(
            model="triage-buffer",
            messages=TICKET,
            max_tokens=20,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert orjson.loads(text) in LABELS
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["turnout"]["schema"]["result"] == "valid"


def test_the_clients_own_response_format_is_honoured_and_flagged(contract_gateway: str) -> None:
    api = openai.OpenAI(base_url=f"{contract_gateway}/v1", api_key="unused", max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="chat",
        messages=TICKET,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "label", "schema": LABEL_ONLY},
        },
    )
    assert raw.headers["x-turnout-schema-source"] == "request"
    assert raw.headers["x-turnout-schema"] == "valid"
    assert orjson.loads(raw.parse().choices[0].message.content or "") in LABELS


def test_a_huge_request_schema_is_refused_before_vllm(contract_gateway: str) -> None:
    schema = {"enum": [f"label-{n}" * 10 for n in range(2000)]}
    answer = ask(
        contract_gateway, "chat", 5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "response_format"
    assert "limit" in answer.json()["error"]["message"]


NOT_JSON_REPLY = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"tiny","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Sure! The label is billing."},'
    b'"finish_reason":"stop"}]}'
)


def test_non_json_output_from_a_backend_without_guided_decoding_is_refused(
    tmp_path: Path,
) -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(NOT_JSON_REPLY),
        NOT_JSON_REPLY,
    )
    with scripted_backend(reply) as backend:
        config = gateway_config(
            [backend], routes={"strict": {"schema": LABEL_ONLY, "on_invalid": "error"}}
        )
        with running_gateway(config, tmp_path) as origin:
            answer = ask(origin, "strict", 10)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["validation_errors"][0]["message"].startswith("not JSON")
    assert error["raw_output"] == "Sure! The label is billing."
