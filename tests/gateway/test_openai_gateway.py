"""The OpenAI surface in-process, with the official `openai` client: the gateway built over a
synthetic store of the demo adapters, in front of the in-memory upstream. Route headers, the
upstream asked for the route's adapter, and vLLM's names rewritten to the route's in whole and
streamed answers. The same against a real vLLM, through a gateway process: test_openai_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.demo import DEMO_VERSION
from tests.support.demo import BASE_MODEL, DEMO_ROUTES, gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.upstream import DEFAULT_TEXT

PROMPT = [{"role": "user", "content": "Please summarize the late delivery ticket."}]


@pytest.fixture(scope="module")
def gateway(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    config = gateway_config(["http://vllm.test"], synthetic_store)
    with in_process_gateway(config, tmp_path_factory.mktemp("openai")) as running:
        yield running


@pytest.mark.parametrize("route", sorted(DEMO_ROUTES))
def test_every_route_answers_with_its_headers_and_asks_for_its_adapter(
    gateway: InProcessGateway, route: str
) -> None:
    gateway.upstream.forwarded()
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model=route,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=12,
    )
    answer = raw.parse()
    assert answer.model == route
    assert answer.choices[0].message.content == DEFAULT_TEXT
    assert answer.usage is not None
    assert raw.headers["x-turnout-route"] == route
    expected_adapter = DEMO_ROUTES[route].get("stable")
    assert raw.headers.get("x-turnout-adapter") == expected_adapter
    assert raw.headers["x-request-id"]
    (sent,) = gateway.upstream.forwarded()
    assert sent["model"] == (expected_adapter or BASE_MODEL)
    assert gateway.upstream.exchanges[-1].request_id == raw.headers["x-request-id"]


@pytest.mark.parametrize("route", sorted(DEMO_ROUTES))
def test_a_streamed_answer_is_relayed_with_the_route_as_its_model(
    gateway: InProcessGateway, route: str
) -> None:
    stream = gateway.openai().chat.completions.create(
        model=route,
        messages=PROMPT,  # type: ignore[arg-type]
        stream=True,
        max_tokens=12,
    )
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {route}
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == DEFAULT_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert gateway.upstream.exchanges[-1].closed  # the upstream stream was closed at its end


def test_text_completions_are_relayed_whole_and_streamed(gateway: InProcessGateway) -> None:
    api = gateway.openai()
    whole = api.completions.create(model="summarize", prompt="Refund the order", max_tokens=12)
    assert (whole.model, whole.choices[0].text) == ("summarize", DEFAULT_TEXT)
    chunks = list(
        api.completions.create(
            model="summarize", prompt="Refund the order", max_tokens=12, stream=True
        )
    )
    assert {chunk.model for chunk in chunks} == {"summarize"}
    assert "".join(chunk.choices[0].text for chunk in chunks) == DEFAULT_TEXT


def test_models_lists_the_routes_not_vllm_names(gateway: InProcessGateway) -> None:
    listed = {model.id for model in gateway.openai().models.list()}
    assert listed == set(DEMO_ROUTES)
    assert not any(f"@{DEMO_VERSION}" in name for name in listed)
