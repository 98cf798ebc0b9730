"""The chart's dashboards and alert rules are monitoring/'s, copied by helm/sync-monitoring.sh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.chart import CHART, REPO

SYNC = REPO / "helm" / "sync-monitoring.sh"
PAIRS = [
    (REPO / "monitoring" / "grafana", "*.json", CHART / "files" / "dashboards"),
    (REPO / "monitoring" / "prometheus", "*-alerts.yml", CHART / "files" / "rules"),
]


@pytest.mark.parametrize(("source", "pattern", "copy"), PAIRS)
def test_chart_copies_are_identical_to_the_monitoring_sources(
    source: Path, pattern: str, copy: Path
) -> None:
    sources = sorted(source.glob(pattern))
    assert sources, f"no {pattern} in {source.relative_to(REPO)}"
    copies = sorted(copy.iterdir())
    assert [p.name for p in copies] == [p.name for p in sources], "run helm/sync-monitoring.sh"
    for original, copied in zip(sources, copies, strict=True):
        assert copied.read_bytes() == original.read_bytes(), f"{copied.name}: run the sync script"


def test_sync_script_mirrors_monitoring_into_the_chart(tmp_path: Path) -> None:
    """On a scratch tree: new files arrive, stale ones (the placeholders) go."""
    (tmp_path / "helm").mkdir()
    shutil.copy2(SYNC, tmp_path / "helm" / SYNC.name)
    for _, _, copy in PAIRS:
        chart_folder = tmp_path / copy.relative_to(REPO)
        chart_folder.mkdir(parents=True)
        stale = "stale.json" if copy.name == "dashboards" else "stale-alerts.yml"
        (chart_folder / stale).write_text("old")
    grafana = tmp_path / "monitoring" / "grafana"
    prometheus = tmp_path / "monitoring" / "prometheus"
    grafana.mkdir(parents=True)
    prometheus.mkdir(parents=True)
    (grafana / "overview.json").write_text('{"title": "Overview"}\n')
    (prometheus / "turnout-alerts.yml").write_text("groups: []\n")
    (prometheus / "recording.yml").write_text("groups: []\n")  # not an alerts file: not copied

    done = subprocess.run(
        ["sh", str(tmp_path / "helm" / SYNC.name)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    files = tmp_path / "helm" / "turnout" / "files"
    assert sorted(p.name for p in (files / "dashboards").iterdir()) == ["overview.json"]
    assert sorted(p.name for p in (files / "rules").iterdir()) == ["turnout-alerts.yml"]
    assert (files / "dashboards" / "overview.json").read_text() == '{"title": "Overview"}\n'


def test_sync_script_keeps_the_chart_as_is_when_the_sources_are_missing(tmp_path: Path) -> None:
    (tmp_path / "helm").mkdir()
    shutil.copy2(SYNC, tmp_path / "helm" / SYNC.name)
    dashboards = tmp_path / "helm" / "turnout" / "files" / "dashboards"
    dashboards.mkdir(parents=True)
    (dashboards / "kept.json").write_text("{}")

    done = subprocess.run(
        ["sh", str(tmp_path / "helm" / SYNC.name)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 1
    assert "missing:" in done.stderr
    assert (dashboards / "kept.json").exists()
