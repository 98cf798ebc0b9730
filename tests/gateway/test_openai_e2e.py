"""End to end with the official `openai` client: gateway in front of a real vLLM (CPU)."""

from __future__ import annotations

import openai
import pytest

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION
from tests.support.demo import BASE_MODEL, DEMO_ROUTES

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Please summarize the late delivery ticket."}]
GREEDY = {"temperature": 0, "max_tokens": 12}


def client(origin: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)


def greedy_chat(origin: str, model: str) -> str:
    answer = client(origin).chat.completions.create(model=model, messages=PROMPT, **GREEDY)
    content = answer.choices[0].message.content
    assert content is not None
    return content


@pytest.mark.parametrize("route", sorted(DEMO_ROUTES))
def test_every_route_answers_a_chat_completion_with_its_headers(
    gateway_url: str, route: str
) -> None:
    raw = client(gateway_url).chat.completions.with_raw_response.create(
        model=route, messages=PROMPT, **GREEDY
    )
    answer = raw.parse()
    assert answer.model == route
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == GREEDY["max_tokens"]
    assert raw.headers["x-turnout-route"] == route
    expected_adapter = DEMO_ROUTES[route].get("stable")
    assert raw.headers.get("x-turnout-adapter") == expected_adapter
    assert raw.headers["x-request-id"]


@pytest.mark.parametrize("route", sorted(DEMO_ROUTES))
def test_streamed_chat_matches_the_unstreamed_answer(gateway_url: str, route: str) -> None:
    stream = client(gateway_url).chat.completions.create(
        model=route, messages=PROMPT, stream=True, **GREEDY
    )
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {route}
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert streamed == greedy_chat(gateway_url, route)


def completion_text(origin: str, model: str, stream: bool) -> str:
    api = client(origin)
    if stream:
        chunks = api.completions.create(
            model=model, prompt="Refund the order", stream=True, **GREEDY
        )
        return "".join(chunk.choices[0].text for chunk in chunks)
    return api.completions.create(model=model, prompt="Refund the order", **GREEDY).choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_text_completions_match_vllm_for_the_adapter(
    gateway_url: str, vllm_url: str, stream: bool
) -> None:
    route = DEMO_ADAPTERS[0]
    through_gateway = completion_text(gateway_url, route, stream)
    assert through_gateway
    assert through_gateway == completion_text(vllm_url, f"{route}@{DEMO_VERSION}", stream)


def test_two_adapters_answer_differently_and_unlike_the_base(gateway_url: str) -> None:
    answers = {route: greedy_chat(gateway_url, route) for route in DEMO_ROUTES}
    assert len(set(answers.values())) == len(answers), answers


def test_each_route_answers_exactly_as_vllm_does_for_its_adapter(
    gateway_url: str, vllm_url: str
) -> None:
    for route, target in DEMO_ROUTES.items():
        served_name = target.get("stable", BASE_MODEL)
        assert greedy_chat(gateway_url, route) == greedy_chat(vllm_url, served_name), route


def test_models_lists_the_routes_not_vllm_names(gateway_url: str) -> None:
    listed = {model.id for model in client(gateway_url).models.list()}
    assert listed == set(DEMO_ROUTES)
    assert not any(f"@{DEMO_VERSION}" in name for name in listed)
