"""The field table, the `requests` config and the surface check as pure logic (no server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.api.protocol import RESERVED_FIELDS, ChatCompletionRequest, CompletionRequest
from gateway.config import parse_config
from gateway.errors import ConfigError, ParameterOutOfBounds, UnsupportedParameter
from gateway.routing.table import build_routing_table
from gateway.surface.check import RequestSurface
from gateway.surface.config import RequestsConfig
from gateway.surface.fields import FIELD_RULES, FIELDS, NEVER_FORWARDED, default_fields

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("endpoint", "model"), [("chat", ChatCompletionRequest), ("completions", CompletionRequest)]
)
def test_the_protocol_models_type_exactly_the_allowed_fields(
    endpoint: Any, model: type[ChatCompletionRequest] | type[CompletionRequest]
) -> None:
    assert set(model.model_fields) == default_fields(endpoint)


def test_reserved_names_can_never_be_forwarded() -> None:
    assert RESERVED_FIELDS <= NEVER_FORWARDED
    assert len(FIELD_RULES) == len(FIELDS)  # one rule per name


def test_the_docs_table_lists_every_field_as_the_code_does() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z, ]+) \| (allowed|opt-in|never) \|", (
        DOCS / "api.md"
    ).read_text(), flags=re.MULTILINE)  # fmt: skip
    documented = {name: (endpoints, default) for name, endpoints, default in rows}
    assert set(documented) == set(FIELD_RULES)
    for rule in FIELDS:
        endpoints, default = documented[rule.name]
        assert default == rule.default, rule.name
        assert set(endpoints.split(", ")) == set(rule.endpoints), rule.name


def test_a_route_replaces_only_the_keys_it_sets() -> None:
    config = parse_config(
        {
            "requests": {"max_n": 2, "extra_fields": ["priority"]},
            "routes": {"a": {}, "b": {"requests": {"max_stop": 1}}},
        }
    )
    a = build_routing_table(config).entry("a").requests
    b = build_routing_table(config).entry("b").requests
    assert (a.max_n, a.max_stop, "priority" in a.allowed[CHAT]) == (2, 4, True)
    assert (b.max_n, b.max_stop, "priority" in b.allowed[CHAT]) == (2, 1, True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"routes": {"chat": {"requests": {"extra_fields": ["guided_json"]}}}},
            r"routes\.chat\.requests\.extra_fields: .*`guided_json` is decided by the gateway",
        ),
        (
            {"requests": {"seed_max": 10}, "routes": {"chat": {"requests": {"seed_min": 11}}}},
            r"routes\.chat\.requests with the defaults: seed_min must not exceed seed_max",
        ),
        (
            {"requests": {"content_parts": {"image_url": {"hosts": ["http://x"]}}}},
            r"requests\.content_parts\.image_url\.hosts: .*not a lower-case host",
        ),
        ({"requests": {"content_parts": {"file": {}}}}, r"requests\.content_parts\.file"),
        ({"requests": {"max_n": 0}}, r"requests\.max_n"),
    ],
)
def test_bad_requests_config_is_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


SURFACE = RequestSurface.build(RequestsConfig(), max_tokens=100)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_the_first_unknown_field_is_named() -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        SURFACE.check(CHAT, chat(zeta=1, alpha=2))
    assert refused.value.param == "alpha"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 5}, "n"),
        ({"stop": [""] * 5}, "stop"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"min_tokens": 101}, "min_tokens"),
        ({"seed": 2**63}, "seed"),
    ],
)
def test_each_bound_is_inclusive_and_named(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ParameterOutOfBounds) as refused:
        SURFACE.check(CHAT, chat(**fields))
    assert refused.value.param == param
    at_limit = {name: (value[:-1] if isinstance(value, list) else value - 1)
                for name, value in fields.items()}  # fmt: skip
    SURFACE.check(CHAT, chat(**at_limit))


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{n}": "v" for n in range(17)},
        {"k" * 65: "v"},
        {"topic": "v" * 513},
        {"topic": 1},
        ["topic"],
    ],
)
def test_metadata_is_held_to_openai_s_bounds(metadata: Any) -> None:
    with pytest.raises(ParameterOutOfBounds) as refused:
        SURFACE.check(CHAT, chat(metadata=metadata))
    assert refused.value.param == "metadata"
    at_limit = {f"{n:0>64}": "v" * 512 for n in range(16)}
    SURFACE.check(CHAT, chat(metadata=at_limit))


def test_token_prompts_count_one_character_per_token() -> None:
    small = RequestSurface.build(RequestsConfig(max_content_chars=4), None)
    small.check("/v1/completions", {"model": "m", "prompt": [[1, 2], [3, 4]]})
    with pytest.raises(ParameterOutOfBounds):
        small.check("/v1/completions", {"model": "m", "prompt": [1, 2, 3, 4, 5]})


VISION = RequestSurface.build(
    RequestsConfig.model_validate({"content_parts": {"image_url": {}, "input_audio": {}}}), None
)


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "uuid": "x"}},
         "messages.0.content.0.image_url.uuid"),
        ({"type": "image_url", "image_url": "data:image/png;base64,AA"}, "messages.0.content.0"),
        ({"type": "input_audio", "input_audio": {"data": "AA"}},
         "messages.0.content.0.input_audio"),
        ({"type": "input_audio", "input_audio": {"data": "A" * 1_400_000, "format": "wav"}},
         "messages.0.content.0.input_audio.data"),
        ({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA"}},
         "messages.0.content.0.type"),
    ],
)  # fmt: skip
def test_media_parts_carry_only_their_own_keys_and_sizes(part: dict[str, Any], param: str) -> None:
    with pytest.raises((UnsupportedParameter, ParameterOutOfBounds)) as refused:
        VISION.check(CHAT, chat(messages=[{"role": "user", "content": [part]}]))
    assert refused.value.param == param


def test_accepted_media_parts_pass() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    VISION.check(CHAT, chat(messages=[{"role": "user", "content": parts}]))
