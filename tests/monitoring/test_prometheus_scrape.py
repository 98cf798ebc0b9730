"""A real Prometheus scrapes a gateway driven with real traffic: every dashboard panel has data.

The gateway fronts the session's real vLLM and one backend that is down, so that errors are
real too (502s, upstream errors). Prometheus also scrapes vLLM, whose own metrics the
adapters-and-backends dashboard joins with Turnout's, and evaluates the shipped alert rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    DEMO_ROUTES,
    closed_port_url,
    gateway_config,
    running_gateway,
    wait_until,
)
from tests.monitoring.dashboards import panel_expressions
from tests.monitoring.prometheus_server import Prometheus, running_prometheus

pytestmark = pytest.mark.slow

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "turnout-alerts.yml"
# What Grafana would put in place of the dashboards' variables for this test's data.
VARIABLES = {"$__rate_interval": "1m", "$route": "support-triage"}


def drive_traffic(origin: str) -> None:
    """Answers, streams and completions on every route, and a request for an unknown route."""
    with httpx.Client(base_url=origin, timeout=120) as client:
        for route in DEMO_ROUTES:
            for stream in (False, False, False, True, True, True):
                body = {
                    "model": route,
                    "messages": [{"role": "user", "content": "Where is my order?"}],
                    "max_tokens": 4,
                    "stream": stream,
                }
                client.post("/v1/chat/completions", json=body)
            client.post("/v1/completions", json={"model": route, "prompt": "Hi", "max_tokens": 4})
        client.post("/v1/chat/completions", json={"model": "no-such-route", "messages": []})


@pytest.fixture(scope="module")
def prometheus(vllm_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    folder = tmp_path_factory.mktemp("prometheus")
    config = gateway_config([vllm_url, closed_port_url()])
    with (
        running_gateway(config, folder) as gateway,
        running_prometheus(
            {"turnout": [gateway], "vllm": [vllm_url]}, folder / "prometheus", [RULES]
        ) as server,
    ):
        # Series appear on a gateway's first request for them: a rate needs traffic on both
        # sides of a scrape, so traffic goes on in rounds until Prometheus sees rates.
        ready = (
            "sum(rate(turnout_requests_total[1m])) > 0",
            "sum(rate(vllm:generation_tokens_total[1m])) > 0",
        )

        def traffic_seen() -> bool:
            drive_traffic(gateway)
            return all(map(server.has_finite_value, ready))

        try:
            wait_until(traffic_seen, 120, "Prometheus to see rates of the traffic")
        except AssertionError as error:
            seen = {expr: server.query(expr) for expr in ready}
            raise AssertionError(f"{error}; targets {server.targets_health()}; {seen}") from None
        yield server


def test_prometheus_scrapes_the_gateway_and_vllm(prometheus: Prometheus) -> None:
    health = prometheus.targets_health()
    assert len(health) == 2
    assert set(health.values()) == {"up"}


def test_shipped_alert_rules_evaluate_without_errors_on_real_series(prometheus: Prometheus) -> None:
    wait_until(
        lambda: all(not rule["lastEvaluation"].startswith("0001") for rule in prometheus.rules()),
        30,
        "every rule to be evaluated",
    )
    assert {(rule["name"], rule["health"]) for rule in prometheus.rules()} == {
        (rule["name"], "ok") for rule in prometheus.rules()
    }


@pytest.mark.parametrize(
    "expr",
    [expr for _, _, expr in panel_expressions()],
    ids=[f"{dashboard}:{panel}" for dashboard, panel, _ in panel_expressions()],
)
def test_dashboard_panel_expression_returns_data(prometheus: Prometheus, expr: str) -> None:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert prometheus.has_finite_value(expr), f"no data for: {expr}"
