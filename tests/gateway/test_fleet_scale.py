"""Thousands of routed versions: the pre-start check still refuses what it refused, naming the
route; `turnout bench fleet-scale` reports its phases, memory and targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.manifest import MANIFEST_FILE
from gateway.bench.fleet_scale import ScaleScenario, write_config, write_store
from gateway.config import TurnoutConfig, load_config
from gateway.errors import ConfigError
from gateway.serving.startup import check_adapters

VERSIONS = 300


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scale") / "store"
    write_store(folder, VERSIONS)
    return folder


def _config(store: Path, folder: Path, versions: int = VERSIONS) -> TurnoutConfig:
    path = folder / "turnout.yaml"
    scenario = ScaleScenario(versions=versions, warm=3)
    write_config(path, store, ["http://127.0.0.1:9"], scenario)
    return load_config(path)


def test_every_routed_version_is_checked(store: Path, tmp_path: Path) -> None:
    assert check_adapters(_config(store, tmp_path), verify=False) == VERSIONS


def test_a_version_missing_among_hundreds_is_refused_naming_its_route(
    store: Path, tmp_path: Path
) -> None:
    config = _config(store, tmp_path, VERSIONS + 1)  # routes lora-00300@v1, never pushed
    with pytest.raises(ConfigError) as refused:
        check_adapters(config, verify=False)
    assert refused.value.message.startswith(
        f"routes.route-{VERSIONS:05d}.stable: no adapter version lora-{VERSIONS:05d}@v1 in "
    )
    assert "`turnout adapters push` adds one" in refused.value.message


def test_a_bad_manifest_among_hundreds_is_refused_naming_its_route(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    write_store(store, 20)
    manifest = store / "lora-00017" / "v1" / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"rank": 8', '"rank": 0'))
    with pytest.raises(ConfigError) as refused:
        check_adapters(_config(store, tmp_path, 20), verify=False)
    assert refused.value.message.startswith(
        "routes.route-00017.stable: lora-00017@v1 refused (manifest): "
    )
    assert "push a corrected one under a new version" in refused.value.message


def test_bench_fleet_scale_reports_each_phase_memory_and_the_targets() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "bench", "fleet-scale", "--json",
            "--versions", "200", "--warm", "5", "--backends", "2",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["versions_checked"] == report["scenario"]["routes"] == 200
    assert report["warm_versions_loaded"] == 5
    phases = ("load", "check", "build", "publish")
    for phase in (*phases, "deferred_gc", "republish"):
        assert report[f"{phase}_s"] >= 0
        assert report["cpu_s"][phase] >= 0
    assert report["check_and_publish_s"] == pytest.approx(
        sum(report[f"{phase}_s"] for phase in phases), abs=0.005
    )
    assert report["rss_growth_mb"] < 200
    assert set(report["targets"]) == {"check_and_publish_under_1s", "rss_growth_under_200mb"}
