"""The identity of a base model that adapters are trained for: its name, config hash, modules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import AdapterRefused
from adapters.safetensors_header import header_length, parse_header


@dataclass(frozen=True, slots=True)
class BaseModelProfile:
    """What an adapter is checked against: the served name, the config's hash, module names."""

    name: str
    config_sha256: str
    module_names: frozenset[str]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "config_sha256": self.config_sha256,
            "module_names": sorted(self.module_names),
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> BaseModelProfile:
        modules = raw["module_names"]
        if not isinstance(modules, list):
            raise ValueError("module_names must be a list")
        return cls(
            name=str(raw["name"]),
            config_sha256=str(raw["config_sha256"]),
            module_names=frozenset(str(m) for m in modules),
        )


def config_sha256(config: dict[str, object]) -> str:
    """A hash of a model's config.json that ignores key order and formatting."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _module_names(weights: Path) -> set[str]:
    """Leaf module names (`q_proj`, `down_proj`, ...) from a safetensors header alone."""
    with weights.open("rb") as file:
        prefix = file.read(8)
        length = header_length(prefix, weights.stat().st_size, weights.name)
        header = file.read(length)
    data_size = weights.stat().st_size - 8 - length
    names = set()
    for tensor in parse_header(header, data_size, weights.name):
        parts = tensor.name.split(".")
        if len(parts) >= 2:
            names.add(parts[-2])
    return names


def profile_base_model(folder: Path, name: str) -> BaseModelProfile:
    """The profile of the base model in `folder` (config.json, *.safetensors) served as `name`."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise AdapterRefused("base_model", f"cannot read {config_file}: {error}") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise AdapterRefused("base_model", f"no *.safetensors weights in {folder}")
    modules: set[str] = set()
    for file in weights:
        modules |= _module_names(file)
    return BaseModelProfile(
        name=name, config_sha256=config_sha256(config), module_names=frozenset(modules)
    )
