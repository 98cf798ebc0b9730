"""The flywheel's commands as the lead's `turnout` parser will register them."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.training import add_commands
from gateway.errors import ConfigError
from training.tickets import ROUTE, SCHEMA, generate_tickets, write_seed_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_dataset_build_writes_the_splits_and_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_seed_file(tmp_path / "seed.jsonl", generate_tickets(200, seed=2))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "dataset.yaml").write_text("test_fraction: 0.3\n")
    args = _parser().parse_args(
        ["dataset", "build", ROUTE, "--seed-file", str(tmp_path / "seed.jsonl"),
         "--schema", str(tmp_path / "schema.json"), "--config", str(tmp_path / "dataset.yaml"),
         "--out", str(tmp_path / "ds")]
    )  # fmt: skip
    assert args.run(args) == 0

    card = json.loads((tmp_path / "ds" / "dataset_card.json").read_text())
    assert card["config"]["test_fraction"] == 0.3
    assert card["sha256"] in capsys.readouterr().out


def test_a_config_with_an_unknown_key_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("rank: 8\nlearning_rte: 0.1\n")
    args = _parser().parse_args(
        ["train", ROUTE, "--dataset", "ds", "--base-model", "base", "--out", "run",
         "--config", str(tmp_path / "train.yaml")]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="learning_rte"):
        args.run(args)


def test_eval_wants_name_at_version_equals_folder() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(
            ["eval", ROUTE, "--vllm", "http://127.0.0.1:1", "--candidate", "just-a-folder",
             "--dataset", "ds", "--schema", "s.json", "--report", "r"]
        )  # fmt: skip


def test_registering_the_commands_imports_no_model_code() -> None:
    probe = (
        "import sys, argparse, gateway.cli.training;"
        "gateway.cli.training.add_commands(argparse.ArgumentParser().add_subparsers());"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
