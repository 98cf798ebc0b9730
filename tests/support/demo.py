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
