"""Output contracts without a server: schema checks, verdicts and the paths they report."""

from __future__ import annotations

import orjson
import pytest

from gateway.bench.contracts import TEN_FIELD_SCHEMA, VALID_ANSWER
from gateway.config import parse_config
from gateway.contracts.contract import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    SchemaRejected,
    check_schema,
    make_contract,
    request_contract,
)
from gateway.errors import ConfigError

REF_ONE_OF = {
    "$defs": {
        "refund": {
            "type": "object",
            "properties": {"kind": {"const": "refund"}, "amount": {"type": "number"}},
            "required": ["kind", "amount"],
            "additionalProperties": False,
        },
        "question": {
            "type": "object",
            "properties": {"kind": {"const": "question"}, "text": {"type": "string"}},
            "required": ["kind", "text"],
            "additionalProperties": False,
        },
    },
    "oneOf": [{"$ref": "#/$defs/refund"}, {"$ref": "#/$defs/question"}],
}


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {}
    for _ in range(depth):
        schema = {"items": schema}
    return schema


def contract_for(schema: dict[str, object]):  # type: ignore[no-untyped-def]
    return make_contract(
        schema, on_invalid="error", max_retries=0, stream_validation="final",
        source="route", name="r",
    )  # fmt: skip


def test_a_valid_answer_passes_a_schema_with_refs_and_one_of() -> None:
    contract = contract_for(REF_ONE_OF)
    assert contract.judge('{"kind": "refund", "amount": 12.5}', "stop").ok
    assert contract.judge('{"kind": "question", "text": "why?"}', "stop").ok


def test_an_invalid_answer_reports_json_paths_and_messages() -> None:
    verdict = contract_for(TEN_FIELD_SCHEMA).judge(
        VALID_ANSWER.replace('"priority":2', '"priority":9').replace('"T-1234"', '"X"'), "stop"
    )
    assert verdict.result == "invalid"
    paths = {issue.path: issue.message for issue in verdict.issues}
    assert "9 is greater than the maximum of 5" in paths["$.priority"]
    assert "$.ticket_id" in paths


def test_an_answer_matching_neither_branch_of_one_of_is_invalid() -> None:
    verdict = contract_for(REF_ONE_OF).judge('{"kind": "refund", "text": "x"}', "stop")
    assert verdict.result == "invalid"


def test_an_answer_cut_off_at_max_tokens_is_truncated_not_invalid() -> None:
    verdict = contract_for(REF_ONE_OF).judge('{"kind": "ref', "length")
    assert verdict.result == "truncated"


def test_text_that_is_not_json_is_invalid_with_the_reason() -> None:
    verdict = contract_for(REF_ONE_OF).judge("Sure! Here is your JSON:", "stop")
    assert verdict.result == "invalid"
    assert verdict.issues[0].message.startswith("not JSON")


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "description": "x" * MAX_SCHEMA_BYTES}, "bytes; the limit"),
        (nested(MAX_SCHEMA_DEPTH + 1), "nests deeper"),
        ({"$ref": "https://evil.example/schema.json"}, "only references inside the schema"),
        ({"type": "string", "pattern": "(unclosed"}, "is not a 'regex'"),
        ({"type": "strin"}, "$.type"),
        (["not", "an", "object"], "must be an object"),
    ],
)
def test_hostile_or_broken_schemas_are_refused_before_vllm(schema: object, problem: str) -> None:
    with pytest.raises(SchemaRejected) as refused:
        check_schema(schema)
    assert problem in str(refused.value)


def test_a_route_schema_error_names_the_route_and_the_schema_path() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"routes": {"triage": {"schema": {"properties": {"a": {"type": 3}}}}}})
    assert "routes.triage.schema: invalid schema: $.properties.a.type" in refused.value.message


def test_a_request_json_object_format_becomes_an_object_contract_that_flags() -> None:
    contract = request_contract({"type": "json_object"}, "chat")
    assert contract is not None
    assert contract.on_invalid == "flag"
    assert contract.source == "request"
    assert not contract.judge("[1, 2]", "stop").ok
    assert request_contract({"type": "text"}, "chat") is None


def test_the_guided_decoding_request_carries_the_schema() -> None:
    contract = contract_for(REF_ONE_OF)
    sent = contract.response_format()
    assert sent["type"] == "json_schema"
    assert orjson.dumps(sent["json_schema"]["schema"], option=orjson.OPT_SORT_KEYS) == (
        contract.schema_json
    )


def test_a_hostile_tool_schema_is_refused_like_a_response_format() -> None:
    from gateway.contracts.contract import check_tool_schemas

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string",
              "pattern": "x" * 2000}}}]  # fmt: skip
    with pytest.raises(SchemaRejected) as refused:
        check_tool_schemas(tools)
    assert "tools[0].function.parameters" in str(refused.value)
