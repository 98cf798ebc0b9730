"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import httpx
import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_healthz_and_readyz_answer_when_vllm_is_up(gateway_url: str) -> None:
    assert httpx.get(gateway_url + "/healthz").json() == {"status": "ok"}
    # Readiness comes from the periodic probes: the first may not have finished yet.
    wait_until(lambda: httpx.get(gateway_url + "/readyz").status_code == 200, 30, "ready")
    assert httpx.get(gateway_url + "/readyz").json() == {"status": "ready"}


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_version_and_status(gateway_url: str) -> None:
    def scrape() -> str:
        response = httpx.get(gateway_url + "/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    labels = {"route": "support-triage", "version": "support-triage@v1"}
    before = scrape()
    body = {"model": "support-triage", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(
        gateway_url + "/v1/chat/completions", json={**body, "max_tokens": 2}
    ).is_success
    assert (
        httpx.post(
            gateway_url + "/v1/chat/completions", json={**body, "max_tokens": -1}
        ).status_code
        == 422
    )
    with httpx.stream(
        "POST", gateway_url + "/v1/chat/completions", json={**body, "max_tokens": 2, "stream": True}
    ) as streamed:
        streamed.read()
    httpx.post(gateway_url + "/v1/chat/completions", json={**body, "model": "who-knows"})
    after = scrape()

    def delta(name: str, **extra: str) -> float:
        return _sample(after, name, **extra) - _sample(before, name, **extra)

    assert delta("turnout_requests_total", **labels, status="200") == 2
    assert delta("turnout_request_duration_seconds_count", **labels) == 2
    assert delta("turnout_requests_total", route="unknown", status="404") == 1
    assert "who-knows" not in after  # client-typed names never become label values
    assert delta("turnout_requests_total", route="unknown", status="422") == 1
