"""Build demand placement for a gateway from its config (None unless `adapters.placement` is
demand): the fleet view, vLLM's load endpoints through the adapter loader, metrics, and the
scrape of each backend's `/metrics` that feeds it queue depths and discovered capacities."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.config import AdaptersConfig
from gateway.placement.fleet import BackendCapacity, Eviction, FleetPlacement
from gateway.placement.loads import AdapterLoads
from gateway.placement.observe import PrometheusPlacementObserver
from gateway.placement.shared import SharedPlacement
from gateway.upstream.adapter_loader import AdapterLoader
from gateway.upstream.backend_metrics import BackendMetrics, BackendReading
from monitoring import metrics

log = logging.getLogger("turnout.placement")


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


class PlacementFeed:
    """Hands each backend's `/metrics` reading to placement: its queue always; its slots
    (vLLM's `max_lora`) only when `discover` (the operator set neither `adapters.max_loras`
    nor `adapters.max_cpu_loras`)."""

    def __init__(self, fleet: FleetPlacement, *, discover: bool) -> None:
        self._fleet = fleet
        self._discover = discover

    def __call__(self, backend: str, reading: BackendReading | None) -> None:
        if reading is None:  # stale: back to the gateway's own in-flight counts
            self._fleet.set_queue(backend, None)
        else:
            self._fleet.set_queue(backend, reading.waiting, reading.running)
        metrics.ADAPTER_PLACEMENT_QUEUED.labels(backend).set(self._fleet.queued(backend))
        if reading is None:
            return
        if not self._discover or reading.max_lora is None:
            return
        # vLLM exports --max-loras only; its --max-cpu-loras defaults to the same number, so
        # that many resident is what every backend started without the flag surely holds.
        found = BackendCapacity(resident=reading.max_lora, batch=reading.max_lora)
        if found != self._fleet.capacity(backend):
            log.info("backend %s: %d adapter slots (vLLM max_lora)", backend, reading.max_lora)
            self._fleet.set_capacity(backend, found)
            metrics.ADAPTER_CAPACITY.labels(backend).set(found.resident)


def capacity_configured(config: AdaptersConfig) -> bool:
    """Whether the operator set the backends' slot counts (else they are discovered)."""
    return bool({"max_loras", "max_cpu_loras"} & config.model_fields_set)


def backend_metrics(
    placement: AdapterLoads | None,
    config: AdaptersConfig,
    backends: Sequence[str],
    interval_s: float,
) -> BackendMetrics | None:
    """The scrape of every backend's `/metrics` feeding demand placement (None without it)."""
    if placement is None:
        return None
    feed = PlacementFeed(placement.fleet, discover=not capacity_configured(config))
    return BackendMetrics(backends, interval_s=interval_s, on_reading=feed)
