"""Output contracts end to end: a real vLLM (guided decoding on the random demo model, which
really does run out of tokens mid-JSON), the gateway as a process, the official openai client.
The policies' logic and the refusals made before vLLM is asked, in-process against scripted
answers: test_contracts_gateway.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.support.demo import gateway_config
from tests.support.processes import running_gateway
from tests.support.schemas import CLIENT_TRIAGE

pytestmark = pytest.mark.slow

LABELS = ["billing", "bug", "account"]
LABEL_ONLY = {"enum": LABELS}
TICKET = [{"role": "user", "content": "I was charged twice for my invoice."}]
# An object schema leaves room for whitespace, which the random demo model fills until
# max_tokens: answers to it are mostly truncated. The label-only routes decode a bare string.
TRIAGE = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}
# Differs from the label-only routes' schema, but every answer that one accepts meets it.
ANY_LABEL = {"type": "string", "minLength": 1}
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
        "triage-json": route("flag", TRIAGE),  # request_schema: reject, the default
        "label-ignore": route("error", request_schema="ignore"),
        "label-both": route("error", request_schema="enforce_both"),
        "label-both-flag": route("flag", request_schema="enforce_both"),
        "label-both-buffer": route(
            "retry", max_retries=1, stream_validation="buffer", request_schema="enforce_both"
        ),
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


# --- a request that brings its own schema to a route that has one (request_schema) ------------


def client(origin: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)


def own_format(schema: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "mine", "schema": schema}}


def test_the_route_schema_from_get_models_is_compatible_and_served(contract_gateway: str) -> None:
    api = client(contract_gateway)
    card = api.models.retrieve("triage-json")
    assert card.id == "triage-json"
    assert card.model_extra is not None
    shown = card.model_extra["turnout"]
    assert shown == {"schema": TRIAGE, "request_schema": "reject"}
    for response_format in (own_format(shown["schema"]), {"type": "json_object"}):
        raw = api.chat.completions.with_raw_response.create(
            model="triage-json",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=30,
            temperature=0,
            response_format=response_format,  # type: ignore[arg-type]
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-turnout-schema-source"] == "route"
        # Judged against the route's schema (the demo model mostly runs out of tokens here).
        assert raw.headers["x-turnout-schema"] in ("valid", "truncated")


def test_ignore_answers_with_the_route_schema_and_only_the_headers_say_so(
    contract_gateway: str,
) -> None:
    raw = client(contract_gateway).chat.completions.with_raw_response.create(
        model="label-ignore",
        messages=TICKET,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        response_format=own_format(CLIENT_TRIAGE),  # type: ignore[arg-type]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-turnout-schema"] == "valid"
    assert raw.headers["x-turnout-schema-source"] == "route"
    # The route's answer, a bare label: not the object the client's schema asked for.
    assert orjson.loads(raw.parse().choices[0].message.content or "") in LABELS


def test_enforce_both_refuses_an_answer_that_breaks_the_clients_schema(
    contract_gateway: str,
) -> None:
    invalid_before = metric(
        contract_gateway, "turnout_schema_validations_total", route="label-both", result="invalid"
    )
    with pytest.raises(openai.APIStatusError) as refused:
        client(contract_gateway).chat.completions.create(
            model="label-both",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=20,
            temperature=0,
            response_format=own_format(CLIENT_TRIAGE),  # type: ignore[arg-type]
        )
    assert refused.value.status_code == 502
    error = refused.value.response.json()["error"]
    assert error["code"] == "schema_violation"
    assert "the request's own JSON Schema" in error["message"]
    assert error["validation_errors"][0]["path"] == "$"
    assert 'is not of type "object"' in error["validation_errors"][0]["message"]
    assert orjson.loads(error["raw_output"]) in LABELS  # the route's schema held
    invalid = metric(
        contract_gateway, "turnout_schema_validations_total", route="label-both", result="invalid"
    )
    assert invalid - invalid_before == 1


def test_enforce_both_flags_an_answer_that_breaks_the_clients_schema(
    contract_gateway: str,
) -> None:
    raw = client(contract_gateway).chat.completions.with_raw_response.create(
        model="label-both-flag",
        messages=TICKET,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        response_format=own_format(CLIENT_TRIAGE),  # type: ignore[arg-type]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-turnout-schema"] == "invalid"
    assert raw.headers["x-turnout-schema-source"] == "request"
    completion = raw.parse()
    assert completion.model_extra is not None
    verdict = completion.model_extra["turnout"]["schema"]
    assert verdict["result"] == "invalid"
    assert verdict["source"] == "request"
    assert verdict["errors"][0]["path"] == "$"


def test_enforce_both_passes_an_answer_that_meets_both_schemas(contract_gateway: str) -> None:
    raw = client(contract_gateway).chat.completions.with_raw_response.create(
        model="label-both",
        messages=TICKET,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        response_format=own_format(ANY_LABEL),  # type: ignore[arg-type]
    )
    assert raw.headers["x-turnout-schema"] == "valid"
    assert raw.headers["x-turnout-schema-source"] == "both"
    assert orjson.loads(raw.parse().choices[0].message.content or "") in LABELS


def test_enforce_both_streams_end_with_the_clients_verdict(contract_gateway: str) -> None:
    api = client(contract_gateway)
    verdicts = {}
    for name, schema in (("client", CLIENT_TRIAGE), ("any label", ANY_LABEL)):
        chunks = list(
            api.chat.completions.create(
                model="label-both-flag",
                messages=TICKET,  # type: ignore[arg-type]
                max_tokens=20,
                temperature=0,
                stream=True,
                response_format=own_format(schema),  # type: ignore[arg-type]
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert orjson.loads(text) in LABELS
        assert chunks[-1].model_extra is not None
        verdict = chunks[-1].model_extra["turnout"]["schema"]
        verdicts[name] = (verdict["result"], verdict["source"])
    assert verdicts == {"client": ("invalid", "request"), "any label": ("valid", "both")}


def test_enforce_both_buffered_streams_retry_then_refuse_before_the_first_byte(
    contract_gateway: str,
) -> None:
    retries_before = metric(
        contract_gateway, "turnout_schema_retries_total", route="label-both-buffer"
    )
    refused = ask(
        contract_gateway, "label-both-buffer", 20, stream=True,
        response_format=own_format(CLIENT_TRIAGE),
    )  # fmt: skip
    assert refused.status_code == 502
    assert refused.headers["content-type"].startswith("application/json")
    assert (
        "the request's own JSON Schema (invalid, after 1 retries)"
        in (refused.json()["error"]["message"])
    )
    retries = metric(contract_gateway, "turnout_schema_retries_total", route="label-both-buffer")
    assert retries - retries_before == 1
    chunks = list(
        client(contract_gateway).chat.completions.create(
            model="label-both-buffer",
            messages=TICKET,  # type: ignore[arg-type]
            max_tokens=20,
            temperature=0,
            stream=True,
            response_format=own_format(ANY_LABEL),  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["turnout"]["schema"] == {
        "result": "valid", "source": "both", "errors": [],
    }  # fmt: skip
