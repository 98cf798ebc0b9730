"""The Grafana dashboards are valid for schemaVersion 39 and query only catalogued metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import monitoring.metrics  # noqa: F401  # registers the catalogue
from tests.monitoring.dashboards import dashboards, data_panels, panel_expressions

SCHEMA_VERSION = 39
PANEL_TYPES = {"timeseries", "stat"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# vLLM's own metrics that the dashboards join with Turnout's (vLLM's v1 metric names).
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
}


def turnout_metric_names() -> set[str]:
    """The series names each catalogued metric exposes (families without samples included)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("turnout_")
        for suffix in suffixes[family.type]
    }


def test_four_dashboards_are_shipped() -> None:
    assert [path.name for path, _ in dashboards()] == [
        "turnout-adapters-backends.json",
        "turnout-fleet.json",
        "turnout-rollout.json",
        "turnout-route.json",
    ]


@pytest.mark.parametrize(
    ("path", "dashboard"), dashboards(), ids=[path.name for path, _ in dashboards()]
)
def test_dashboard_json_has_the_shape_grafana_schema_39_expects(
    path: Path, dashboard: dict[str, Any]
) -> None:
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"].startswith("Turnout / ")
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
    for panel in data_panels(dashboard):
        assert panel["type"] in PANEL_TYPES
        assert panel["title"]
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip()
            # Every dashboard variable an expression uses is defined (or is Grafana's own).
            for used in re.findall(r"\$([A-Za-z_]\w*)", target["expr"]):
                assert used in variables or used == "__rate_interval", (path.name, used)


def test_dashboards_do_not_overlap_panels() -> None:
    for path, dashboard in dashboards():
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & area, (path.name, panel["title"])
            cells |= area


def test_route_dashboards_select_the_route_from_turnout_requests() -> None:
    for path, dashboard in dashboards():
        if path.name in ("turnout-route.json", "turnout-rollout.json"):
            route = next(v for v in dashboard["templating"]["list"] if v["name"] == "route")
            assert route["query"]["query"] == "label_values(turnout_requests_total, route)"


@pytest.mark.parametrize(("dashboard", "panel", "expr"), panel_expressions())
def test_panels_query_only_catalogued_turnout_metrics_and_vllms_own(
    dashboard: str, panel: str, expr: str
) -> None:
    catalogue = turnout_metric_names()
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    names = set(re.findall(r"\b(?:turnout_\w+|vllm:\w+)", without_strings))
    assert names
    for name in names:
        if name.startswith("turnout_"):
            assert name in catalogue, name
        else:
            assert name in VLLM_METRICS, name
