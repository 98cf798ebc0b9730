"""Route resolution and the model-name rewrite between route and vLLM name."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.errors import http_status
from gateway.config import parse_config
from gateway.errors import RouteNotFound
from gateway.routing.table import AdapterVersion, build_routing_table, declared_rollouts
from gateway.upstream.proxy import ModelNameRewrite, upstream_body

CONFIG = parse_config(
    {
        "base_model": "tiny",
        "routes": {"support-triage": {"stable": "support-triage@v1"}, "chat": {}},
    }
)


def test_an_adapter_route_resolves_to_its_version_and_vllm_name() -> None:
    target = build_routing_table(CONFIG).entry("support-triage").stable
    assert target.adapter == AdapterVersion("support-triage", "v1")
    assert target.served_model == "support-triage@v1"


def test_a_bare_route_resolves_to_the_base_model() -> None:
    target = build_routing_table(CONFIG).entry("chat").stable
    assert target.adapter is None
    assert target.served_model == "tiny"


def test_an_unknown_route_is_route_not_found_naming_the_model_param() -> None:
    with pytest.raises(RouteNotFound) as raised:
        build_routing_table(CONFIG).entry("tiny")  # vLLM's own names are not routes
    assert raised.value.param == "model"
    assert http_status(raised.value) == 404


def test_the_table_lists_every_routed_adapter_version_once() -> None:
    assert build_routing_table(CONFIG).adapter_versions() == {
        AdapterVersion("support-triage", "v1")
    }


def test_the_table_cannot_be_changed_in_place() -> None:
    table = build_routing_table(CONFIG)
    with pytest.raises(TypeError):
        table.entries["new"] = table.entries["chat"]  # type: ignore[index]


def test_the_upstream_body_carries_vllm_name_and_every_client_field() -> None:
    target = build_routing_table(CONFIG).entry("support-triage").stable
    fields = {"model": "support-triage", "messages": [], "top_k": 5, "temperature": 0}
    assert orjson.loads(upstream_body(fields, target)) == {**fields, "model": "support-triage@v1"}


@given(text=st.text(), decoy=st.sampled_from(['"model":"support-triage@v1"', '\\"model\\"']))
def test_rewrite_changes_the_model_member_and_never_the_generated_text(
    text: str, decoy: str
) -> None:
    target = build_routing_table(CONFIG).entry("support-triage").stable
    content = decoy + text + decoy
    answer = orjson.dumps({"id": "x", "model": "support-triage@v1", "choices": [{"text": content}]})
    rewritten = orjson.loads(ModelNameRewrite.for_target(target).apply(answer))
    assert rewritten["model"] == "support-triage"
    assert rewritten["choices"][0]["text"] == content


SPLIT = parse_config(
    {
        "base_model": "tiny",
        "routes": {
            "triage": {
                "stable": "support-triage@v1",
                "candidate": "support-triage@v2",
                "mode": "ab",
                "weight": 30,
            }
        },
    }
)


@given(key=st.text(min_size=1))
def test_a_caller_keeps_its_arm_and_each_arm_its_version(key: str) -> None:
    table = build_routing_table(SPLIT, declared_rollouts(SPLIT))
    entry = table.entry("triage")
    first = entry.pick(key, lambda: 0.0)
    assert all(entry.pick(key, lambda: 0.99).arm == first.arm for _ in range(3))
    expected = "support-triage@v2" if first.arm == "candidate" else "support-triage@v1"
    assert first.served_model == expected
    assert entry.pick(key, lambda: 0.0, forced="candidate").served_model == "support-triage@v2"


def test_the_table_routes_to_both_versions_during_a_rollout() -> None:
    table = build_routing_table(SPLIT, declared_rollouts(SPLIT))
    assert table.adapter_versions() == {
        AdapterVersion("support-triage", "v1"),
        AdapterVersion("support-triage", "v2"),
    }
