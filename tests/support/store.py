"""An adapter store with the demo adapters' names and versions, written in milliseconds without
torch: zero-weight adapters for a base model that exists only on paper (`adapters.synthetic`).

For in-process gateways, whose in-memory upstream never reads weights: the gateway still
verifies every routed version against the store and the base profile before it serves."""

from __future__ import annotations

from pathlib import Path

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION
from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from tests.support.demo import BASE_MODEL


def write_synthetic_store(folder: Path) -> Path:
    """A store in `folder` holding `<name>@v1` for every demo adapter, checked against the
    base `tiny`; returns its path (what `adapters.store` names)."""
    registry = AdapterRegistry(str(folder))
    base = synthetic_base_profile(BASE_MODEL)
    registry.save_base(base)
    for name in DEMO_ADAPTERS:
        weights = folder.parent / f"{folder.name}-sources" / name
        write_zero_adapter(weights)
        registry.push(weights, name, base, AdapterLimits(max_lora_rank=16), version=DEMO_VERSION)
    return folder
