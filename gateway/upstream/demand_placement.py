"""Build demand placement for a gateway from its config (None unless `adapters.placement` is
demand): the fleet view, vLLM's load endpoints through the adapter loader, metrics, the
scrape of each backend's `/metrics` that feeds it queue depths and discovered capacities, and
the check of each backend's list of adapters against what placement believes it holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from gateway.config import AdaptersConfig
from gateway.errors import TurnoutError
from gateway.placement.fleet import BackendCapacity, Eviction, FleetPlacement
from gateway.placement.loads import AdapterLoads
from gateway.placement.observe import PrometheusPlacementObserver
from gateway.placement.shared import SharedPlacement
from gateway.upstream.adapter_loader import AdapterLoader
from gateway.upstream.backend_metrics import BackendMetrics, BackendReading
from gateway.upstream.shared_readings import SharedReadings
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
    redis_url: str | None = None,
) -> BackendMetrics | None:
    """The scrape of every backend's `/metrics` feeding demand placement (None without it),
    every `adapters.metrics_scrape_s`; with `redis_url`, one reader per backend and interval
    for every worker and replica (`SharedReadings`)."""
    if placement is None:
        return None
    feed = PlacementFeed(placement.fleet, discover=not capacity_configured(config))
    return BackendMetrics(
        backends,
        interval_s=config.metrics_scrape_s,
        on_reading=feed,
        exchange=SharedReadings(redis_url) if redis_url else None,
    )


class AdapterListing(Protocol):
    """A backend's list of the adapters it serves (`VllmAdapterAdmin.resident`: `/v1/models`)."""

    async def resident(self, backend: str) -> frozenset[str]: ...


class PlacementReconcile:
    """Every `interval_s`, off the request path, each backend's list of adapters against what
    placement believes it holds: a version it no longer lists (it restarted, or someone
    unloaded it) is forgotten there, so the next request loads it again instead of getting
    vLLM's 404 first. vLLM lists every adapter registered through `/v1/load_lora_adapter`
    until it is unloaded, whatever its own LRU keeps in memory, exactly the names it answers
    404 for. A list that cannot be read changes nothing."""

    def __init__(
        self,
        placement: AdapterLoads,
        listing: AdapterListing,
        backends: Sequence[str],
        interval_s: float,
    ) -> None:
        self._placement = placement
        self._listing = listing
        self._backends = tuple(backends)
        self.interval_s = interval_s

    async def check(self, backend: str) -> list[str]:
        """One check of `backend`; the versions forgotten there."""
        try:
            return await self._placement.reconcile(backend, lambda: self._listing.resident(backend))
        except (TurnoutError, OSError, TimeoutError) as error:
            log.debug("listing the adapters of %s failed: %s", backend, error)
            return []
        except Exception as error:  # a malformed answer must not end the loop
            log.warning("%s answered /v1/models with what is not a model list: %r", backend, error)
            return []

    async def run(self) -> None:
        """Check every backend every `interval_s`, concurrently, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.gather(*(self.check(backend) for backend in self._backends))


def placement_reconcile(
    placement: AdapterLoads | None,
    listing: AdapterListing,
    backends: Sequence[str],
    interval_s: float,
) -> PlacementReconcile | None:
    """The check of each backend's adapters against placement (None without demand)."""
    if placement is None:
        return None
    return PlacementReconcile(placement, listing, backends, interval_s)
