"""`turnout adapters ...` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from adapters.base_model import profile_base_model
from adapters.demo import DEMO_VERSION
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.rollouts.model import Rollout
from gateway.rollouts.state import FileStateStore
from gateway.serving.embedded_vllm import free_port


def turnout(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_push_list_show_verify_and_rm_through_the_cli(demo_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    source = str(demo_model / "adapters" / "summarize" / DEMO_VERSION)
    base = str(demo_model / "base")
    pushed = turnout(
        "adapters", "push", source, "--name", "summ", "--store", str(store), "--base-model", base,
        cwd=tmp_path,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"pushed summ@v1 to {store}"
    again = turnout(
        "adapters", "push", source, "--name", "summ", "--store", str(store), cwd=tmp_path
    )
    assert again.stdout.strip() == f"pushed summ@v2 to {store}"

    listed = turnout("adapters", "list", "--store", str(store), cwd=tmp_path)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["summ@v1", "summ@v2"]
    shown = json.loads(
        turnout("adapters", "show", "summ@v2", "--store", str(store), cwd=tmp_path).stdout
    )
    assert shown["name"] == "summ"
    assert shown["rank"] == 8
    assert shown["base_model"]["name"] == "tiny"
    verified = turnout("adapters", "verify", "summ@v2", "--store", str(store), cwd=tmp_path)
    assert verified.stdout.startswith("summ@v2: OK")

    config = tmp_path / "turnout.yaml"
    config.write_text(
        yaml.safe_dump({"adapters": {"store": str(store)}, "routes": {"s": {"stable": "summ@v2"}}})
    )
    refused = turnout("adapters", "rm", "summ@v2", cwd=tmp_path)
    assert refused.returncode == 2
    assert "summ@v2 is routed by s" in refused.stderr
    removed = turnout("adapters", "rm", "summ@v1", cwd=tmp_path)
    assert removed.stdout.strip() == "removed summ@v1"


def test_a_pickle_adapter_is_refused_with_the_check_named(demo_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    result = turnout(
        "adapters", "push", str(folder), "--name", "evil", "--store", str(tmp_path / "store"),
        "--base-model", str(demo_model / "base"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refused (pickle): adapter_model.bin" in result.stderr


def test_the_store_comes_from_the_environment_without_a_config(
    demo_model: Path, tmp_path: Path
) -> None:
    import os

    env = {**os.environ, "TURNOUT_STORE": str(tmp_path / "env-store")}
    source = str(demo_model / "adapters" / "sql-writer" / DEMO_VERSION)
    result = turnout(
        "adapters", "push", source, "--name", "sql", "--base-model", str(demo_model / "base"),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env-store" / "sql" / "v1" / "manifest.json").is_file()


def test_rm_is_refused_while_a_candidate_or_a_running_rollout_uses_the_version(
    demo_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    registry = AdapterRegistry(str(store))
    base = profile_base_model(demo_model / "base", "tiny")
    registry.save_base(base)
    source = demo_model / "adapters" / "summarize" / DEMO_VERSION
    for version in ("v1", "v2", "v3"):
        registry.push(source, "summ", base, AdapterLimits(max_lora_rank=16), version=version)
    state = tmp_path / "state"
    routes = {"s": {"stable": "summ@v1", "candidate": "summ@v2", "weight": 10}}
    config = tmp_path / "turnout.yaml"
    settings = {"adapters": {"store": str(store)}, "state": {"dir": str(state)}, "routes": routes}
    config.write_text(yaml.safe_dump(settings))

    declared = turnout("adapters", "rm", "summ@v2", cwd=tmp_path)
    assert declared.returncode == 2
    assert "summ@v2 is routed by s (candidate, turnout.yaml)" in declared.stderr

    # A canary started through the admin API is in the gateways' state, in no config file.
    canary = Rollout(route="t", stable="summ@v1", candidate="summ@v3", rollout_id="r1", revision=1)
    asyncio.run(FileStateStore(state / "rollouts.json").save(canary))
    running = turnout("adapters", "rm", "summ@v3", cwd=tmp_path)
    assert running.returncode == 2
    assert "summ@v3 is routed by t (candidate, running rollout)" in running.stderr

    # Shared state that cannot be read is no licence to remove: rm refuses rather than guess.
    unreachable = {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "dir": str(state)}
    config.write_text(
        yaml.safe_dump({"adapters": {"store": str(store)}, "state": unreachable, "routes": {}})
    )
    blind = turnout("adapters", "rm", "summ@v3", cwd=tmp_path)
    assert blind.returncode == 2
    assert "cannot be reached" in blind.stderr

    assert [m.ref for m in registry.list("summ")] == ["summ@v1", "summ@v2", "summ@v3"]


def _trained_run(demo_model: Path, run: Path) -> Path:
    """A `turnout train` output folder: RUN/adapter and RUN/drift_reference.npz beside it."""
    import numpy as np

    from monitoring.learned_refusals import ENCODER
    from training.drift_reference import REFERENCE_FILE

    shutil.copytree(demo_model / "adapters" / "summarize" / DEMO_VERSION, run / "adapter")
    embeddings = np.random.default_rng(0).normal(size=(12, 384)).astype(np.float32)
    np.savez(
        run / REFERENCE_FILE, embeddings=embeddings, encoder=np.str_(ENCODER),
        dataset_sha256=np.str_("ab" * 32),
    )  # fmt: skip
    return run / REFERENCE_FILE


def test_push_carries_the_drift_reference_written_beside_the_adapter(
    demo_model: Path, tmp_path: Path
) -> None:
    import hashlib

    import numpy as np

    from gateway.serving.signals import recorded_reference
    from training.drift_reference import REFERENCE_FILE

    reference = _trained_run(demo_model, tmp_path / "run")
    store = tmp_path / "store"
    pushed = turnout(
        "adapters", "push", str(tmp_path / "run" / "adapter"), "--name", "summ",
        "--store", str(store), "--base-model", str(demo_model / "base"), cwd=tmp_path,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.splitlines() == [
        f"pushed summ@v1 to {store}",
        f"with the drift reference {reference}",
    ]
    registry = AdapterRegistry(str(store))
    assert registry.attachment("summ", "v1", REFERENCE_FILE) == reference.read_bytes()
    record = registry.manifest("summ", "v1").provenance["drift_reference"]
    assert record["sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert record["prompts"] == 12
    # What the gateway's semantic-drift feed reads back for that version.
    window = recorded_reference(registry)("r", "summ@v1")
    assert np.array_equal(window, np.load(reference)["embeddings"])

    # Named elsewhere with --drift-reference; left out with --no-drift-reference.
    elsewhere = tmp_path / "window.npz"
    shutil.move(reference, elsewhere)
    named = turnout(
        "adapters", "push", str(tmp_path / "run" / "adapter"), "--name", "summ",
        "--store", str(store), "--drift-reference", str(elsewhere), cwd=tmp_path,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert registry.attachment("summ", "v2", REFERENCE_FILE) == elsewhere.read_bytes()
    bare = turnout(
        "adapters", "push", str(tmp_path / "run" / "adapter"), "--name", "summ",
        "--store", str(store), "--no-drift-reference", cwd=tmp_path,
    )  # fmt: skip
    assert bare.stdout.strip() == f"pushed summ@v3 to {store}"
    assert registry.attachment("summ", "v3", REFERENCE_FILE) is None
    assert "drift_reference" not in registry.manifest("summ", "v3").provenance


def test_push_refuses_a_drift_reference_that_is_not_one(demo_model: Path, tmp_path: Path) -> None:
    _trained_run(demo_model, tmp_path / "run")
    (tmp_path / "run" / "drift_reference.npz").write_bytes(b"not a window")
    store = tmp_path / "store"
    refused = turnout(
        "adapters", "push", str(tmp_path / "run" / "adapter"), "--name", "summ",
        "--store", str(store), "--base-model", str(demo_model / "base"), cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "is not a drift reference window" in refused.stderr
    assert AdapterRegistry(str(store)).list() == []
    missing = turnout(
        "adapters", "push", str(tmp_path / "run" / "adapter"), "--name", "summ",
        "--store", str(store), "--drift-reference", str(tmp_path / "none.npz"), cwd=tmp_path,
    )  # fmt: skip
    assert "no drift reference at" in missing.stderr
