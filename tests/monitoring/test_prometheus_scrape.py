"""A real Prometheus scrapes a gateway driven with real traffic: every dashboard panel has data.

The gateway fronts the session's real vLLM and one backend that is down, so that errors are
real too (502s, upstream errors). It is configured as in production: tenant keys, and the admin
API on a listener of its own, which is where `/metrics` is served and scraped (the public port
answers 404 there). Prometheus also scrapes vLLM, whose own metrics the adapters-and-backends
dashboard joins with Turnout's, and evaluates the shipped alert rules. A second gateway, placing
adapters on demand in front of two simulated vLLM backends, feeds the placement row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.base_model import profile_base_model
from adapters.demo import DEMO_VERSION
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.protection.auth import issue_key
from gateway.serving.embedded_vllm import free_port
from tests.monitoring.dashboards import panel_expressions
from tests.monitoring.prometheus_server import Prometheus, running_prometheus
from tests.support.demo import BASE_MODEL, gateway_config
from tests.support.processes import running_gateway, simulated_vllm
from tests.support.sockets import closed_port_url
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "turnout-alerts.yml"
# What Grafana would put in place of the dashboards' variables for this test's data.
VARIABLES = {"$__rate_interval": "1m", "$route": "support-triage"}
# support-triage: an A/B split between two adapters (loaded by the gateway: vLLM has not seen
# these names), under a schema whose short answers get truncated, retried and refused.
ROUTES = {
    "support-triage": {
        "stable": "mon-triage@v1",
        "candidate": "mon-summarize@v1",
        "mode": "ab",
        "weight": 50,
        "schema": {"enum": ["billing", "bug", "account"]},
        "on_invalid": "retry",
        "max_retries": 1,
    },
    "chat": {},
    # A shadow rollout: every request also goes to the candidate, whose answers are compared.
    # (its own candidate: the config change below must load one version and unload another)
    "shadowed": {
        "stable": "mon-triage@v1",
        "candidate": "mon-shadow@v1",
        "mode": "shadow",
        "shadow_percent": 100,
    },
}
SMALL_DRIFT_WINDOWS = {
    "drift": {"reference_size": 10, "window_size": 10, "min_window": 5, "refresh_s": 1},
    "semantic_drift": {"enabled": True, "window": 10, "refresh_s": 1},
}
# The shadow panels are read on the route in shadow mode, every other panel on support-triage.
SHADOW_ROUTE = "shadowed"
# The placement row is fed by a second gateway, with `adapters.placement: demand`, in front of
# two simulated vLLM backends of two slots each: six routes over six versions load and evict.
# One backend loads in 0.75 s, longer than the gateway waits (0.5 s): the first request for a
# version loading there is refused (503 adapter_loading), the second, sent at once, is served
# when the load ends (a cold start), in every round.
PLACED_ROUTES = 6


def monitored_store(demo_model: Path, folder: Path) -> Path:
    registry = AdapterRegistry(str(folder))
    base = profile_base_model(demo_model / "base", BASE_MODEL)
    registry.save_base(base)
    for name, source in (
        ("mon-triage", "support-triage"),
        ("mon-summarize", "summarize"),
        ("mon-sql", "sql-writer"),
        ("mon-shadow", "summarize"),
        *((f"mon-placed-{i}", "summarize") for i in range(PLACED_ROUTES)),
    ):
        adapter = demo_model / "adapters" / source / DEMO_VERSION
        registry.push(adapter, name, base, AdapterLimits(max_lora_rank=16))
    return folder


def placement_gateway_config(store: Path, backends: list[str], admin_port: int) -> dict[str, Any]:
    return {
        "base_model": BASE_MODEL,
        "backends": [{"url": url} for url in backends],
        "adapters": {
            "store": str(store),
            "placement": "demand",
            "max_loras": 2,
            "max_cpu_loras": 2,
            "load_wait_s": 0.5,
        },
        "routes": {f"placed-{i}": {"stable": f"mon-placed-{i}@v1"} for i in range(PLACED_ROUTES)},
        "server": {"admin_port": admin_port},
    }


def drive_placement(origin: str) -> None:
    """Two requests per placed route, in turn: more versions than slots, so loads and evictions;
    the second request of each pair finds its version resident (a hit)."""
    with httpx.Client(base_url=origin, timeout=30) as client:
        for index in range(PLACED_ROUTES):
            body = {"model": f"placed-{index}", "prompt": "hi", "max_tokens": 2}
            for _ in range(2):
                client.post("/v1/completions", json=body)


END_USERS = itertools.count()


def drive_traffic(origin: str, key: str) -> None:
    """Answers, streams and completions on every route, and a request for an unknown route.

    One tenant key, many end users: assignment to an arm is sticky per caller, and the `user`
    field names the caller, so both arms of the A/B split get traffic."""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=origin, timeout=120, headers=headers) as client:
        for route in ROUTES:
            pairs = ((False, 4), (False, 1), (False, 8), (True, 4), (True, 8))
            for n, (stream, max_tokens) in enumerate(pairs):
                body = {
                    "model": route,
                    "messages": [{"role": "user", "content": f"Where is my order {n}?"}],
                    "max_tokens": max_tokens,
                    "stream": stream,
                    "user": f"customer-{next(END_USERS)}",
                }
                client.post("/v1/chat/completions", json=body)
            completion = {"model": route, "prompt": "Hi", "max_tokens": 4}
            client.post(
                "/v1/completions", json={**completion, "user": f"customer-{next(END_USERS)}"}
            )
        client.post("/v1/chat/completions", json={"model": "no-such-route", "messages": []})


def review_round(admin_origin: str, key: str) -> None:
    """A reviewer judges two queued answers, one bad and one good (the review panels)."""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=admin_origin, timeout=30, headers=headers) as client:
        for verdict in ("bad", "good"):
            item = client.get("/review/api/next").json()["item"]
            if item is not None:
                client.post(f"/review/api/items/{item['id']}/judgement", json={"verdict": verdict})


class Scraped(Prometheus):
    """The running Prometheus, and where the gateway it scrapes serves its API and metrics."""

    def __init__(self, origin: str, gateway: str, gateway_metrics: str, placing: str) -> None:
        super().__init__(origin)
        self.gateway = gateway
        self.gateway_metrics = gateway_metrics
        self.placing_metrics = placing


@pytest.fixture(scope="module")
def prometheus(
    vllm_url: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    folder = tmp_path_factory.mktemp("prometheus")
    tenant = issue_key()
    keys = {"tenants": {"monitored": {"routes": ["*"], "keys": [{"sha256": tenant.sha256}]}}}
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    reviewer = issue_key()
    admins = {"admins": {}, "reviewers": {"rita": [{"sha256": reviewer.sha256}]}}
    (folder / "admins.yaml").write_text(yaml.safe_dump(admins))
    admin_port = free_port()
    config = gateway_config(
        [vllm_url, closed_port_url()],
        monitored_store(demo_model, folder / "store"),
        routes=ROUTES,
        monitoring=SMALL_DRIFT_WINDOWS,
        state={"dir": str(folder / "state"), "config_poll_s": 0.5},
        server={"admin_port": admin_port},
        auth={
            "keys_file": str(folder / "keys.yaml"),
            "admin_keys_file": str(folder / "admins.yaml"),
        },
    )
    gateway_metrics = f"http://127.0.0.1:{admin_port}"
    placing_port = free_port()
    placing_metrics = f"http://127.0.0.1:{placing_port}"
    with (
        simulated_vllm("--resident", "2", "--batch", "2", "--load-ms", "50") as quick,
        simulated_vllm("--resident", "2", "--batch", "2", "--load-ms", "750") as slow,
        running_gateway(
            placement_gateway_config(folder / "store", [quick, slow], placing_port), folder
        ) as placing,
        running_gateway(config, folder) as gateway,
        running_prometheus(
            {"turnout": [gateway_metrics, placing_metrics], "vllm": [vllm_url]},
            folder / "prometheus",
            [RULES],
        ) as server,
    ):
        # Series appear on a gateway's first request for them: a rate needs traffic on both
        # sides of a scrape, so traffic goes on in rounds until Prometheus sees rates.
        ready = (
            "sum(rate(turnout_requests_total[1m])) > 0",
            "sum(rate(vllm:generation_tokens_total[1m])) > 0",
            # Drift scores need a reference and a window of prompts per version first.
            'count(turnout_drift_score{route="support-triage"}) > 0',
            # Refused answers are queued for review, and a reviewer judges some each round.
            'sum(rate(turnout_review_judgements_total{route="support-triage"}[1m])) > 0',
            # Shadow pairs are compared and analysed; semantic drift needs two windows.
            f'count(turnout_shadow_analysis_state{{route="{SHADOW_ROUTE}"}}) > 0',
            'count(turnout_semantic_drift_mmd{route="support-triage"}) > 0',
            # Placement: cold starts served, evictions, and requests refused for loading.
            "sum(rate(turnout_adapter_cold_start_wait_seconds_count[1m])) > 0",
            "sum(rate(turnout_adapter_evictions_total[1m])) > 0",
            'sum(rate(turnout_adapter_placement_requests_total{result!~"hit|cold"}[1m])) > 0',
        )

        def traffic_seen() -> bool:
            drive_traffic(gateway, tenant.key)
            drive_placement(placing)
            review_round(gateway_metrics, reviewer.key)
            return all(map(server.has_finite_value, ready))

        # A config change applied while serving, after Prometheus saw the start-up loads: the
        # candidate changes, so one adapter is loaded and one unloaded (reload and load panels).
        wait_until(
            lambda: server.has_finite_value("sum(turnout_adapter_loads_total)"), 60, "a scrape"
        )
        path = folder / f"gateway-{gateway.rsplit(':', 1)[1]}.yaml"

        def change_candidate(candidate: str) -> None:
            changed = yaml.safe_load(path.read_text())
            changed["routes"]["support-triage"]["candidate"] = candidate
            path.write_text(yaml.safe_dump(changed))

        change_candidate("mon-sql@v1")
        try:
            wait_until(traffic_seen, 180, "Prometheus to see rates of the traffic")
        except AssertionError as error:
            seen = {expr: server.query(expr) for expr in ready}
            raise AssertionError(f"{error}; targets {server.targets_health()}; {seen}") from None
        # And back, so that a load and an unload are in the panels' rate windows however long
        # the traffic above took.
        change_candidate("mon-summarize@v1")
        reloaded = (
            "sum(rate(turnout_adapter_unloads_total[1m])) > 0",
            "sum(rate(turnout_adapter_load_duration_seconds_count[1m])) > 0",
        )

        def reloads_seen() -> bool:
            drive_traffic(gateway, tenant.key)
            drive_placement(placing)
            return all(map(server.has_finite_value, reloaded))

        wait_until(reloads_seen, 90, "the reload's load and unload scraped")
        yield Scraped(server.origin, gateway, gateway_metrics, placing_metrics)


def test_prometheus_scrapes_the_gateway_and_vllm(prometheus: Scraped) -> None:
    health = prometheus.targets_health()
    assert len(health) == 3
    assert set(health.values()) == {"up"}
    assert f"{prometheus.gateway_metrics}/metrics" in health
    assert f"{prometheus.placing_metrics}/metrics" in health


def test_the_public_port_serves_no_metrics_to_anyone(prometheus: Scraped) -> None:
    assert httpx.get(f"{prometheus.gateway}/metrics").status_code == 404


def test_shipped_alert_rules_evaluate_without_errors_on_real_series(prometheus: Prometheus) -> None:
    wait_until(
        lambda: all(not rule["lastEvaluation"].startswith("0001") for rule in prometheus.rules()),
        30,
        "every rule to be evaluated",
    )
    assert {(rule["name"], rule["health"]) for rule in prometheus.rules()} == {
        (rule["name"], "ok") for rule in prometheus.rules()
    }


PANELS = panel_expressions()


@pytest.mark.parametrize(
    "expr",
    [expr for _, _, expr in PANELS],
    ids=[f"{dashboard}:{panel}" for dashboard, panel, _ in PANELS],
)
def test_dashboard_panel_expression_returns_data(prometheus: Prometheus, expr: str) -> None:
    route = SHADOW_ROUTE if "turnout_shadow_" in expr else VARIABLES["$route"]
    for variable, value in {**VARIABLES, "$route": route}.items():
        expr = expr.replace(variable, value)
    assert prometheus.has_finite_value(expr), (
        f"no data for: {expr}; targets {prometheus.targets_health()}"
    )
