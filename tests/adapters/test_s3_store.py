"""The registry on an S3-compatible object store: moto's S3 server, real HTTP on loopback."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from adapters.base_model import profile_base_model
from adapters.demo import DEMO_VERSION
from adapters.errors import AdapterRefused
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.serving.embedded_vllm import free_port
from tests.support.demo import BASE_MODEL
from tests.support.waiting import answers, wait_until

LIMITS = AdapterLimits(max_lora_rank=16)
BUCKET = "adapters"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{endpoint}/moto-api/"), 60, "the S3 server")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # Credentials and endpoint come from the environment, as they do in production.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/team-a"


def test_push_list_verify_and_remove_on_s3(s3_store: str, demo_model: Path, tmp_path: Path) -> None:
    registry = AdapterRegistry(s3_store)
    base = profile_base_model(demo_model / "base", BASE_MODEL)
    registry.save_base(base)
    source = demo_model / "adapters" / "support-triage" / DEMO_VERSION
    pushed = registry.push(source, "triage", base, LIMITS)
    assert pushed.version == "v1"
    fresh = AdapterRegistry(s3_store)  # another process: nothing cached
    assert [m.ref for m in fresh.list()] == ["triage@v1"]
    assert fresh.base(BASE_MODEL) == base
    assert fresh.verify("triage", "v1", base, LIMITS) == pushed
    assert fresh.local_folder("triage", "v1") is None
    fresh.remove("triage", "v1")
    assert fresh.list() == []


def test_a_corrupted_object_fails_verification_on_s3(s3_store: str, demo_model: Path) -> None:
    registry = AdapterRegistry(s3_store)
    base = profile_base_model(demo_model / "base", BASE_MODEL)
    registry.save_base(base)
    source = demo_model / "adapters" / "summarize" / DEMO_VERSION
    registry.push(source, "summ", base, LIMITS)
    s3 = boto3.client("s3")
    key = "team-a/summ/v1/adapter_model.safetensors"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[100] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(AdapterRefused) as refused:
        registry.verify("summ", "v1", base, LIMITS)
    assert refused.value.check == "checksum"
    registry.remove("summ", "v1")


def test_a_push_without_its_manifest_is_invisible_on_s3(
    s3_store: str, demo_model: Path, tmp_path: Path
) -> None:
    registry = AdapterRegistry(s3_store)
    base = profile_base_model(demo_model / "base", BASE_MODEL)
    registry.save_base(base)
    source = tmp_path / "adapter"
    shutil.copytree(demo_model / "adapters" / "sql-writer" / DEMO_VERSION, source)
    registry.push(source, "sql", base, LIMITS)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key="team-a/sql/v1/manifest.json")
    assert [m.ref for m in registry.list("sql")] == []
    assert registry.push(source, "sql", base, LIMITS).version == "v1"
    registry.remove("sql", "v1")


def test_the_cli_push_carries_the_drift_reference_to_s3(
    s3_store: str, demo_model: Path, tmp_path: Path
) -> None:
    import numpy as np

    from monitoring.learned_refusals import ENCODER
    from training.drift_reference import REFERENCE_FILE, load_reference

    run = tmp_path / "run"
    shutil.copytree(demo_model / "adapters" / "summarize" / DEMO_VERSION, run / "adapter")
    embeddings = np.random.default_rng(1).normal(size=(5, 384)).astype(np.float32)
    np.savez(
        run / REFERENCE_FILE, embeddings=embeddings, encoder=np.str_(ENCODER),
        dataset_sha256=np.str_(""),
    )  # fmt: skip
    pushed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "adapters", "push", str(run / "adapter"),
         "--name", "drifty", "--store", s3_store, "--base-model", str(demo_model / "base"),
         "--base-name", BASE_MODEL],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    key = f"team-a/drifty/v1/{REFERENCE_FILE}"
    stored = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert stored == (run / REFERENCE_FILE).read_bytes()
    fresh = AdapterRegistry(s3_store)
    assert fresh.manifest("drifty", "v1").provenance["drift_reference"]["prompts"] == 5
    data = fresh.attachment("drifty", "v1", REFERENCE_FILE)
    assert data is not None
    assert np.array_equal(load_reference(io.BytesIO(data)).embeddings, embeddings)
    fresh.remove("drifty", "v1")
