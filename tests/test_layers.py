"""The import layers of pyproject.toml's import-linter contracts: the tree keeps them, and an
import across a layer fails `lint-imports` with a message that names the rule it broke."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "adapters", "training", "monitoring")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy_of_the_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout
    assert "0 broken" in kept.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "rule"),
    [
        (
            "monitoring/metrics.py",
            "import gateway.upstream.proxy",
            "monitoring/ imports nothing of Turnout's",
        ),
        (
            "adapters/names.py",
            "import gateway.api.openai",
            "adapters/, training/ and monitoring/ never import the gateway's request path",
        ),
        (
            "gateway/upstream/proxy.py",
            "import gateway.api.openai",
            "the request path, top to bottom",
        ),
        ("gateway/rollouts/model.py", "import gateway.routing.table", "the request path"),
        ("gateway/api/openai.py", "import torch", "never imports torch"),
    ],
)
def test_an_import_across_a_layer_fails_naming_the_rule(
    copy_of_the_tree: Path, module: str, bad_import: str, rule: str
) -> None:
    path = copy_of_the_tree / module
    path.write_text(path.read_text() + f"\n{bad_import}  # the wrong import\n")
    broken = lint_imports(copy_of_the_tree)
    assert broken.returncode == 1
    assert "BROKEN" in broken.stdout
    assert rule in " ".join(broken.stdout.split())
