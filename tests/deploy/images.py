"""Build and run Turnout's images with podman on this machine (no registry, no Docker engine).

The base image is made locally with debootstrap (Debian bookworm's python3) and kept in
podman's storage, which persists between test runs: it is built once per machine. The gateway
and training images are built from the repository's Dockerfile with `--format docker` (so
HEALTHCHECK is kept); pip's downloads are cached by the Dockerfile's cache mounts, and the
training image takes torch from a wheelhouse under `.turnout/` that the host's pip fills (this
machine's pip finds the CPU build of torch; PyPI's default build is CUDA's, gigabytes more).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".turnout" / "images"
BASE_IMAGE = "localhost/python-base:3.11"
GATEWAY_IMAGE = "localhost/turnout:test"
TRAINING_IMAGE = "localhost/turnout:test-training"
# Debian's crun fails on this machine's hybrid cgroups; the default ulimits are refused.
RUN_FLAGS = (
    "--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs", "--network=host",
    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
)  # fmt: skip
PODMAN_GLOBAL = ("--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs")


class ImageUnavailable(Exception):
    """podman, runc or debootstrap is missing: the image tests cannot run here."""


@dataclass(frozen=True)
class Build:
    """One image build: its tag and how long it took."""

    image: str
    seconds: float


def tools_missing() -> list[str]:
    needed = ["podman", "debootstrap"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if not Path("/usr/sbin/runc").exists():
        missing.append("runc")
    return missing


def podman(
    *args: str, check: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *PODMAN_GLOBAL, *args],
        capture_output=True, text=True, check=check, timeout=timeout,
    )  # fmt: skip


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def ensure_base_image() -> Build:
    """`localhost/python-base:3.11` from debootstrap, unless podman already holds it."""
    started = time.monotonic()
    if image_exists(BASE_IMAGE):
        return Build(BASE_IMAGE, 0.0)
    with tempfile.TemporaryDirectory(prefix="turnout-base-") as folder:
        root = Path(folder) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase",
             "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", str(root), "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        # Package downloads go through a proxy whose CA only this machine's bundle holds.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/")
        for managed in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            managed.unlink()
        for name, target in (("python", "python3"), ("pip", "pip3")):
            link = root / "usr/bin" / name
            if not link.exists():
                link.symlink_to(target)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", "CMD [\"python3\"]", "-", BASE_IMAGE],
            stdin=tar.stdout, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        assert tar.wait() == 0
    return Build(BASE_IMAGE, time.monotonic() - started)


def torch_wheelhouse() -> Path:
    """A folder holding the torch wheel this machine's pip picks for the pinned version."""
    folder = CACHE / "wheelhouse"
    if not any(folder.glob("torch-*.whl")):
        folder.mkdir(parents=True, exist_ok=True)
        pin = next(
            line
            for line in (REPO / "constraints/training.txt").read_text().splitlines()
            if line.startswith("torch==")
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(folder), pin],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
    return folder


def build_image(
    target: str, image: str, build_args: Sequence[str] = (), volumes: Sequence[str] = ()
) -> Build:
    """`podman build --target TARGET` of the repository's Dockerfile on the local base."""
    started = time.monotonic()
    done = podman(
        "build", "--format", "docker", "--target", target, "--tag", image,
        "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--ulimit", "nofile=1024:1024",
        *(f"--build-arg={a}" for a in build_args), *(f"--volume={v}" for v in volumes),
        str(REPO), check=False,
    )  # fmt: skip
    if done.returncode != 0:
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise AssertionError(f"podman build --target {target} failed:\n{output}")
    return Build(image, time.monotonic() - started)


def build_gateway_image() -> Build:
    ensure_base_image()
    return build_image("gateway", GATEWAY_IMAGE)


def build_training_image() -> Build:
    ensure_base_image()
    wheels = torch_wheelhouse()
    return build_image(
        "training", TRAINING_IMAGE,
        build_args=["PIP_FIND_LINKS=/wheelhouse"], volumes=[f"{wheels}:/wheelhouse:ro"],
    )  # fmt: skip


@contextmanager
def running_container(
    image: str, args: Sequence[str] = (), *, options: Sequence[str] = (), name: str | None = None
) -> Iterator[str]:
    """`podman run -d` on the host network; yields the container's name, removes it after."""
    name = name or f"turnout-test-{os.getpid()}-{time.monotonic_ns()}"
    podman("run", "-d", "--name", name, *RUN_FLAGS, *options, image, *args)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def run_container(
    image: str, args: Sequence[str] = (), *, options: Sequence[str] = (), timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` to completion; the finished process (not checked)."""
    return podman("run", "--rm", *RUN_FLAGS, *options, image, *args, check=False, timeout=timeout)
