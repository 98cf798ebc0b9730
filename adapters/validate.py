"""Refuse adapters that are unsafe or cannot work on the served base; each refusal names its check.

Checks, in order: no pickle files (`.bin` and friends execute code when loaded), the PEFT LoRA
layout, rank within the backends' `--max-lora-rank`, target modules present in the base, and
safetensors tensors consistent with the config. Run on push and again before every load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from adapters.base_model import BaseModelProfile
from adapters.errors import AdapterRefused
from adapters.manifest import AdapterManifest, file_entry
from adapters.safetensors_header import read_tensor_infos

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


@dataclass(frozen=True, slots=True)
class AdapterLimits:
    """What the backends accept (vLLM's `--max-lora-rank`)."""

    max_lora_rank: int


@dataclass(frozen=True, slots=True)
class LoraShape:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


def refuse_pickles(file_names: list[str]) -> None:
    pickled = sorted(n for n in file_names if PurePosixPath(n).suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterRefused(
            "pickle",
            f"{', '.join(pickled)}: pickle files can execute code when loaded; "
            "save the adapter as safetensors (peft: save_pretrained(safe_serialization=True))",
        )


def _lora_config(raw: bytes) -> LoraShape:
    try:
        config = json.loads(raw)
    except ValueError:
        raise AdapterRefused("adapter_config", f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterRefused("adapter_config", f"{CONFIG_FILE} does not describe a LoRA adapter")
    rank, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, int | float):
        raise AdapterRefused(
            "adapter_config", f"{CONFIG_FILE} needs a positive `r` and `lora_alpha`"
        )
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterRefused(
            "target_modules", f"{CONFIG_FILE}: `target_modules` must be a list of module names"
        )
    return LoraShape(rank=rank, alpha=float(alpha), target_modules=tuple(sorted(targets)))


def _check_tensors(weights: bytes, shape: LoraShape) -> None:
    targets = set(shape.target_modules)
    for tensor in read_tensor_infos(weights, WEIGHTS_FILE):
        parts = tensor.name.split(".")
        if len(parts) < 4 or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
            raise AdapterRefused(
                "safetensors", f"{WEIGHTS_FILE}: {tensor.name!r} is not a LoRA A/B weight"
            )
        if parts[-3] not in targets:
            raise AdapterRefused(
                "target_modules",
                f"{WEIGHTS_FILE}: {tensor.name!r} adapts a module not in target_modules",
            )
        rank_axis = 0 if parts[-2] == "lora_A" else 1
        if len(tensor.shape) != 2 or tensor.shape[rank_axis] != shape.rank:
            raise AdapterRefused(
                "rank",
                f"{WEIGHTS_FILE}: {tensor.name!r} has shape {tensor.shape}, not rank {shape.rank}",
            )


def check_adapter(
    files: Mapping[str, bytes], base: BaseModelProfile, limits: AdapterLimits
) -> LoraShape:
    """The adapter's LoRA shape if `files` (name -> content) pass every check."""
    refuse_pickles(list(files))
    missing = [name for name in ADAPTER_FILES if name not in files]
    if missing:
        raise AdapterRefused("layout", f"missing {', '.join(missing)}")
    shape = _lora_config(files[CONFIG_FILE])
    if shape.rank > limits.max_lora_rank:
        raise AdapterRefused(
            "rank",
            f"rank {shape.rank} exceeds the backends' max LoRA rank {limits.max_lora_rank}",
        )
    unknown = sorted(set(shape.target_modules) - base.module_names)
    if unknown:
        raise AdapterRefused(
            "target_modules",
            f"{', '.join(unknown)} not in the base model `{base.name}` "
            f"(it has {', '.join(sorted(base.module_names))})",
        )
    _check_tensors(files[WEIGHTS_FILE], shape)
    return shape


def check_against_manifest(
    manifest: AdapterManifest,
    files: Mapping[str, bytes],
    base: BaseModelProfile,
    limits: AdapterLimits,
) -> None:
    """A stored version is intact (checksums) and still fits the served base and backends."""
    if (
        manifest.base_model.name != base.name
        or manifest.base_model.config_sha256 != base.config_sha256
    ):
        raise AdapterRefused(
            "base_model",
            f"{manifest.ref} was made for `{manifest.base_model.name}` "
            f"(config {manifest.base_model.config_sha256[:12]}), "
            f"the backends serve `{base.name}` (config {base.config_sha256[:12]})",
        )
    for name, entry in manifest.files.items():
        content = files.get(name)
        if content is None:
            raise AdapterRefused("checksum", f"{manifest.ref}: {name} is missing from the store")
        if file_entry(content) != entry:
            raise AdapterRefused(
                "checksum", f"{manifest.ref}: {name} does not match its sha256 in the manifest"
            )
    check_adapter(files, base, limits)
