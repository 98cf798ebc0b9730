"""Two gateway replicas placing adapters on one fleet, coordinated through a real Redis.

Each replica is an `AdapterLoads` over its own `FleetPlacement`, as in two gateway processes;
both load onto one in-memory fleet (the backends' load/unload calls, counted), so the test
sees every load and unload either replica makes and whether two overlapped on a backend.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from gateway.bench.redis_server import RedisServer
from gateway.placement.fleet import BackendCapacity, FleetPlacement
from gateway.placement.loads import AdapterLoads
from gateway.placement.shared import SharedPlacement
from gateway.serving.embedded_vllm import free_port

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Fleet:
    """Backends shared by both replicas: what each holds, every load and unload, overlapping
    calls on one backend, and unloads of a version some replica has requests in flight on."""

    def __init__(self, backends: int, load_s: float = 0.05) -> None:
        self.load_s = load_s
        self.held: dict[str, set[str]] = {f"b{i}": set() for i in range(backends)}
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[tuple[str, str]] = []
        self.busy: Counter[str] = Counter()
        self.overlaps = 0
        self.in_use: Counter[tuple[str, str]] = Counter()
        self.thrashed: list[tuple[str, str]] = []

    async def _call(self, backend: str) -> None:
        self.busy[backend] += 1
        if self.busy[backend] > 1:
            self.overlaps += 1
        await asyncio.sleep(self.load_s)
        self.busy[backend] -= 1

    async def load(self, backend: str, version: str) -> None:
        self.loads.append((backend, version))
        await self._call(backend)
        self.held[backend].add(version)

    async def unload(self, backend: str, version: str) -> None:
        self.unloads.append((backend, version))
        if self.in_use[(backend, version)]:
            self.thrashed.append((backend, version))
        await self._call(backend)
        self.held[backend].discard(version)


def replica(
    fleet: Fleet, resident: int, url: str | None, prefix: str = "t", in_use_s: float = 10.0
) -> AdapterLoads:
    """One gateway replica; replicas given one `prefix` share one Redis namespace."""
    capacities = {b: BackendCapacity(resident, 4) for b in fleet.held}
    shared = None
    if url is not None:
        shared = SharedPlacement(url, prefix=prefix, in_use_s=in_use_s)
    return AdapterLoads(FleetPlacement(capacities), fleet, shared=shared)  # type: ignore[arg-type]


def pair(
    fleet: Fleet, resident: int, url: str | None, in_use_s: float = 10.0
) -> list[AdapterLoads]:
    """Two replicas in a Redis namespace of their own (a fresh one for each call)."""
    prefix = f"t{next(_prefixes)}"
    return [replica(fleet, resident, url, prefix, in_use_s) for _ in range(2)]


async def close(*replicas: AdapterLoads) -> None:
    for loads in replicas:
        if loads.shared is not None:
            await loads.shared.close()


async def serve(loads: AdapterLoads, fleet: Fleet, version: str, hold_s: float = 0.0) -> str:
    """One request: acquire, run on the fleet for `hold_s`, release."""
    backend = (await loads.acquire(version)).backend
    fleet.in_use[(backend, version)] += 1
    await asyncio.sleep(hold_s)
    fleet.in_use[(backend, version)] -= 1
    loads.release(backend, version)
    return backend


async def test_two_replicas_asked_for_a_cold_version_load_it_once(
    redis_server: RedisServer,
) -> None:
    results = {}
    for coordinated in (False, True):  # side by side: the same race without Redis loads twice
        fleet = Fleet(backends=2)
        one, two = pair(fleet, 4, redis_server.url if coordinated else None)
        backends = await asyncio.gather(
            *(serve(r, fleet, "a@v1", 0.01) for r in (one, two) for _ in range(10))
        )
        await close(one, two)
        results[coordinated] = (fleet.loads, set(backends), fleet.overlaps)
    alone_loads, _, alone_overlaps = results[False]
    assert len(alone_loads) == 2
    assert alone_overlaps == 1
    loads, backends, overlaps = results[True]
    assert Counter(loads) == {(b, "a@v1"): 1 for b in backends}
    assert len(loads) == 1
    assert overlaps == 0


async def test_loads_of_different_versions_on_one_backend_never_overlap(
    redis_server: RedisServer,
) -> None:
    fleet = Fleet(backends=1)
    one, two = pair(fleet, 8, redis_server.url)
    versions = [f"v{i}@1" for i in range(4)]
    await asyncio.gather(*(serve(r, fleet, v) for r in (one, two) for v in versions))
    await close(one, two)
    assert sorted(fleet.loads) == [("b0", v) for v in versions]  # each once, by either replica
    assert fleet.overlaps == 0


async def test_a_replica_never_evicts_a_version_the_other_is_using(
    redis_server: RedisServer,
) -> None:
    fleet = Fleet(backends=1)
    user, evicter = pair(fleet, 1, redis_server.url)
    await serve(evicter, fleet, "a@v1")  # the evicter loads a@v1 and goes idle on it
    running = asyncio.create_task(serve(user, fleet, "a@v1", hold_s=0.2))
    await asyncio.sleep(0.05)
    # The evicter's one slot holds a@v1, idle for it: b@v1 would evict it, but the user is on it.
    await serve(evicter, fleet, "b@v1")
    assert ("b0", "a@v1") not in fleet.unloads
    assert "a@v1" in fleet.held["b0"]
    await running
    await serve(evicter, fleet, "c@v1")  # b@v1, which nobody else uses, is evicted as usual
    await close(user, evicter)
    assert fleet.unloads == [("b0", "b@v1")]
    assert fleet.thrashed == []
    assert [v for _, v in fleet.loads] == ["a@v1", "b@v1", "c@v1"]  # the user loaded nothing


async def test_without_coordination_the_same_race_evicts_a_version_in_use() -> None:
    """The control for the test above: the check it relies on can fail."""
    fleet = Fleet(backends=1)
    user, evicter = pair(fleet, 1, None)
    await serve(evicter, fleet, "a@v1")
    running = asyncio.create_task(serve(user, fleet, "a@v1", hold_s=0.2))
    await asyncio.sleep(0.1)
    await serve(evicter, fleet, "b@v1")
    await running
    assert fleet.thrashed == [("b0", "a@v1")]


async def test_redis_unreachable_places_alone_without_an_error() -> None:
    fleet = Fleet(backends=2)
    loads = replica(fleet, 4, f"redis://127.0.0.1:{free_port()}/0")
    backends = await asyncio.gather(*(serve(loads, fleet, "a@v1") for _ in range(5)))
    assert len(set(backends)) == 1
    assert len(fleet.loads) == 1
    assert loads.shared is not None
    assert loads.shared.alone >= 1
    await close(loads)


class SlowToTell(SharedPlacement):
    """Redis told of a request in use only once `go` is set (one call, when `hold` is set), so a
    test can let a reload complete while a request waits on that await."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix)
        self.hold = False
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def using(self, backend: str, version: str) -> None:
        if self.hold:
            self.hold = False
            self.held.set()
            await self.go.wait()
        await super().using(backend, version)


async def test_a_reload_during_the_redis_await_is_not_the_copy_the_request_counts_on(
    redis_server: RedisServer,
) -> None:
    """A request is counted on a copy, then waits on Redis; meanwhile the copy is lost (another
    request's 404) and reloaded. The request's end must not lower the fresh copy's count."""
    fleet = Fleet(backends=1, load_s=0.01)
    shared = SlowToTell(redis_server.url, prefix=f"t{next(_prefixes)}")
    loads = AdapterLoads(
        FleetPlacement({"b0": BackendCapacity(2, 4)}),
        fleet,  # type: ignore[arg-type]
        shared=shared,
    )
    try:
        first = await loads.acquire("a@v1")
        shared.hold = True
        late = asyncio.create_task(loads.acquire("a@v1"))  # counted, then held on Redis
        await shared.held.wait()
        loads.release("b0", "a@v1", first.mark)
        assert loads.lost("b0", "a@v1", first.mark)  # the first request's 404
        retry = await loads.acquire("a@v1", ["b0"])  # its retry reloads the version
        assert len(fleet.loads) == 2
        shared.go.set()
        placed = await late
        loads.release("b0", "a@v1", placed.mark)  # ends: it was counted on the lost copy
        (held,) = loads.fleet.view()["b0"]
        assert held.inflight == 1  # the retry, still counted on the fresh copy
        loads.release("b0", "a@v1", retry.mark)
        assert loads.fleet.inflight("b0") == 0
    finally:
        await close(loads)
