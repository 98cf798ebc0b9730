"""A request's own schema against its route's, without a server: the compatibility rule, its
cache, and which contract each `request_schema` policy gives a request."""

from __future__ import annotations

import time
from typing import Any

import jsonschema_rs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.errors import http_status
from gateway.config import parse_config
from gateway.contracts.contract import Contract, check_schema, make_contract, request_contract
from gateway.contracts.request_schemas import CACHE_SIZE, compatible, contract_for, normal_form
from gateway.errors import ConfigError, SchemaConflict
from gateway.routing.table import build_routing_table
from tests.support.schemas import CLIENT_TRIAGE, TRIAGE

TRIAGE_WITH_REFS = {
    "title": "Triage",
    "$defs": {
        "label": {"description": "what kind of ticket", "enum": ["billing", "bug", "account"]}
    },
    "additionalProperties": False,
    "required": ["label"],
    "properties": {"label": {"$ref": "#/$defs/label"}},
    "type": "object",
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        }
    },
    "$ref": "#/$defs/node",
}


def canonical(schema: Any) -> bytes:
    return check_schema(schema)


def keeps(route: Any, request: Any) -> bool:
    return compatible(canonical(route), canonical(request))


def route_contract(schema: Any, policy: str = "reject", on_invalid: str = "error") -> Contract:
    return make_contract(
        schema, on_invalid=on_invalid, max_retries=0, stream_validation="final",  # type: ignore[arg-type]
        source="route", name="triage-json", request_schema=policy,  # type: ignore[arg-type]
    )  # fmt: skip


def asked(schema: Any) -> Contract:
    contract = request_contract(
        {"type": "json_schema", "json_schema": {"name": "mine", "schema": schema}}, "triage-json"
    )
    assert contract is not None
    return contract


def test_the_same_schema_is_compatible_whatever_its_key_order_annotations_and_refs() -> None:
    assert keeps(TRIAGE, TRIAGE)
    assert keeps(TRIAGE, dict(reversed(list(TRIAGE.items()))))
    assert keeps(TRIAGE, TRIAGE_WITH_REFS)
    assert keeps(TRIAGE_WITH_REFS, TRIAGE)
    as_definitions = orjson.loads(orjson.dumps(TRIAGE_WITH_REFS).replace(b"$defs", b"definitions"))
    assert keeps(TRIAGE, as_definitions)


def test_a_client_schema_that_asks_for_more_than_the_route_keeps_is_a_conflict() -> None:
    assert not keeps(TRIAGE, CLIENT_TRIAGE)
    looser = {**TRIAGE, "properties": {"label": {"type": "string"}}}
    # Looser, and so in fact kept; the rule is deliberately small and calls it a conflict.
    assert not keeps(TRIAGE, looser)


def test_a_property_named_like_a_keyword_is_not_dropped() -> None:
    for name in ("title", "$defs", "definitions"):
        schema = {"type": "object", "properties": {name: {"type": "string"}}}
        assert not keeps(schema, {"type": "object", "properties": {}}), name
        assert normal_form(schema) == schema


def test_json_object_is_compatible_with_a_route_whose_answers_are_all_objects() -> None:
    json_object = request_contract({"type": "json_object"}, "r")
    assert json_object is not None
    assert compatible(canonical(TRIAGE), json_object.schema_json)
    one_of_objects = {
        "$defs": {"a": {"type": "object"}, "b": {"properties": {"x": {}}, "type": "object"}},
        "oneOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}],
    }
    assert compatible(canonical(one_of_objects), json_object.schema_json)
    assert compatible(canonical({"const": {"a": 1}}), json_object.schema_json)


def test_json_object_conflicts_with_a_route_whose_answers_may_not_be_objects() -> None:
    json_object = request_contract({"type": "json_object"}, "r")
    assert json_object is not None
    for route in (
        {"enum": ["billing", "bug"]},
        {"type": ["object", "null"]},
        {"anyOf": [{"type": "object"}, {"type": "string"}]},
        {"properties": {"label": {"type": "string"}}},  # no `type`: a string is valid too
    ):
        assert not compatible(canonical(route), json_object.schema_json), route


def test_a_schema_that_accepts_anything_or_only_names_a_wider_type_is_compatible() -> None:
    assert keeps(TRIAGE, {})
    assert keeps(TRIAGE, {"description": "anything"})
    assert keeps({"type": "integer", "minimum": 1}, {"type": "number"})
    assert not keeps({"type": "number"}, {"type": "integer"})
    assert keeps({"enum": ["a", "b"]}, {"type": ["string", "null"]})


def test_a_recursive_schema_is_compatible_with_itself_and_compared_without_end() -> None:
    assert keeps(TREE, TREE)
    assert keeps(TREE, {"type": "object"})
    other = orjson.loads(orjson.dumps(TREE).replace(b'"array"', b'"object"'))
    assert not keeps(TREE, other)


def test_refs_under_an_id_are_compared_as_written_not_inlined() -> None:
    scoped = {**TRIAGE_WITH_REFS, "$id": "https://example.com/triage"}
    assert keeps(scoped, scoped)
    assert not keeps(TRIAGE, scoped)


def test_a_schema_whose_refs_multiply_when_inlined_is_decided_quickly() -> None:
    defs: dict[str, Any] = {"d0": {"type": "string"}}
    for level in range(1, 30):
        below = {"$ref": f"#/$defs/d{level - 1}"}
        defs[f"d{level}"] = {"type": "array", "prefixItems": [below, below]}
    schema = {"$defs": defs, "$ref": "#/$defs/d29"}
    started = time.perf_counter()
    assert keeps(schema, schema)
    assert not keeps(schema, {**schema, "$ref": "#/$defs/d28"})
    assert time.perf_counter() - started < 5  # 2**29 copies if inlined without a bound


def test_each_distinct_pair_is_decided_once_and_the_cache_is_bounded() -> None:
    route = canonical(TRIAGE)
    request = canonical({**CLIENT_TRIAGE, "title": "decided once"})
    compatible(route, request)
    before = compatible.cache_info()
    for _ in range(5):
        assert not compatible(route, canonical({**CLIENT_TRIAGE, "title": "decided once"}))
    after = compatible.cache_info()
    assert after.hits - before.hits == 5
    assert after.misses == before.misses
    assert after.maxsize == CACHE_SIZE


def test_a_request_schema_is_checked_once_however_often_it_comes() -> None:
    from gateway.contracts.contract import _schema_problem

    schema = {**CLIENT_TRIAGE, "title": "checked once"}
    request_contract({"type": "json_schema", "json_schema": {"schema": schema}}, "r")
    before = _schema_problem.cache_info()
    for _ in range(3):
        request_contract({"type": "json_schema", "json_schema": {"schema": dict(schema)}}, "r")
    after = _schema_problem.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (3, 0)


def test_reject_refuses_a_conflict_naming_the_route_and_the_fix() -> None:
    with pytest.raises(SchemaConflict) as refused:
        contract_for(route_contract(TRIAGE), asked(CLIENT_TRIAGE), "triage-json")
    error = refused.value
    assert (http_status(error), error.failure.openai_type, error.code, error.param) == (
        400, "invalid_request_error", "schema_conflict", "response_format",
    )  # fmt: skip
    assert "`triage-json`" in error.message
    assert "Omit `response_format`" in error.message
    assert "GET /v1/models/triage-json" in error.message


def test_a_compatible_or_absent_request_schema_gets_the_route_contract_in_every_mode() -> None:
    for policy in ("reject", "ignore", "enforce_both"):
        route = route_contract(TRIAGE, policy)
        assert contract_for(route, None, "triage-json") is route
        assert contract_for(route, asked(TRIAGE_WITH_REFS), "triage-json") is route
        assert contract_for(route, request_contract({"type": "text"}, "r"), "triage-json") is route


def test_a_route_without_a_schema_takes_the_requests_own() -> None:
    mine = asked(CLIENT_TRIAGE)
    assert contract_for(None, mine, "chat") is mine
    assert contract_for(None, None, "chat") is None


def test_ignore_decodes_and_judges_with_the_route_schema_alone() -> None:
    route = route_contract(TRIAGE, "ignore")
    applied = contract_for(route, asked(CLIENT_TRIAGE), "triage-json")
    assert applied is route
    verdict = applied.judge('{"label": "billing"}', "stop")
    assert (verdict.result, verdict.source) == ("valid", "route")


def test_enforce_both_decodes_with_the_route_schema_and_judges_against_both() -> None:
    route = route_contract(TRIAGE, "enforce_both")
    applied = contract_for(route, asked(CLIENT_TRIAGE), "triage-json")
    assert applied is not None
    assert applied.response_format()["json_schema"]["schema"] == TRIAGE
    client_fails = applied.judge('{"label": "billing"}', "stop")
    assert (client_fails.result, client_fails.source) == ("invalid", "request")
    assert {issue.path for issue in client_fails.issues} == {"$", "$.label"}
    assert any("priority" in issue.message for issue in client_fails.issues)
    route_fails = applied.judge('{"label": "feature", "priority": 2}', "stop")
    assert (route_fails.result, route_fails.source) == ("invalid", "route")
    cut = applied.judge('{"label": "bu', "length")
    assert (cut.result, cut.source) == ("truncated", "route")
    loose = contract_for(route, asked({"type": "object", "required": ["label"]}), "triage-json")
    assert loose is not None
    both = loose.judge('{"label": "bug"}', "stop")
    assert (both.result, both.source, both.as_dict()["source"]) == ("valid", "both", "both")


def test_the_policy_is_read_from_the_route_config_and_defaults_to_reject() -> None:
    config = parse_config(
        {
            "routes": {
                "strict": {"schema": TRIAGE},
                "loose": {"schema": TRIAGE, "request_schema": "ignore"},
                "both": {"schema": TRIAGE, "request_schema": "enforce_both"},
            }
        }
    )
    table = build_routing_table(config)
    policies = {name: e.stable.contract.request_schema for name, e in table.entries.items()}  # type: ignore[union-attr]
    assert policies == {"strict": "reject", "loose": "ignore", "both": "enforce_both"}
    with pytest.raises(ConfigError) as refused:
        parse_config({"routes": {"r": {"schema": TRIAGE, "request_schema": "merge"}}})
    assert "routes.r.request_schema" in refused.value.message


# --- the rule is sound: what it calls compatible, the request's schema accepts ----------------

_LEAVES = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "object"},
        {"type": "array"},
        {"type": "null"},
        {"enum": ["a", "b"]},
        {"const": {"k": 1}},
        {"type": "integer", "minimum": 0, "title": "n"},
        {},
    ]
)
_SCHEMAS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda a, b: {"anyOf": [a, b]}, inner, inner),
        st.builds(lambda a, b: {"allOf": [a, b]}, inner, inner),
        st.builds(lambda a: {"type": "object", "properties": {"k": a}, "required": ["k"]}, inner),
        st.builds(lambda a: {"type": "array", "items": a, "description": "d"}, inner),
    ),
    max_leaves=4,
)
# `$ref`s resolve against the root, so definitions live there.
_ROOTS = _SCHEMAS | _SCHEMAS.map(lambda a: {"$defs": {"x": a}, "$ref": "#/$defs/x"})
_TYPES_ONLY = st.lists(
    st.sampled_from(["string", "integer", "number", "object", "array", "null"]),
    min_size=1,
    max_size=3,
    unique=True,
).map(lambda types: {"type": types})
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3) | st.sampled_from(["a", "z"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.just("k"), inner, max_size=1),
    max_leaves=4,
)


def _shuffled(node: Any, rng: Any) -> Any:
    if isinstance(node, dict):
        items = list(node.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(node, list):
        return [_shuffled(item, rng) for item in node]
    return node


@settings(max_examples=300, deadline=None)
@given(data=st.data(), route=_ROOTS, answers=st.lists(_JSON, min_size=1, max_size=8))
def test_every_answer_the_route_accepts_a_compatible_request_schema_accepts(
    data: st.DataObject, route: dict[str, Any], answers: list[Any]
) -> None:
    request = data.draw(_ROOTS | _TYPES_ONLY | st.just(route).map(_inline_once))
    if not keeps(route, request):
        return
    route_valid = jsonschema_rs.Draft202012Validator(route)
    request_valid = jsonschema_rs.Draft202012Validator(request)
    for answer in answers:
        if route_valid.is_valid(answer):
            assert request_valid.is_valid(answer), (route, request, answer)


def _inline_once(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema written another way: its root `$ref` inlined."""
    if "$ref" in schema:
        return dict(schema["$defs"]["x"])
    return schema


@settings(max_examples=200, deadline=None)
@given(schema=_ROOTS, rng=st.randoms())
def test_a_schema_written_another_way_is_compatible_with_itself(
    schema: dict[str, Any], rng: Any
) -> None:
    assert keeps(schema, _shuffled(schema, rng))
    assert keeps(schema, _inline_once(schema))
    assert keeps(_inline_once(schema), schema)
