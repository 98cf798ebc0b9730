"""Reading the shipped Grafana dashboards: files, panels and their PromQL expressions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "grafana"


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in sorted(DASHBOARD_DIR.glob("*.json"))]


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries data (rows only group them)."""
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def panel_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, "panel title/refId", PromQL) for every target of every panel."""
    return [
        (path.name, f"{panel['title']}/{target['refId']}", target["expr"])
        for path, dashboard in dashboards()
        for panel in data_panels(dashboard)
        for target in panel["targets"]
    ]
