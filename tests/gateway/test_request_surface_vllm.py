"""The request surface against a real vLLM (CPU build) that schedules by priority: a tenant's
`priority` is refused on an ordinary route before it reaches that queue, and the OpenAI client's
ordinary calls still work within the bounds. (That an opted-in `priority` reorders vLLM's queue
was observed when this file runs alone, but not reliably inside the whole suite: not in CI.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.config import AdaptersConfig
from gateway.protection.auth import issue_key
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from tests.support.demo import BASE_MODEL, embedded_config, gateway_config
from tests.support.processes import running_gateway

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def priority_vllm(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM with priority scheduling and one sequence at a time: a queue that `priority` orders."""
    port = free_port()
    config = embedded_config(demo_model).model_copy(
        update={"extra_args": ["--scheduling-policy", "priority", "--max-num-seqs", "1"]}
    )
    server = EmbeddedVllm(
        vllm_command(config, AdaptersConfig(), BASE_MODEL, port, {}),
        port,
        tmp_path_factory.mktemp("logs") / "vllm-priority.log",
    )
    server.start()
    try:
        server.wait_ready(timeout_s=300)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    priority_vllm: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    folder = tmp_path_factory.mktemp("surface-vllm")
    tenant = issue_key()
    keys = {"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": tenant.sha256}]}}}
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    routes = {"chat": {}, "ops": {"requests": {"extra_fields": ["priority"]}}}
    config = gateway_config(
        [priority_vllm], routes=routes, auth={"keys_file": str(folder / "keys.yaml")}
    )
    with running_gateway(config, folder) as origin:
        yield origin, tenant.key


def test_a_tenant_cannot_send_priority_on_an_ordinary_route(gateway: tuple[str, str]) -> None:
    origin, key = gateway
    client = openai.OpenAI(base_url=f"{origin}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            extra_body={"priority": -10},
        )
    assert refused.value.body is not None
    assert refused.value.body["param"] == "priority"  # type: ignore[index]
    assert refused.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    # The same client, the same request without it: served by vLLM.
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None


def test_the_openai_clients_ordinary_calls_work_within_bounds(gateway: tuple[str, str]) -> None:
    origin, key = gateway
    client = openai.OpenAI(base_url=f"{origin}/v1", api_key=key, max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hello."}]
    chat = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=4,
        n=2,
        stop=["\n\n", "###", "END", "."],
        seed=3,
        logprobs=True,
        top_logprobs=20,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 1},
    )
    assert len(chat.choices) == 2
    assert chat.choices[0].logprobs is not None
    content = chat.choices[0].logprobs.content
    assert content is not None
    assert len(content[0].top_logprobs) == 20
    text = client.completions.create(model="chat", prompt="Hello", max_tokens=4, logprobs=5)
    assert text.choices[0].logprobs is not None
    stream = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=4, stream=True
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model="chat", messages=messages, max_tokens=4, logprobs=True, top_logprobs=21
        )
