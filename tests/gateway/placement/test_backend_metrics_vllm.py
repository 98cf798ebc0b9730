"""The /metrics reader against a real vLLM (CPU build): the series placement reads are there,
with the names, labels and values the parser expects, after a request for an adapter."""

from __future__ import annotations

import httpx
import pytest

from adapters.demo import DEMO_VERSION
from gateway.config import AdaptersConfig
from gateway.upstream.backend_metrics import LORA_INFO, parse_samples, read_backend

pytestmark = pytest.mark.slow


def test_parser_reads_the_live_vllm_metrics_page_after_a_lora_request(vllm_url: str) -> None:
    adapter = f"summarize@{DEMO_VERSION}"
    answer = httpx.post(
        vllm_url + "/v1/completions",
        json={"model": adapter, "prompt": "hello", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    page = httpx.get(vllm_url + "/metrics", timeout=30).text
    reading = read_backend(page)
    assert reading.waiting == 0, page
    assert reading.running == 0
    assert reading.max_lora == AdaptersConfig().max_loras  # the fixture's --max-loras
    # While the request ran, vLLM set a series naming the adapter as running.
    running = [s.labels["running_lora_adapters"] for s in parse_samples(page, [LORA_INFO])]
    assert any(adapter in names.split(",") for names in running), running
