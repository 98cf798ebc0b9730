"""The adapter registry: push, list, show, verify, remove, and every refusal naming its check."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from adapters.base_model import BaseModelProfile, profile_base_model
from adapters.demo import DEMO_VERSION
from adapters.errors import AdapterExists, AdapterNotFound, AdapterRefused
from adapters.manifest import MANIFEST_FILE
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits

LIMITS = AdapterLimits(max_lora_rank=16)


@pytest.fixture
def base(demo_model: Path) -> BaseModelProfile:
    return profile_base_model(demo_model / "base", "tiny")


@pytest.fixture
def adapter(demo_model: Path, tmp_path: Path) -> Path:
    """A copy of a demo adapter's PEFT files, as a training run would leave them."""
    folder = tmp_path / "trained"
    source = demo_model / "adapters" / "support-triage" / DEMO_VERSION
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture
def registry(tmp_path: Path, base: BaseModelProfile) -> AdapterRegistry:
    store = AdapterRegistry(str(tmp_path / "store"))
    store.save_base(base)
    return store


def test_push_numbers_versions_and_records_checksums(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    first = registry.push(adapter, "triage", base, LIMITS)
    second = registry.push(adapter, "triage", base, LIMITS, provenance={"dataset": "abc"})
    assert (first.version, second.version) == ("v1", "v2")
    assert second.provenance == {"dataset": "abc"}
    assert second.rank == 8
    assert second.base_model.name == "tiny"
    assert set(second.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert [m.ref for m in registry.list("triage")] == ["triage@v1", "triage@v2"]
    assert registry.verify("triage", "v2", base, LIMITS) == second


def test_a_version_is_immutable(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    registry.push(adapter, "triage", base, LIMITS, version="v7")
    with pytest.raises(AdapterExists):
        registry.push(adapter, "triage", base, LIMITS, version="v7")


def test_a_corrupted_weight_file_fails_verification(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile, tmp_path: Path
) -> None:
    registry.push(adapter, "triage", base, LIMITS)
    weights = tmp_path / "store" / "triage" / "v1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterRefused) as refused:
        registry.verify("triage", "v1", base, LIMITS)
    assert refused.value.check == "checksum"
    assert "adapter_model.safetensors" in refused.value.message


def test_a_pickle_adapter_is_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, "triage", base, LIMITS)
    assert refused.value.check == "pickle"
    assert registry.list() == []


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 65, "", "name@v1"])
def test_an_unsafe_name_is_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile, name: str, tmp_path: Path
) -> None:
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, name, base, LIMITS)
    assert refused.value.check == "name"
    assert not (tmp_path / "escape").exists()


def test_a_traversal_version_is_refused(registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterRefused) as refused:
        registry.manifest("triage", "../../etc")
    assert refused.value.check == "name"


def test_a_rank_above_the_backends_limit_is_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, "triage", base, AdapterLimits(max_lora_rank=4))
    assert refused.value.check == "rank"
    assert "rank 8 exceeds" in refused.value.message


def test_target_modules_missing_from_the_base_are_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = [*config["target_modules"], "c_attn"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, "triage", base, LIMITS)
    assert refused.value.check == "target_modules"
    assert "c_attn" in refused.value.message


def test_an_adapter_for_another_base_is_refused_on_load(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    registry.push(adapter, "triage", base, LIMITS)
    other = BaseModelProfile("other", "0" * 64, base.module_names)
    with pytest.raises(AdapterRefused) as refused:
        registry.verify("triage", "v1", other, LIMITS)
    assert refused.value.check == "base_model"


def test_a_truncated_safetensors_file_is_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, "triage", base, LIMITS)
    assert refused.value.check == "safetensors"


def test_a_header_claiming_a_huge_length_is_refused(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile
) -> None:
    (adapter / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(AdapterRefused) as refused:
        registry.push(adapter, "triage", base, LIMITS)
    assert refused.value.check == "safetensors"


def test_a_push_that_died_before_its_manifest_leaves_no_version(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile, tmp_path: Path
) -> None:
    registry.push(adapter, "triage", base, LIMITS)
    (tmp_path / "store" / "triage" / "v1" / MANIFEST_FILE).unlink()  # the crash, frozen in time
    assert registry.list() == []
    with pytest.raises(AdapterNotFound):
        registry.manifest("triage", "v1")
    assert registry.push(adapter, "triage", base, LIMITS).version == "v1"


def test_a_manifest_edited_in_the_store_is_read_as_it_is_now(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile, tmp_path: Path
) -> None:
    registry.push(adapter, "triage", base, LIMITS)
    path = tmp_path / "store" / "triage" / "v1" / MANIFEST_FILE
    edited = json.loads(path.read_text()) | {"created_by": "someone else"}
    path.write_text(json.dumps(edited))
    assert registry.manifest("triage", "v1").created_by == "someone else"
    path.write_text(json.dumps(edited | {"rank": 0}))
    with pytest.raises(AdapterRefused, match="triage@v1"):
        registry.manifest("triage", "v1")


def test_a_file_where_the_adapters_folder_should_be_is_no_version(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    (tmp_path / "store" / "triage").write_text("not a folder")
    with pytest.raises(AdapterNotFound, match="triage@v1"):
        registry.manifest("triage", "v1")


def test_remove_deletes_the_version(
    registry: AdapterRegistry, adapter: Path, base: BaseModelProfile, tmp_path: Path
) -> None:
    registry.push(adapter, "triage", base, LIMITS)
    registry.remove("triage", "v1")
    assert registry.list() == []
    assert not (tmp_path / "store" / "triage" / "v1").exists()


def test_attachments_are_stored_beside_the_adapter_and_read_back(tmp_path: Path) -> None:
    from adapters.synthetic import synthetic_base_profile, write_zero_adapter

    base = synthetic_base_profile("tiny")
    store = AdapterRegistry(str(tmp_path / "store"))
    store.save_base(base)
    write_zero_adapter(tmp_path / "zero")
    pushed = store.push(
        tmp_path / "zero", "triage", base, LIMITS, attachments={"drift_reference.npz": b"npz"}
    )
    assert store.attachment("triage", pushed.version, "drift_reference.npz") == b"npz"
    assert store.attachment("triage", pushed.version, "other.npz") is None
    assert "drift_reference.npz" not in pushed.files  # not part of the adapter vLLM loads
    assert store.verify("triage", pushed.version, base, LIMITS) == pushed
    with pytest.raises(AdapterRefused, match="shadow"):
        store.push(tmp_path / "zero", "triage", base, LIMITS, attachments={MANIFEST_FILE: b"{}"})
