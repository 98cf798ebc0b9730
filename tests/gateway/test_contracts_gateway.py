"""Output contracts through the gateway built in-process, in front of the in-memory upstream
scripted to answer valid, truncated, invalid or non-JSON text: the policies (error, retry,
flag, buffered streams), the refusals made before any upstream call, and what the upstream is
asked for (the route's schema as `response_format`, for vLLM's guided decoding). The same
policies against a real vLLM's guided decoding, through a gateway process: test_contracts_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.schemas import CLIENT_TRIAGE, TRIAGE
from tests.support.upstream import Answer

LABELS = ["billing", "bug", "account"]
LABEL_ONLY = {"enum": LABELS}
TICKET = [{"role": "user", "content": "I was charged twice for my invoice."}]
CHAT = "/v1/chat/completions"
VALID = Answer(content='"billing"')
# What the demo model does on vLLM with max_tokens 2: runs out of tokens mid-JSON.
TRUNCATED = Answer(content='"bil', finish_reason="length")
NOT_JSON = Answer(content="Sure! The label is billing.")


def route(on_invalid: str, schema: object = LABEL_ONLY, **extra: object) -> dict[str, object]:
    return {"schema": schema, "on_invalid": on_invalid, **extra}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    routes = {
        "triage-error": route("error"),
        "triage-retry": route("retry", max_retries=2),
        "triage-flag": route("flag"),
        "triage-buffer": route("retry", max_retries=1, stream_validation="buffer"),
        "triage-json": route("flag", TRIAGE),
        "chat": {},
    }
    config = gateway_config(["http://vllm.test"], routes=routes)
    with in_process_gateway(config, tmp_path_factory.mktemp("contracts")) as running:
        yield running


def ask(gateway: InProcessGateway, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": TICKET, "max_tokens": 20, "temperature": 0}
    return gateway.client.post(CHAT, json={**body, **extra})


def test_a_valid_answer_is_validated_says_so_and_the_upstream_was_asked_for_the_schema(
    gateway: InProcessGateway,
) -> None:
    gateway.upstream.forwarded()
    gateway.upstream.will_answer(VALID)
    answer = ask(gateway, "triage-error")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-turnout-schema"] == "valid"
    assert answer.headers["x-turnout-schema-source"] == "route"
    assert orjson.loads(answer.json()["choices"][0]["message"]["content"]) in LABELS
    (sent,) = gateway.upstream.forwarded()
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == LABEL_ONLY


def test_error_policy_refuses_a_truncated_answer_with_the_errors_and_raw_text(
    gateway: InProcessGateway,
) -> None:
    gateway.upstream.will_answer(TRUNCATED)
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.openai().chat.completions.create(
            model="triage-error",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=2,
            temperature=0,
        )
    assert refused.value.status_code == 502
    error = refused.value.response.json()["error"]
    assert error["code"] == "schema_violation"
    assert error["validation_errors"][0]["message"] == "the answer was cut off at max_tokens"
    assert error["raw_output"] == '"bil'


def test_retry_policy_re_asks_then_refuses(gateway: InProcessGateway) -> None:
    retries_before = gateway.metric("turnout_schema_retries_total", route="triage-retry")
    truncated_before = gateway.metric(
        "turnout_schema_validations_total", route="triage-retry", result="truncated"
    )
    gateway.upstream.forwarded()
    gateway.upstream.will_answer(TRUNCATED, TRUNCATED, TRUNCATED)
    answer = ask(gateway, "triage-retry", max_tokens=2)
    assert answer.status_code == 502
    assert "after 2 retries" in answer.json()["error"]["message"]
    assert len(gateway.upstream.forwarded()) == 3  # asked, then re-asked twice
    retries = gateway.metric("turnout_schema_retries_total", route="triage-retry")
    assert retries - retries_before == 2
    truncated = gateway.metric(
        "turnout_schema_validations_total", route="triage-retry", result="truncated"
    )
    assert truncated - truncated_before == 3


def test_retry_policy_serves_the_first_valid_retry(gateway: InProcessGateway) -> None:
    gateway.upstream.will_answer(TRUNCATED, VALID)
    answer = ask(gateway, "triage-retry")
    assert answer.status_code == 200
    assert answer.headers["x-turnout-schema"] == "valid"
    assert answer.headers["x-turnout-schema-retries"] == "1"


def test_flag_policy_passes_the_answer_on_marked_invalid(gateway: InProcessGateway) -> None:
    gateway.upstream.will_answer(TRUNCATED)
    answer = ask(gateway, "triage-flag", max_tokens=2)
    assert answer.status_code == 200
    assert answer.headers["x-turnout-schema"] == "truncated"
    verdict = answer.json()["turnout"]["schema"]
    assert verdict["result"] == "truncated"
    assert verdict["source"] == "route"


def test_a_stream_ends_with_the_verdict_before_done(gateway: InProcessGateway) -> None:
    gateway.upstream.will_answer(TRUNCATED)
    chunks = list(
        gateway.openai().chat.completions.create(
            model="triage-flag",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=2,
            temperature=0,
            stream=True,
        )
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
    assert {chunk.model for chunk in chunks} == {"triage-flag"}
    last = chunks[-1]
    assert last.choices == []
    assert last.model_extra is not None
    assert last.model_extra["turnout"]["schema"]["result"] == "truncated"


def test_buffered_streams_are_validated_before_the_first_byte(gateway: InProcessGateway) -> None:
    gateway.upstream.will_answer(TRUNCATED, TRUNCATED)
    refused = ask(gateway, "triage-buffer", max_tokens=2, stream=True)
    assert refused.status_code == 502
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json()["error"]["code"] == "schema_violation"
    gateway.upstream.will_answer(VALID)
    chunks = list(
        gateway.openai().chat.completions.create(
            model="triage-buffer",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=20,
            temperature=0,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert orjson.loads(text) in LABELS
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["turnout"]["schema"]["result"] == "valid"


def test_non_json_output_from_a_backend_without_guided_decoding_is_refused(
    gateway: InProcessGateway,
) -> None:
    gateway.upstream.will_answer(NOT_JSON)
    answer = ask(gateway, "triage-error", max_tokens=10)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["validation_errors"][0]["message"].startswith("not JSON")
    assert error["raw_output"] == "Sure! The label is billing."


def test_the_clients_own_response_format_is_forwarded_and_flagged(
    gateway: InProcessGateway,
) -> None:
    gateway.upstream.forwarded()
    gateway.upstream.will_answer(VALID)
    own = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL_ONLY}}
    answer = ask(gateway, "chat", response_format=own)
    assert answer.headers["x-turnout-schema-source"] == "request"
    assert answer.headers["x-turnout-schema"] == "valid"
    sent = gateway.upstream.forwarded()[0]["response_format"]
    assert sent["json_schema"]["schema"] == LABEL_ONLY  # guided by the client's own schema


# --- refused before any upstream call ----------------------------------------------------------


def own_format(schema: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "mine", "schema": schema}}


def refused_before_the_upstream(gateway: InProcessGateway, **extra: Any) -> dict[str, Any]:
    gateway.upstream.forwarded()
    answer = ask(gateway, **extra)
    assert answer.status_code == 400, answer.text
    assert gateway.upstream.forwarded() == []
    error: dict[str, Any] = answer.json()["error"]
    return error


def test_a_huge_request_schema_is_refused_before_the_upstream(gateway: InProcessGateway) -> None:
    schema = {"enum": [f"label-{n}" * 10 for n in range(2000)]}
    error = refused_before_the_upstream(gateway, model="chat", response_format=own_format(schema))
    assert error["param"] == "response_format"
    assert "limit" in error["message"]


def test_tool_schemas_are_checked_on_a_route_with_its_own_schema(
    gateway: InProcessGateway,
) -> None:
    hostile = {"type": "string", "pattern": "x" * 2000}
    tools = [{"type": "function", "function": {"name": "f", "parameters": hostile}}]
    error = refused_before_the_upstream(gateway, model="triage-json", tools=tools)
    assert error["param"] == "tools"


def test_json_object_conflicts_with_a_route_whose_answers_are_not_objects(
    gateway: InProcessGateway,
) -> None:
    error = refused_before_the_upstream(
        gateway, model="triage-error", response_format={"type": "json_object"}
    )
    assert error["code"] == "schema_conflict"


def test_reject_refuses_a_conflicting_schema_and_says_how_to_fix_it(
    gateway: InProcessGateway,
) -> None:
    for stream in (False, True):
        error = refused_before_the_upstream(
            gateway, model="triage-json", stream=stream, response_format=own_format(CLIENT_TRIAGE)
        )
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "schema_conflict"
        assert error["param"] == "response_format"
        assert "`triage-json`" in error["message"]
        assert "Omit `response_format`" in error["message"]
        assert "GET /v1/models/triage-json" in error["message"]


def test_get_models_shows_a_routes_schema_none_for_a_plain_route_and_404_for_none(
    gateway: InProcessGateway,
) -> None:
    api = gateway.openai()
    card = api.models.retrieve("triage-json")
    assert card.model_extra is not None
    assert card.model_extra["turnout"] == {"schema": TRIAGE, "request_schema": "reject"}
    plain = api.models.retrieve("chat")
    assert plain.model_extra is not None
    assert plain.model_extra["turnout"] == {"schema": None, "request_schema": None}
    with pytest.raises(openai.NotFoundError) as missing:
        api.models.retrieve("no-such-route")
    assert missing.value.response.json()["error"]["code"] == "model_not_found"
