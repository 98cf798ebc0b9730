"""The issue's case through the gateway built in-process and the official openai client, against
an upstream that always answers `{"label": "billing"}` (what the route's schema asks for), so
every `request_schema` policy is seen on an object schema with a deterministic answer. The
real-vLLM tests of each policy, through a gateway process, are in test_contracts_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest
import yaml

from gateway.protection.auth import issue_key
from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.schemas import CLIENT_TRIAGE, TRIAGE
from tests.support.upstream import Answer, InMemoryUpstream

ANSWER = '{"label": "billing"}'
TICKET = [{"role": "user", "content": "I was charged twice for my invoice."}]
GRANTED = [
    "triage-json",
    "triage-json-ignore",
    "triage-json-both",
    "triage-json-both-flag",
    "triage-json-both-buffer",
]


def triage(on_invalid: str, **extra: object) -> dict[str, object]:
    return {"schema": TRIAGE, "on_invalid": on_invalid, **extra}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("keys")
    key = issue_key()
    tenants = {
        "tenants": {
            "acme": {
                "routes": [*GRANTED, "chat"],
                "keys": [{"sha256": key.sha256}],
            }
        }
    }
    (folder / "keys.yaml").write_text(yaml.safe_dump(tenants))
    return folder / "keys.yaml", key.key


@pytest.fixture(scope="module")
def gateway(
    keys: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    routes = {
        "triage-json": triage("error"),
        "triage-json-ignore": triage("error", request_schema="ignore"),
        "triage-json-both": triage("error", request_schema="enforce_both"),
        "triage-json-both-flag": triage("flag", request_schema="enforce_both"),
        "triage-json-both-buffer": triage(
            "retry", request_schema="enforce_both", stream_validation="buffer"
        ),
        "chat": {},
        "hidden": triage("error"),
    }
    config = gateway_config(["http://vllm.test"], routes=routes, auth={"keys_file": str(keys[0])})
    upstream = InMemoryUpstream(default=Answer(content=ANSWER))
    with in_process_gateway(config, tmp_path_factory.mktemp("gw"), upstream) as running:
        yield running


@pytest.fixture
def api(gateway: InProcessGateway, keys: tuple[Path, str]) -> openai.OpenAI:
    return gateway.openai(keys[1])


def own(schema: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "mine", "schema": schema}}


def test_reject_answers_400_schema_conflict_streamed_or_not(api: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(
                model="triage-json",
                messages=TICKET,  # type: ignore[arg-type]
                stream=stream,
                response_format=own(CLIENT_TRIAGE),  # type: ignore[arg-type]
            )
        error = refused.value.response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error", "schema_conflict", "response_format",
        )  # fmt: skip
        assert "GET /v1/models/triage-json" in error["message"]


def test_the_schema_get_models_shows_is_accepted_back(api: openai.OpenAI) -> None:
    shown = api.models.retrieve("triage-json").model_extra
    assert shown is not None
    for response_format in (own(shown["turnout"]["schema"]), {"type": "json_object"}):
        raw = api.chat.completions.with_raw_response.create(
            model="triage-json",
            messages=TICKET,  # type: ignore[arg-type]
            response_format=response_format,  # type: ignore[arg-type]
        )
        assert (raw.headers["x-turnout-schema"], raw.headers["x-turnout-schema-source"]) == (
            "valid",
            "route",
        )


def test_get_models_of_a_route_the_tenant_is_not_granted_is_403(
    gateway: InProcessGateway, keys: tuple[Path, str]
) -> None:
    headers = {"authorization": f"Bearer {keys[1]}"}
    refused = gateway.client.get("/v1/models/hidden", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert gateway.client.get("/v1/models/triage-json").status_code == 401


def test_ignore_passes_the_routes_answer_that_fails_the_clients_schema(
    api: openai.OpenAI,
) -> None:
    raw = api.chat.completions.with_raw_response.create(
        model="triage-json-ignore",
        messages=TICKET,  # type: ignore[arg-type]
        response_format=own(CLIENT_TRIAGE),  # type: ignore[arg-type]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-turnout-schema-source"] == "route"
    assert orjson.loads(raw.parse().choices[0].message.content or "") == {"label": "billing"}


def test_enforce_both_refuses_or_flags_the_missing_priority(api: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as refused:
        api.chat.completions.create(
            model="triage-json-both",
            messages=TICKET,  # type: ignore[arg-type]
            response_format=own(CLIENT_TRIAGE),  # type: ignore[arg-type]
        )
    error = refused.value.response.json()["error"]
    assert error["code"] == "schema_violation"
    problems = {p["path"]: p["message"] for p in error["validation_errors"]}
    assert "priority" in problems["$"]
    assert "$.label" in problems  # billing is not one of the client's labels
    raw = api.chat.completions.with_raw_response.create(
        model="triage-json-both-flag",
        messages=TICKET,  # type: ignore[arg-type]
        response_format=own(CLIENT_TRIAGE),  # type: ignore[arg-type]
    )
    assert (raw.headers["x-turnout-schema"], raw.headers["x-turnout-schema-source"]) == (
        "invalid",
        "request",
    )
    completion = raw.parse()
    assert completion.model_extra is not None
    assert completion.model_extra["turnout"]["schema"]["source"] == "request"


def test_enforce_both_buffered_stream_is_refused_before_the_first_byte(
    api: openai.OpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as refused:
        api.chat.completions.create(
            model="triage-json-both-buffer",
            messages=TICKET,  # type: ignore[arg-type]
            stream=True,
            response_format=own(CLIENT_TRIAGE),  # type: ignore[arg-type]
        )
    assert "after 1 retries" in refused.value.response.json()["error"]["message"]
    loose = {"type": "object", "required": ["label"]}
    chunks = list(
        api.chat.completions.create(
            model="triage-json-both-buffer",
            messages=TICKET,  # type: ignore[arg-type]
            stream=True,
            response_format=own(loose),  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["turnout"]["schema"]["source"] == "both"
