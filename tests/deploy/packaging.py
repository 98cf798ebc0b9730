"""The package as a user gets it: a wheel built from the tree, installed into a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "gateway", "adapters", "monitoring", "training"]


def isolated_env() -> dict[str, str]:
    """This environment without PYTHONPATH: the venv must see its own install, not this tree."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def build_wheel(folder: Path) -> Path:
    """`pip wheel` of a copy of the tree (setuptools builds in place; the checkout stays clean)."""
    source = folder / "source"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(folder),
         str(source)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = folder.glob("turnout-*.whl")
    return wheel


def fresh_venv(folder: Path, requirement: str, constraints: Path) -> Path:
    """A new venv with `requirement` installed under `constraints` alone; its bin folder."""
    venv.create(folder, with_pip=True)
    bin_dir = folder / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--constraint",
         str(constraints), requirement],
        capture_output=True, text=True, timeout=1800, env=isolated_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert (bin_dir / "turnout").is_file(), f"pip installed no `turnout`:\n{done.stdout[-4000:]}"
    return bin_dir
