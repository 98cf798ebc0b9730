"""The request surface through the gateway built in-process with tenant keys, in front of the
in-memory upstream recording every body it receives: what is refused (400 naming the
parameter), what is bounded, and what reaches the upstream, byte for byte. The same surface
against a gateway process and a real vLLM: test_request_surface_vllm.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protection.auth import issue_key
from gateway.surface.fields import FIELDS, default_fields
from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
MEDIA_HOST = "media.example.com"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 60).decode()


class Gateway:
    """The in-process gateway, a tenant key, and the upstream's record of what was forwarded."""

    def __init__(self, gateway: InProcessGateway, key: str) -> None:
        self.gateway = gateway
        self.key = key

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.gateway.client.post(
            path, json=body, headers={"authorization": f"Bearer {self.key}"}, timeout=30
        )

    def chat(self, route: str = "chat", **fields: Any) -> httpx.Response:
        return self.post(CHAT, {"model": route, "messages": MESSAGES, **fields})

    def forwarded(self) -> list[dict[str, Any]]:
        """The bodies the upstream received since the last call."""
        return self.gateway.upstream.forwarded()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("surface")
    tenant = issue_key()
    keys = {"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": tenant.sha256}]}}}
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    routes = {
        "chat": {},
        "prioritised": {"requests": {"extra_fields": ["priority", "prompt_logprobs"]}},
        "single": {"requests": {"max_n": 1, "max_content_chars": 100}},
        "vision": {
            "requests": {"content_parts": {"image_url": {"max_bytes": 1000, "hosts": [MEDIA_HOST]}}}
        },
    }
    config = gateway_config(
        ["http://upstream.test"], routes=routes, auth={"keys_file": str(folder / "keys.yaml")}
    )
    with in_process_gateway(config, folder) as running:
        gateway = Gateway(running, tenant.key)
        gateway.forwarded()  # nothing but requests from the tests from here on
        yield gateway


def assert_refused(response: httpx.Response, code: str, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)


def test_every_allowed_field_reaches_the_upstream_unchanged(gateway: Gateway) -> None:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stream": False,
        "max_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 4,
        "stop": ["a" * 256, "b", "c", "d"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logit_bias": {"42": 1.0},
        "logprobs": True,
        "top_logprobs": 20,
        "user": "u1",
        "metadata": {"topic": "billing"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 1,
        "ignore_eos": False,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    assert set(body) - {"stream_options", "max_completion_tokens", "response_format"} == set(
        default_fields("chat")
    ) - {"stream_options", "max_completion_tokens", "response_format"}
    response = gateway.post(CHAT, body)
    assert response.status_code == 200, response.text
    assert gateway.forwarded() == [{**body, "model": "tiny"}]


def test_completions_forward_their_own_fields(gateway: Gateway) -> None:
    body = {"model": "chat", "prompt": "hi", "logprobs": 20, "echo": True, "suffix": "!"}
    body["metadata"] = {"topic": "billing"}
    assert gateway.post(COMPLETIONS, body).status_code == 200
    assert gateway.forwarded() == [{**body, "model": "tiny"}]


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        (CHAT, "vllm_xargs", {"k": 1}),
        (CHAT, "logits_processors", ["x"]),
        (CHAT, "kv_transfer_params", {"remote_host": "10.0.0.1"}),
        (CHAT, "priority", -100),
        (CHAT, "chat_template", "{% for i in range(99999999) %}x{% endfor %}"),
        (CHAT, "chat_template_kwargs", {"enable_thinking": True}),
        (CHAT, "mm_processor_kwargs", {}),
        (CHAT, "prompt_logprobs", 5),
        (CHAT, "use_beam_search", True),
        (CHAT, "request_id", "mine"),
        (CHAT, "echo", True),  # a completions field, not chat's
        (CHAT, "structured_outputs", {"json": {}}),
        (CHAT, "a_field_vllm_adds_next_year", 1),
        (COMPLETIONS, "best_of", 8),
        (COMPLETIONS, "prompt_embeds", "AAAA"),
        (COMPLETIONS, "top_logprobs", 2),  # a chat field, not completions'
    ],
)
def test_fields_off_the_allowlist_are_refused_before_the_upstream(
    gateway: Gateway, path: str, name: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "chat", name: value}
    body.update({"messages": MESSAGES} if path == CHAT else {"prompt": "hi"})
    response = gateway.post(path, body)
    if name == "structured_outputs":  # a reserved name: refused by the earlier check
        assert response.status_code == 400
        assert response.json()["error"]["param"] == name
    else:
        assert_refused(response, "unsupported_parameter", name)
        assert f"`{name}`" in response.json()["error"]["message"]
    assert gateway.forwarded() == []


def test_a_route_may_opt_in_to_a_field_and_then_it_is_forwarded(gateway: Gateway) -> None:
    response = gateway.chat("prioritised", priority=-5, prompt_logprobs=2)
    assert response.status_code == 200, response.text
    assert gateway.forwarded()[0]["priority"] == -5
    # Opted in, still bounded.
    assert_refused(
        gateway.chat("prioritised", prompt_logprobs=-1), "out_of_bounds", "prompt_logprobs"
    )
    assert_refused(
        gateway.chat("prioritised", prompt_logprobs=21), "out_of_bounds", "prompt_logprobs"
    )
    assert gateway.forwarded() == []


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"n": 5}, "n"),
        (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (CHAT, {"stop": "x" * 257}, "stop"),
        (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (COMPLETIONS, {"logprobs": 21}, "logprobs"),
        (CHAT, {"max_tokens": 4097}, "max_tokens"),
        (CHAT, {"max_completion_tokens": 4097}, "max_completion_tokens"),
        (CHAT, {"min_tokens": 4097}, "min_tokens"),
        (CHAT, {"seed": -1}, "seed"),
        (CHAT, {"logit_bias": {str(token): 1.0 for token in range(301)}}, "logit_bias"),
        (
            CHAT,
            {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(33)]},
            "tools",
        ),
        (
            CHAT,
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "description": "x" * 70_000}}
                ]
            },
            "tools",
        ),
        (CHAT, {"messages": [{"role": "user", "content": "x" * (256 * 1024 + 1)}]}, "messages"),
        (COMPLETIONS, {"prompt": "x" * (256 * 1024 + 1)}, "prompt"),
    ],
)
def test_values_past_a_bound_are_refused_naming_the_parameter(
    gateway: Gateway, path: str, fields: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "chat"}
    body.update({"messages": MESSAGES} if path == CHAT else {"prompt": "hi"})
    body.update(fields)
    code = (
        "invalid_request" if param in ("max_tokens", "max_completion_tokens") else "out_of_bounds"
    )
    assert_refused(gateway.post(path, body), code, param)
    assert gateway.forwarded() == []


def test_a_route_sets_its_own_bounds(gateway: Gateway) -> None:
    assert gateway.chat("chat", n=2).status_code == 200
    assert_refused(gateway.chat("single", n=2), "out_of_bounds", "n")
    long = [{"role": "user", "content": "x" * 60}, {"role": "user", "content": "y" * 41}]
    assert_refused(gateway.chat("single", messages=long), "out_of_bounds", "messages")
    assert len(gateway.forwarded()) == 1


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": "hi", "chat_template": "x"}, "messages.0.chat_template"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
            "messages.0.content.0.type",
        ),
        (
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]},
            "messages.0.content.0.type",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": ""}}]},
            "messages.0.content.0.type",
        ),
        (
            {"role": "user", "content": [{"image_url": "https://x/y.png"}]},
            "messages.0.content.0.type",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "hi", "image_url": PNG}]},
            "messages.0.content.0",
        ),
    ],
)
def test_messages_carry_only_known_keys_and_text_parts(
    gateway: Gateway, message: dict[str, Any], param: str
) -> None:
    assert_refused(gateway.chat(messages=[message]), "unsupported_parameter", param)
    assert gateway.forwarded() == []


def test_an_assistant_answer_can_be_sent_back_as_history(gateway: Gateway) -> None:
    answer = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
        "reasoning_content": None,
    }
    history = [*MESSAGES, answer, {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    assert gateway.chat(messages=history).status_code == 200
    assert gateway.forwarded()[0]["messages"] == history


def image(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url", [PNG, f"https://{MEDIA_HOST}/cat.png", f"http://{MEDIA_HOST}/a?b=c#d"]
)
def test_a_media_route_forwards_small_inline_images_and_allowed_hosts(
    gateway: Gateway, url: str
) -> None:
    assert gateway.chat("vision", messages=image(url)).status_code == 200
    assert gateway.forwarded()[0]["messages"] == image(url)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64," + "A" * 1400, "out_of_bounds"),
        ("data:video/mp4;base64,AAAA", "unsupported_parameter"),
        ("data:image/png,rawbytes", "unsupported_parameter"),
        ("https://evil.example.com/cat.png", "unsupported_parameter"),
        (f"https://{MEDIA_HOST}:6379/", "unsupported_parameter"),
        (f"https://{MEDIA_HOST}@evil.example.com/", "unsupported_parameter"),
        (f"https://evil.example.com\\@{MEDIA_HOST}/", "unsupported_parameter"),
        (f"https://{MEDIA_HOST}.evil.example.com/", "unsupported_parameter"),
        ("file:///etc/passwd", "unsupported_parameter"),
        ("http://169.254.169.254/latest/meta-data/", "unsupported_parameter"),
    ],
)
def test_a_media_route_refuses_big_images_and_other_hosts(
    gateway: Gateway, url: str, code: str
) -> None:
    response = gateway.chat("vision", messages=image(url))
    assert_refused(response, code, "messages.0.content.1.image_url.url")
    assert gateway.forwarded() == []


def test_slash_variants_are_not_redirected_and_host_is_never_echoed(gateway: Gateway) -> None:
    for path in ("/admin/routes/", "/v1/models/", "/healthz/", "/admin/routes/chat/"):
        response = gateway.gateway.client.get(path, headers={"host": "evil.example.com"})
        assert response.status_code == 404, path
        assert "location" not in response.headers
        assert "evil.example.com" not in response.text


# --- the property: no field off the allowlist ever reaches the upstream -------------------------

ALLOWED_CHAT = default_fields("chat")
KNOWN_NAMES = sorted(rule.name for rule in FIELDS)
JSON_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 30)
    | st.text(max_size=4)
    | st.lists(st.integers(0, 3), max_size=3)
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.dictionaries(
        st.sampled_from(KNOWN_NAMES) | st.text(min_size=1, max_size=12), JSON_VALUES, max_size=4
    ),
    stream=st.booleans(),
)
def test_no_unknown_top_level_field_ever_reaches_the_upstream(
    gateway: Gateway, extra: dict[str, Any], stream: bool
) -> None:
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 4, **extra, "stream": stream}
    body["model"] = "chat"
    response = gateway.post(CHAT, body)
    forwarded = gateway.forwarded()
    unknown = set(body) - ALLOWED_CHAT
    if unknown:
        assert response.status_code in (400, 422), response.text
        assert forwarded == []
        if response.status_code == 400 and response.json()["error"]["code"] != "out_of_bounds":
            assert response.json()["error"]["param"] in unknown
    for sent in forwarded:
        assert set(sent) <= ALLOWED_CHAT
        assert orjson.loads(orjson.dumps(sent)) == {**body, "model": "tiny"}
