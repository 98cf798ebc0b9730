"""The images, built from the Dockerfile with podman and run: what the chart deploys, started.

The gateway image serves the config the chart's ConfigMap renders (against the bench stub on
the host), as the non-root user, passes its HEALTHCHECK and stops cleanly on SIGTERM. The
training image runs the exact command the chart's retraining Job renders, against a real vLLM
and gateway on the host. Containers share the host's network (podman's own networking does not
run here) and see host folders at the same paths, so vLLM on the host can load what the job
trained. Kubernetes itself is not run: the Job's command, env and config file are.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import openai
import pytest
import yaml

from adapters.registry import AdapterRegistry
from gateway.cli.flywheel_demo import DEMO_GATE, DEMO_TRAIN_CONFIG, drive_traffic
from gateway.cli.flywheel_demo import _wait_for_captures as wait_for_captures
from gateway.protection.auth import hash_api_key
from gateway.serving.embedded_vllm import free_port
from tests.deploy.chart import full_name, render
from tests.deploy.images import (
    GATEWAY_IMAGE,
    TRAINING_IMAGE,
    Build,
    build_gateway_image,
    build_training_image,
    podman,
    run_container,
    running_container,
    tools_missing,
)
from tests.support.processes import running_gateway, stub_upstream
from tests.support.waiting import answers, wait_until
from training.capture import read_captures
from training.tickets import ROUTE, SCHEMA, answer, generate_tickets, write_seed_file

pytestmark = pytest.mark.slow
ADMIN_KEY = "tk-retrain-job-admin"


@pytest.fixture(scope="module", autouse=True)
def _podman() -> None:
    missing = tools_missing()
    assert not missing, f"{', '.join(missing)} missing: `make system-deps` installs them"


@pytest.fixture(scope="module")
def gateway_image() -> Build:
    build = build_gateway_image()
    print(f"gateway image built in {build.seconds:.0f} s")
    return build


@pytest.fixture(scope="module")
def training_image() -> Build:
    build = build_training_image()
    print(f"training image built in {build.seconds:.0f} s")
    return build


def open_to_all(folder: Path) -> None:
    """The images run as uid 10001: let it read and write what the host made for it."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


def configmap_file(chart: helm.Chart, values: dict[str, Any], folder: Path) -> Path:
    """The chart's rendered `turnout.yaml` ConfigMap, written where a volume would put it."""
    configmap = render(chart, values).one("ConfigMap", full_name("config"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "turnout.yaml").write_text(configmap["data"]["turnout.yaml"])
    open_to_all(folder)
    return folder


def container_running(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


def test_the_gateway_image_serves_the_charts_config_as_non_root_and_stops_on_sigterm(
    gateway_image: Build, chart: helm.Chart, tmp_path: Path
) -> None:
    port, admin_port = free_port(), free_port()
    with stub_upstream() as stub:
        values = {"config": {"server": {"host": "127.0.0.1", "port": port}, "base_model": "tiny",
                             "backends": [{"url": stub}]}}  # fmt: skip
        config = configmap_file(chart, values, tmp_path / "config")
        origin = f"http://127.0.0.1:{port}"
        options = [
            "--volume", f"{config}:/etc/turnout/config:ro",
            # What the chart's Deployment sets, and where the HEALTHCHECK must look.
            "--env", f"TURNOUT_ADMIN_PORT={admin_port}",
            "--env", f"TURNOUT_HEALTHCHECK_URL={origin}/healthz",
        ]  # fmt: skip
        with running_container(GATEWAY_IMAGE, options=options) as name:
            wait_until(
                lambda: container_running(name) and answers(f"{origin}/healthz"),
                90,
                "the gateway container",
            )
            assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
            # Every process in the container runs as the image's user, uid 10001.
            assert set(podman("top", name, "user").stdout.split()[1:]) == {"turnout"}
            health = podman("healthcheck", "run", name, check=False)
            assert health.returncode == 0, health.stdout + health.stderr

            client = openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)
            answer = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            assert answer.http_response.status_code == 200
            assert answer.parse().choices[0].message.content
            # With the admin port set (as the chart sets it), /metrics is served there only.
            metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5)
            assert metrics.status_code == 200
            assert "turnout_requests_total{" in metrics.text
            assert httpx.get(f"{origin}/metrics", timeout=5).status_code == 404

            started = time.monotonic()
            podman("kill", "--signal", "TERM", name)
            status = podman("wait", name, timeout=60).stdout.strip()
            stopped_in = time.monotonic() - started
            logs = podman("logs", name).stdout + podman("logs", name).stderr
            assert status == "0", logs[-3000:]
            assert stopped_in < 30
            assert "Traceback" not in logs


def test_the_gateway_images_healthcheck_fails_when_nothing_answers(gateway_image: Build) -> None:
    closed = f"http://127.0.0.1:{free_port()}/healthz"
    # A container that sleeps instead of serving: its HEALTHCHECK must say unhealthy.
    options = ["--entrypoint", "sleep", "--env", f"TURNOUT_HEALTHCHECK_URL={closed}"]
    with running_container(GATEWAY_IMAGE, ["300"], options=options) as name:
        health = podman("healthcheck", "run", name, check=False)
        assert health.returncode != 0
        assert "unhealthy" in health.stdout + health.stderr


# --- the retraining Job -----------------------------------------------------------------------


@pytest.fixture
def retrain_site(
    vllm_url: str, demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A gateway on the host in front of the session's vLLM, serving `support-triage@v1` (random
    LoRA weights: invalid JSON) under the ticket schema, capturing every answer into a folder
    the training container sees at the same path; 40 tickets of traffic already captured."""
    shared = tmp_path / "shared"
    store = shared / "adapters"
    shutil.copytree(demo_model / "adapters", store)
    # The weights the job trains on (the session's folder is private to root: mode 0700).
    shutil.copytree(demo_model / "base", shared / "base")
    admins = shared / "admin-keys.yaml"
    admins.write_text(
        yaml.safe_dump({"admins": {"retrain": [{"sha256": hash_api_key(ADMIN_KEY)}]}})
    )
    admin_port = free_port()
    config = {
        "base_model": "tiny",
        "backends": [{"url": vllm_url}],
        "adapters": {"store": str(store), "max_lora_rank": 16},
        "routes": {ROUTE: {"stable": f"{ROUTE}@v1", "schema": SCHEMA, "on_invalid": "flag"}},
        "state": {"dir": str(shared / "state")},
        "auth": {"admin_keys_file": str(admins)},
        "capture": {"path": str(shared / "captures.db"), "default": {"success_sample_rate": 1.0}},
    }
    # The admin API on a listener of its own, as the chart's Deployment runs it.
    monkeypatch.setenv("TURNOUT_ADMIN_PORT", str(admin_port))
    with running_gateway(config, tmp_path) as origin:
        wrong, _ = asyncio.run(drive_traffic(origin, generate_tickets(40, 5)))
        wait_for_captures(shared / "captures.db", ROUTE, 40)
        # A reviewer corrects every wrong answer: the corrections are what the job learns from.
        for request_id, label in wrong.items():
            httpx.post(
                f"{origin}/v1/feedback",
                json={"request_id": request_id, "rating": -1, "correction": answer(label)},
                timeout=10,
            ).raise_for_status()
        wait_until(
            lambda: (
                sum(c.correction is not None for c in read_captures(shared / "captures.db"))
                == len(wrong)
            ),
            30,
            "the corrections on disk",
        )
        write_seed_file(shared / "seed.jsonl", generate_tickets(300, 6))
        yield {
            "config": config, "shared": shared, "store": store, "origin": origin,
            "admin": f"http://127.0.0.1:{admin_port}",
        }  # fmt: skip


def job_container(
    chart: helm.Chart, site: dict[str, Any], extra: list[str]
) -> tuple[list[str], list[str]]:
    """The chart's retraining Job for ROUTE: (podman options, the container's args)."""
    admin_port = int(site["admin"].rsplit(":", 1)[1])
    values = {
        "config": site["config"],
        "gateway": {"adminPort": admin_port},
        "retrain": {
            "enabled": True, "routes": [ROUTE], "schedule": "",
            "baseModel": str(site["shared"] / "base"),
            "adminKey": {"existingSecret": "turnout-retrain", "key": "admin-key"},
            "workRoot": str(site["shared"] / "retrain"),
            "extraArgs": extra,
        },
    }  # fmt: skip
    rendered = render(chart, values)
    (job,) = rendered.of_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    config_dir = configmap_file(chart, values, site["shared"] / "configmap")
    env = {e["name"]: e for e in container["env"]}
    assert env["TURNOUT_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "admin-key"
    open_to_all(site["shared"])
    options = [
        "--volume", f"{config_dir}:/etc/turnout/config:ro",
        "--volume", f"{site['shared']}:{site['shared']}",
        # The admin Service's name, as the cluster's DNS would resolve it.
        "--add-host", f"{full_name('admin')}:127.0.0.1",
        "--env", f"TURNOUT_ADMIN_KEY={ADMIN_KEY}",  # the Secret's value
    ]  # fmt: skip
    return options, container["args"]


def test_the_retrain_job_in_the_training_image_refuses_a_candidate_the_gate_fails(
    training_image: Build, chart: helm.Chart, retrain_site: dict[str, Any]
) -> None:
    shared = retrain_site["shared"]
    # Two optimiser steps: the candidate still answers no valid JSON, and the gate says so.
    train = {"rank": 8, "alpha": 16, "max_steps": 2, "batch_size": 8, "max_seq_len": 256}
    (shared / "train.yaml").write_text(yaml.safe_dump(train))
    gate = {"min_schema_valid_rate": 0.9, "min_accuracy": 0.8, "max_tokens": 24}
    (shared / "gate.yaml").write_text(yaml.safe_dump(gate))
    extra = ["--seed-file", str(shared / "seed.jsonl"),
             "--train-config", str(shared / "train.yaml"),
             "--gate-config", str(shared / "gate.yaml")]  # fmt: skip
    options, args = job_container(chart, retrain_site, extra)
    assert args[:4] == ["flywheel", "run", "--route", ROUTE]

    done = run_container(TRAINING_IMAGE, args, options=options, timeout=1500)

    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"the gate refused {ROUTE}@v2" in done.stderr
    assert "nothing was pushed" in done.stderr
    assert "Traceback" not in done.stderr
    # Nothing reached the registry, and the route runs no rollout.
    assert [m.version for m in AdapterRegistry(str(retrain_site["store"])).list(ROUTE)] == ["v1"]
    state = httpx.get(
        f"{retrain_site['admin']}/admin/routes/{ROUTE}",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).json()
    assert state["stable"] == f"{ROUTE}@v1"
    assert not state.get("candidate")
    # The run's dataset came from the route's captures (and the seed file), with its card.
    (run,) = (shared / "retrain" / ROUTE).iterdir()
    card = json.loads((run / "dataset" / "dataset_card.json").read_text())
    assert card["sources"]["captures"]["used"]["correction"] > 0
    report = json.loads((run / "report" / "report.json").read_text())
    assert not report["passed"]


def test_the_retrain_job_refuses_when_there_is_too_little_data(
    training_image: Build, chart: helm.Chart, retrain_site: dict[str, Any]
) -> None:
    options, args = job_container(chart, retrain_site, ["--min-train-examples", "100000"])

    done = run_container(TRAINING_IMAGE, args, options=options, timeout=600)

    assert done.returncode == 1, done.stderr[-4000:]
    assert f"too little data for {ROUTE}" in done.stderr
    assert "Traceback" not in done.stderr
    assert [m.version for m in AdapterRegistry(str(retrain_site["store"])).list(ROUTE)] == ["v1"]


@pytest.mark.timeout(2400)
def test_the_retrain_job_in_the_training_image_pushes_a_gated_version_and_starts_its_canary(
    training_image: Build, chart: helm.Chart, retrain_site: dict[str, Any]
) -> None:
    shared = retrain_site["shared"]
    # The flywheel demo's training config and about as many optimiser steps as the demo takes
    # (~700). With 800 seed tickets (536 steps) the candidate passed the gate at accuracy 0.944
    # in one run and failed it at 0.587 in another: the labels are learnt late in the run.
    (shared / "train.yaml").write_text(yaml.safe_dump(DEMO_TRAIN_CONFIG.model_dump(mode="json")))
    (shared / "gate.yaml").write_text(yaml.safe_dump(DEMO_GATE.model_dump(mode="json")))
    write_seed_file(shared / "seed.jsonl", generate_tickets(1100, 7))
    extra = ["--seed-file", str(shared / "seed.jsonl"),
             "--train-config", str(shared / "train.yaml"),
             "--gate-config", str(shared / "gate.yaml"), "--canary-steps", "50,100"]  # fmt: skip
    options, args = job_container(chart, retrain_site, extra)

    done = run_container(TRAINING_IMAGE, args, options=options, timeout=2300)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"pushed {ROUTE}@v2" in done.stdout
    manifest = AdapterRegistry(str(retrain_site["store"])).manifest(ROUTE, "v2")
    assert manifest.created_by == "turnout flywheel run"
    assert manifest.provenance["gate"]["passed"]
    assert manifest.provenance["dataset_card"]["sources"]["captures"]["used"]
    state = httpx.get(
        f"{retrain_site['admin']}/admin/routes/{ROUTE}",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).json()
    assert state["candidate"] == f"{ROUTE}@v2"
