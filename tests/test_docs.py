"""The docs' examples are real: YAML configs in them validate, the broken one fails as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def yaml_blocks(page: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize(
    "block",
    [block for page in PAGES for block in yaml_blocks(page)],
)
def test_every_yaml_config_in_the_docs_is_valid(block: str) -> None:
    parse_config(yaml.safe_load(block), source="docs")


def test_the_config_check_example_prints_what_the_docs_show(tmp_path: Path) -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    example = re.search(
        r"\$ cat broken.yaml\n(.*?)\$ turnout config check broken.yaml\n(.*?)```",
        page,
        flags=re.DOTALL,
    )
    assert example is not None
    (tmp_path / "broken.yaml").write_text(example.group(1))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "check", "broken.yaml"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == example.group(2)
