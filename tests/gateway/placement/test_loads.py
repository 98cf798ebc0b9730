"""Single-flight loads, the bounded wait and its deadline, with real asyncio tasks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.errors import error_response
from gateway.errors import AdapterLoading
from gateway.placement.fleet import BackendCapacity, FleetPlacement
from gateway.placement.loads import AdapterLoads, Placed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Backends:
    """Load/unload calls that take `load_s`, counted; `fail` makes loads raise."""

    def __init__(self, load_s: float = 0.05) -> None:
        self.load_s = load_s
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[tuple[str, str]] = []
        self.fail = False

    async def load(self, backend: str, version: str) -> None:
        self.loads.append((backend, version))
        await asyncio.sleep(self.load_s)
        if self.fail:
            raise ConnectionError("backend down")

    async def unload(self, backend: str, version: str) -> None:
        self.unloads.append((backend, version))


def loads_over(backends: Backends, resident: int = 2, **kwargs: float) -> AdapterLoads:
    fleet = FleetPlacement({f"b{i}": BackendCapacity(resident, 2) for i in range(2)})
    return AdapterLoads(fleet, backends, **kwargs)  # type: ignore[arg-type]


async def test_many_requests_for_a_cold_version_cause_one_load() -> None:
    backends = Backends()
    loads = loads_over(backends)
    placed = await asyncio.gather(*(loads.acquire("a@v1") for _ in range(50)))
    chosen = [p.backend for p in placed]
    assert len(backends.loads) == 1
    assert set(chosen) == {backends.loads[0][0]}
    assert loads.fleet.inflight(chosen[0]) == 50
    for backend in chosen:
        loads.release(backend, "a@v1")
    assert loads.fleet.inflight(chosen[0]) == 0


async def test_past_the_wait_queue_requests_get_adapter_loading_at_once() -> None:
    loads = loads_over(Backends(load_s=0.2), max_waiting=3)
    results = await asyncio.gather(
        *(loads.acquire("a@v1") for _ in range(5)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, AdapterLoading)]
    assert len(refused) == 2
    assert sum(isinstance(r, Placed) for r in results) == 3


async def test_past_the_deadline_a_waiting_request_gets_503_with_retry_after() -> None:
    backends = Backends(load_s=0.5)
    loads = loads_over(backends, wait_deadline_s=0.05)
    with pytest.raises(AdapterLoading) as caught:
        await loads.acquire("a@v1")
    response = error_response(caught.value)
    assert response.status_code == 503
    assert b'"code":"adapter_loading"' in bytes(response.body)
    assert int(response.headers["retry-after"]) >= 1
    await asyncio.sleep(0.5)  # the load itself went on: the next request is served at once
    assert loads.fleet.route("a@v1").__class__.__name__ == "Serve"
    assert len(backends.loads) == 1


async def test_a_failed_load_refuses_its_waiters_and_the_next_request_tries_again() -> None:
    backends = Backends()
    backends.fail = True
    loads = loads_over(backends)
    results = await asyncio.gather(
        *(loads.acquire("a@v1") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, AdapterLoading) for r in results)
    backends.fail = False
    assert (await loads.acquire("a@v1")).backend in {"b0", "b1"}
    assert len(backends.loads) == 2


async def test_a_full_fleet_unloads_the_victim_before_loading() -> None:
    backends = Backends(load_s=0.0)
    loads = loads_over(backends, resident=1)
    for version in ("a@v1", "b@v1", "c@v1"):
        loads.release((await loads.acquire(version)).backend, version)
    assert len(backends.unloads) == 1
    victim_backend, victim = backends.unloads[0]
    assert victim == "a@v1"  # the least recently used
    assert victim not in loads.fleet.resident(victim_backend)


async def test_on_a_full_fleet_a_request_waits_for_a_slot_and_never_evicts_a_busy_one() -> None:
    backends = Backends(load_s=0.0)
    loads = loads_over(backends, resident=1)
    held = [(await loads.acquire(version)).backend for version in ("a@v1", "b@v1")]
    waiting = asyncio.ensure_future(loads.acquire("c@v1"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert backends.unloads == []  # both versions are in use
    loads.release(held[0], "a@v1")
    assert (await waiting).backend == held[0]
    assert backends.unloads == [(held[0], "a@v1")]


async def test_on_a_full_fleet_past_the_deadline_the_request_gets_adapter_loading() -> None:
    loads = loads_over(Backends(load_s=0.0), resident=1, wait_deadline_s=0.05)
    for version in ("a@v1", "b@v1"):
        await loads.acquire(version)
    with pytest.raises(AdapterLoading):
        await loads.acquire("c@v1")
    assert loads.waiting == 0


def test_a_publish_outside_the_event_loop_pins_warm_versions_and_loads_nothing_yet() -> None:
    backends = Backends()
    loads = loads_over(backends)
    loads.publish({"a@v1", "b@v1"}, {"a@v1"})
    assert loads.fleet.warm == {"a@v1"}
    assert loads.fleet.holders("a@v1", loaded_only=False) == []


async def test_publish_loads_warm_versions_and_unloads_idle_unrouted_ones() -> None:
    backends = Backends(load_s=0.0)
    loads = loads_over(backends)
    loads.release((await loads.acquire("old@v1")).backend, "old@v1")
    loads.publish({"a@v1"}, {"a@v1"})
    await asyncio.sleep(0.05)
    assert loads.fleet.holders("a@v1") != []
    assert loads.fleet.holders("old@v1", loaded_only=False) == []
    assert [version for _, version in backends.unloads] == ["old@v1"]


async def test_a_404_on_a_copy_loaded_before_the_request_forgets_it_and_reloads() -> None:
    backends = Backends(load_s=0.01)
    loads = loads_over(backends)
    backend = (await loads.acquire("a@v1")).backend
    mark = loads.fleet.load_mark()
    loads.release(backend, "a@v1", mark)
    assert loads.lost(backend, "a@v1", mark)  # vLLM dropped it: forgotten there
    assert "a@v1" not in loads.fleet.resident(backend)
    assert (await loads.acquire("a@v1", [backend])).backend == backend  # the retry reloads it
    assert backends.loads == [(backend, "a@v1")] * 2
    assert loads.evictions[backend] == {"lost": 1}


async def test_a_404_arriving_after_its_copy_was_reloaded_keeps_the_fresh_copy() -> None:
    """Two requests in flight on one copy when the backend restarts: the first's 404 forgets
    the copy and its retry reloads it; the second's 404 arrives only after that reload
    completed. It forgets nothing, its retry goes to the fresh copy, nothing loads again."""
    backends = Backends(load_s=0.01)
    loads = loads_over(backends)
    placed = await loads.acquire("a@v1")
    backend, first = placed.backend, placed.mark
    placed = await loads.acquire("a@v1")
    assert placed.backend == backend
    second = placed.mark
    loads.release(backend, "a@v1", first)
    assert loads.lost(backend, "a@v1", first)
    placed = await loads.acquire("a@v1", [backend])  # the first's retry: reloaded
    assert placed.backend == backend
    retried = placed.mark
    assert len(backends.loads) == 2
    loads.release(backend, "a@v1", second)  # the second's late 404
    assert not loads.lost(backend, "a@v1", second)
    assert loads.fleet.resident(backend) == {"a@v1"}
    (held,) = loads.fleet.view()[backend]
    assert held.inflight == 1  # the first's retry, still counted on the fresh copy
    assert (await loads.acquire("a@v1", [backend])).backend == backend  # the second's retry: served
    assert len(backends.loads) == 2
    assert loads.evictions[backend] == {"lost": 1}
    loads.release(backend, "a@v1", retried)
    loads.release(backend, "a@v1", loads.fleet.load_mark())
    assert loads.fleet.inflight(backend) == 0


class Listing:
    """A backend's list of its adapters that answers only when `answer` is set, so a test can
    let a load complete while the list is on its way."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def __call__(self) -> set[str]:
        self.asked.set()
        await self.answer.wait()
        return set(self.names)


async def test_a_backend_that_lost_a_version_is_reconciled_and_the_next_request_loads_it() -> None:
    backends = Backends(load_s=0.01)
    loads = loads_over(backends)
    backend = (await loads.acquire("a@v1")).backend
    loads.release(backend, "a@v1")
    listing = Listing(set())  # the backend restarted: it lists nothing
    listing.answer.set()
    assert await loads.reconcile(backend, listing) == ["a@v1"]
    assert "a@v1" not in loads.fleet.resident(backend)
    await loads.acquire("a@v1")
    assert len(backends.loads) == 2  # loaded again before the request, no 404 needed


async def test_a_load_completing_while_the_listing_is_on_its_way_is_kept() -> None:
    backends = Backends(load_s=0.05)
    loads = loads_over(backends)
    request = asyncio.create_task(loads.acquire("a@v1"))
    await asyncio.sleep(0)  # the load starts
    (loading,) = loads.fleet.holders("a@v1", loaded_only=False)
    listing = Listing(set())  # the list was made before the load reached vLLM
    reconcile = asyncio.create_task(loads.reconcile(loading, listing))
    await listing.asked.wait()
    backend = (await request).backend  # the load completes; a request is served on it
    loads.release(backend, "a@v1")
    listing.answer.set()
    assert await reconcile == []
    assert loads.fleet.resident(backend) == {"a@v1"}


async def test_a_listing_that_fails_changes_nothing() -> None:
    loads = loads_over(Backends(load_s=0.01))
    backend = (await loads.acquire("a@v1")).backend

    async def down() -> set[str]:
        raise ConnectionError("backend down")

    with pytest.raises(ConnectionError):
        await loads.reconcile(backend, down)
    assert loads.fleet.resident(backend) == {"a@v1"}
    loads.release(backend, "a@v1")
