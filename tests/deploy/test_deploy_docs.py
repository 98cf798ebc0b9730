"""docs/deploy.md's examples are real: its values render, its config check shows what it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart import REPO, full_name, render

PAGE = REPO / "docs" / "deploy.md"


def values_blocks() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml helm-values\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert blocks, "docs/deploy.md shows no values"
    return [yaml.safe_load(block) for block in blocks]


@pytest.mark.parametrize("values", values_blocks())
def test_values_in_the_deploy_guide_pass_the_schema_and_the_config_check(
    chart: helm.Chart, values: dict[str, Any], tmp_path: Path
) -> None:
    chart.validate_schema(values)
    configmap = render(chart, values).one("ConfigMap", full_name("config"))
    (tmp_path / "rendered.yaml").write_text(configmap["data"]["turnout.yaml"])
    shown = re.search(r"\$ turnout config check rendered.yaml\n(.*?)\n```", PAGE.read_text())
    assert shown is not None
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "check", "rendered.yaml"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == shown.group(1)


def test_files_the_deploy_guide_links_to_exist() -> None:
    links = re.findall(r"\]\((\.\./[^)#]+)\)", PAGE.read_text())
    assert links
    for link in links:
        assert (PAGE.parent / link).resolve().exists(), link
