"""`turnout flywheel run`'s refusals, before anything slow: no data, too little data, no key.

The whole cycle (train, gate, push, canary) runs in the training image against a real vLLM and
gateway: tests/deploy/test_images.py.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from adapters.registry import AdapterRegistry
from gateway.cli.main import build_parser, main
from gateway.cli.training import _default_retrain_command
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.training.capture_writer import record
from training.capture import CaptureSettings, SqliteCaptureSink
from training.retrain import RetrainInputs, RetrainRefused, retrain
from training.tickets import ROUTE, SCHEMA

ADMIN = {"admin_url": "http://127.0.0.1:9", "admin_key": "k"}


@pytest.fixture
def site(demo_model: Path, tmp_path: Path) -> dict[str, object]:
    store = tmp_path / "adapters"
    shutil.copytree(demo_model / "adapters", store)
    captures = tmp_path / "captures.db"
    sink = SqliteCaptureSink(CaptureSettings(path=str(captures)))
    for index in range(5):
        sink.offer(record(index))
    sink.close()
    raw = {
        "base_model": "tiny",
        "backends": [{"url": "http://127.0.0.1:9"}],
        "adapters": {"store": str(store)},
        "routes": {ROUTE: {"stable": f"{ROUTE}@v1", "schema": SCHEMA}},
        "capture": {"path": str(captures)},
    }
    (tmp_path / "turnout.yaml").write_text(yaml.safe_dump(raw))
    return {"raw": raw, "store": store, "folder": tmp_path, "base": str(demo_model / "base")}


def test_too_little_data_is_refused_before_training_and_nothing_is_pushed(
    site: dict[str, object], tmp_path: Path
) -> None:
    config = parse_config(site["raw"])
    inputs = RetrainInputs(ROUTE, str(site["base"]), tmp_path / "run", **ADMIN)
    with pytest.raises(RetrainRefused, match=f"too little data for {ROUTE}"):
        retrain(config, inputs)
    assert not (tmp_path / "run" / "run").exists()
    assert [m.version for m in AdapterRegistry(str(site["store"])).list(ROUTE)] == ["v1"]


def test_a_cycle_without_an_admin_key_is_refused_before_it_starts(
    site: dict[str, object], tmp_path: Path
) -> None:
    config = parse_config(site["raw"])
    with pytest.raises(ConfigError, match="admin"):
        retrain(config, RetrainInputs(ROUTE, str(site["base"]), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_flywheel_run_exits_1_and_says_why_when_there_are_no_captures(
    site: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(str(site["folder"]))
    (folder / "captures.db").unlink()
    code = main(["flywheel", "run", "--route", ROUTE, "--config", str(folder / "turnout.yaml"),
                 "--base-model", str(site["base"]), "--admin-url", "http://127.0.0.1:9",
                 "--admin-key", "k", "--work-root", str(folder / "runs")])  # fmt: skip
    assert code == 1
    assert f"no captures for {ROUTE}" in capsys.readouterr().err


def test_flywheel_run_for_an_unknown_route_is_a_config_error(
    site: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(str(site["folder"]))
    code = main(["flywheel", "run", "--route", "nope", "--config", str(folder / "turnout.yaml"),
                 "--base-model", str(site["base"]), "--admin-key", "k",
                 "--admin-url", "http://127.0.0.1:9"])  # fmt: skip
    assert code == 2
    assert "no route 'nope'" in capsys.readouterr().err


def test_flywheel_watch_retrains_with_flywheel_run_unless_told_otherwise() -> None:
    args = build_parser().parse_args(
        ["flywheel", "watch", ROUTE, "--gateway", "http://127.0.0.1:9", "--captures", "c.db",
         "--config", "site.yaml", "--base-model", "/models/base"]
    )  # fmt: skip
    command = shlex.split(_default_retrain_command(args))
    assert command[1:] == ["-m", "gateway.cli", "flywheel", "run", "--route", ROUTE,
                           "--config", "site.yaml", "--base-model", "/models/base"]  # fmt: skip


def test_flywheel_watch_without_a_command_or_a_base_model_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["flywheel", "watch", ROUTE, "--gateway", "http://127.0.0.1:9",
                 "--captures", "c.db", "--rounds", "1"])  # fmt: skip
    assert code == 2
    assert "--base-model" in capsys.readouterr().err
