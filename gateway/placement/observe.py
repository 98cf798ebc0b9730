"""Placement's reports as Prometheus metrics (defined in `monitoring/metrics.py`)."""

from __future__ import annotations

from gateway.placement.fleet import EvictReason, FleetPlacement, LoadReason
from monitoring import metrics


class PrometheusPlacementObserver:
    """Loads and evictions by reason, cold-start waits, hits, resident counts, imbalance."""

    def __init__(self, fleet: FleetPlacement) -> None:
        self._fleet = fleet

    def _resident(self, backend: str) -> None:
        metrics.ADAPTERS_RESIDENT.labels(backend).set(len(self._fleet.resident(backend)))

    def loaded(self, backend: str, reason: LoadReason, seconds: float, ok: bool) -> None:
        metrics.ADAPTER_PLACEMENT_LOADS.labels(backend, reason.value if ok else "failed").inc()
        self._resident(backend)

    def evicted(self, backend: str, reason: EvictReason) -> None:
        metrics.ADAPTER_EVICTIONS.labels(backend, reason.value).inc()
        self._resident(backend)

    def served(self, backend: str, cold: bool, waited_s: float) -> None:
        metrics.ADAPTER_PLACEMENT_REQUESTS.labels("cold" if cold else "hit").inc()
        if cold:
            metrics.ADAPTER_COLD_START_WAIT.labels(backend).observe(waited_s)
        loads = [self._fleet.inflight(b) for b in self._fleet.backends]
        mean = sum(loads) / len(loads)
        metrics.ADAPTER_PLACEMENT_IMBALANCE.set(max(loads) / mean if mean else 1.0)

    def refused(self, reason: str) -> None:
        metrics.ADAPTER_PLACEMENT_REQUESTS.labels(reason).inc()
