"""The reconcile loop's parts over loopback: vLLM's adapter list read by `VllmAdapterAdmin`
(Turnout's HTTP/1.1 pool) from a simulated backend in this process, handed to placement by
`PlacementReconcile`; a restart forgets the versions, a dead backend changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bench.fleet_sim import SimBackend, SimSpec, start_sim
from gateway.config import AdaptersConfig, TimeoutsConfig
from gateway.placement.fleet import BackendCapacity, EvictReason, FleetPlacement
from gateway.placement.loads import AdapterLoads, NoObserver
from gateway.serving.embedded_vllm import free_port
from gateway.upstream.adapter_loader import VllmAdapterAdmin
from gateway.upstream.backends import Http1Upstream
from gateway.upstream.demand_placement import PlacementReconcile, backend_metrics

SPEC = SimSpec(resident=4, batch=2, max_seqs=4, load_s=0.0, decode_s=0.0, slowdown=0)


class SimCalls:
    """Placement's load and unload calls straight onto the simulated backend."""

    def __init__(self, sim: SimBackend) -> None:
        self.sim = sim

    async def load(self, backend: str, version: str) -> None:
        assert await self.sim.load(version)

    async def unload(self, backend: str, version: str) -> None:
        self.sim.unload(version)


class Evictions(NoObserver):
    def __init__(self) -> None:
        self.reasons: list[EvictReason] = []
        self.seen = asyncio.Event()

    def evicted(self, backend: str, reason: EvictReason) -> None:
        self.reasons.append(reason)
        self.seen.set()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_restart_is_seen_in_the_listing_and_a_dead_backend_changes_nothing(
    anyio_backend: str,
) -> None:
    sim = SimBackend(SPEC)
    port = free_port()
    server = await start_sim(sim, "127.0.0.1", port)
    origin = f"http://127.0.0.1:{port}"
    client = Http1Upstream(TimeoutsConfig())
    admin = VllmAdapterAdmin(client)
    evictions = Evictions()
    loads = AdapterLoads(
        FleetPlacement({origin: BackendCapacity(4, 2)}), SimCalls(sim), observer=evictions
    )
    reconcile = PlacementReconcile(loads, admin, [origin], interval_s=0.01)
    try:
        for version in ("a@v1", "b@v1"):
            loads.release((await loads.acquire(version)).backend, version)
        assert await admin.resident(origin) == {"a@v1", "b@v1"}  # the base model's card: no parent
        assert await reconcile.check(origin) == []
        sim.unload("b@v1")  # someone else unloads one
        assert await reconcile.check(origin) == ["b@v1"]
        assert loads.fleet.resident(origin) == {"a@v1"}
        assert evictions.reasons == [EvictReason.BACKEND_LOST]
        sim.restart()
        evictions.seen.clear()
        watching = asyncio.create_task(reconcile.run())
        async with asyncio.timeout(5):
            await evictions.seen.wait()
        watching.cancel()
        assert not loads.fleet.resident(origin)
        assert evictions.reasons == [EvictReason.BACKEND_LOST] * 2
        assert loads.evictions == {origin: {"backend_lost": 2}}  # as the admin API shows them
        placed = await loads.acquire("a@v1")  # loaded again, before any request
        loads.release(placed.backend, "a@v1")
        assert sim.registered == {"a@v1"}
        server.close()
        await server.wait_closed()
        await client.close()
        assert await reconcile.check(origin) == []  # unreachable: nothing forgotten
        assert loads.fleet.resident(origin) == {"a@v1"}
    finally:
        sim.stop()
        server.close()
        await client.close()


def test_the_metrics_scrape_interval_is_a_bounded_config_key() -> None:
    assert AdaptersConfig().metrics_scrape_s == 1.0
    config = AdaptersConfig(placement="demand", metrics_scrape_s=5)
    loads = AdapterLoads(FleetPlacement({"b": BackendCapacity(4, 2)}), SimCalls(SimBackend(SPEC)))
    scraper = backend_metrics(loads, config, ["b"])
    assert scraper is not None
    assert (scraper.interval_s, scraper.stale_after_s) == (5.0, 15.0)
    for wrong in (0, 0.05, 61):
        with pytest.raises(ValueError, match="metrics_scrape_s"):
            AdaptersConfig(metrics_scrape_s=wrong)


class Instant:
    """Loads and unloads that succeed at once."""

    async def load(self, backend: str, version: str) -> None:
        pass

    async def unload(self, backend: str, version: str) -> None:
        pass


class Garbled:
    """A backend whose `/v1/models` answer is not a model list (cards without an `id`)."""

    def __init__(self) -> None:
        self.asked = 0
        self.thrice = asyncio.Event()

    async def resident(self, backend: str) -> frozenset[str]:
        self.asked += 1
        if self.asked >= 3:
            self.thrice.set()
        raise KeyError("id")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_malformed_listing_changes_nothing_and_the_loop_goes_on(anyio_backend: str) -> None:
    loads = AdapterLoads(FleetPlacement({"b": BackendCapacity(4, 2)}), Instant())
    loads.release((await loads.acquire("a@v1")).backend, "a@v1")
    garbled = Garbled()
    reconcile = PlacementReconcile(loads, garbled, ["b"], interval_s=0.01)
    assert await reconcile.check("b") == []
    watching = asyncio.create_task(reconcile.run())
    async with asyncio.timeout(5):
        await garbled.thrice.wait()  # the loop went on after meeting the malformed answer
    assert not watching.done()
    watching.cancel()
    assert loads.fleet.resident("b") == {"a@v1"}
