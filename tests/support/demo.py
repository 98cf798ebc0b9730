"""The demo model's names and gateway configs in front of it (or of any backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION
from gateway.config import EmbeddedConfig

BASE_MODEL = "tiny"
# The test vLLM reserves a tenth of the RAM for its KV cache: two can run side by side.
TEST_GPU_MEMORY_UTILIZATION = 0.1
DEMO_ROUTES: dict[str, dict[str, str]] = {
    **{name: {"stable": f"{name}@{DEMO_VERSION}"} for name in DEMO_ADAPTERS},
    "chat": {},
}
BASE_ROUTE_ONLY: dict[str, dict[str, str]] = {"chat": {}}


def embedded_config(demo_model: Path) -> EmbeddedConfig:
    """The embedded vLLM settings for the demo model, sized to share the machine."""
    return EmbeddedConfig(
        model=str(demo_model / "base"), gpu_memory_utilization=TEST_GPU_MEMORY_UTILIZATION
    )


def gateway_config(
    backends: list[str], store: Path | None = None, **sections: Any
) -> dict[str, Any]:
    """A gateway config for `backends`: the demo routes (whose adapters live in `store`), or
    with `store=None` only the bare-base route `chat`."""
    config: dict[str, Any] = {
        "base_model": BASE_MODEL,
        "backends": [{"url": url} for url in backends],
        "routes": DEMO_ROUTES if store is not None else BASE_ROUTE_ONLY,
    }
    if store is not None:
        config["adapters"] = {"store": str(store)}
    config.update(sections)
    return config


def demo_weights_store(demo_model: Path, folder: Path, count: int) -> Path:
    """A store of `count` adapter versions `task-0@v1` ... (the demo's summarize weights under
    each name) and the base profile, in `folder/store`; returns the store's path."""
    from adapters.registry import AdapterRegistry
    from adapters.validate import AdapterLimits

    source = AdapterRegistry(str(demo_model / "adapters"))
    raw = folder / "raw"
    raw.mkdir()
    for name, content in source.read_files(source.manifest("summarize", "v1")).items():
        (raw / name).write_bytes(content)
    registry = AdapterRegistry(str(folder / "store"))
    base = source.base(BASE_MODEL)
    registry.save_base(base)
    for index in range(count):
        registry.push(raw, f"task-{index}", base, AdapterLimits(max_lora_rank=16), version="v1")
    return folder / "store"
