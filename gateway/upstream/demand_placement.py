"""Build demand placement for a gateway from its config (None unless `adapters.placement` is
demand): the fleet view, vLLM's load endpoints through the adapter loader, metrics."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import AdaptersConfig
from gateway.placement.fleet import BackendCapacity, Eviction, FleetPlacement
from gateway.placement.loads import AdapterLoads
from gateway.placement.observe import PrometheusPlacementObserver
from gateway.placement.shared import SharedPlacement
from gateway.upstream.adapter_loader import AdapterLoader


class LoaderCalls:
    """Placement's `AdapterCalls` through the adapter loader: each load re-verifies the
    version in the store, loads it by its path as the backends see it, and is metered."""

    def __init__(self, loader: AdapterLoader) -> None:
        self._loader = loader

    async def load(self, backend: str, version: str) -> None:
        await self._loader.load_on_demand(backend, version)

    async def unload(self, backend: str, version: str) -> None:
        await self._loader.unload_on_demand(backend, version)


def demand_placement(
    config: AdaptersConfig,
    backends: Sequence[str],
    loader: AdapterLoader,
    redis_url: str | None = None,
) -> AdapterLoads | None:
    """With `redis_url` (`state.redis_url`), placement is coordinated with other replicas."""
    if config.placement != "demand":
        return None
    capacity = BackendCapacity(resident=config.capacity, batch=config.max_loras)
    fleet = FleetPlacement(
        dict.fromkeys(backends, capacity),
        eviction=Eviction(config.eviction),
        replicate_at=config.replicate_at,
    )
    return AdapterLoads(
        fleet,
        LoaderCalls(loader),
        max_waiting=config.max_load_waiters,
        wait_deadline_s=config.load_wait_s,
        observer=PrometheusPlacementObserver(fleet),
        shared=SharedPlacement(redis_url) if redis_url else None,
    )
