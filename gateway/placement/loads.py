"""Carry placement decisions out: single-flight loads, a bounded wait, in-flight accounting.

`AdapterLoads.acquire(version)` returns the backend a request for `version` goes to, with the
request counted in flight there (call `release` when it ends), and the count of completed loads
at that moment (`Placed.mark`: a copy loaded later is not the one it was counted on). When no
backend holds the version, the request waits for the one load of that version on its chosen
backend, however many requests want it; when every slot holds a version in use, it waits for
one to free. At most `max_waiting` requests wait at a time, each at most `wait_deadline_s`;
past either, `AdapterLoading` (503 with Retry-After). The backend calls (vLLM's load and
unload endpoints) come in through the small `AdapterCalls` interface. With
`shared` (several replicas, `shared.py`), loads and unloads run under a lease on their backend,
skip a version another replica loaded meanwhile, and spare a version another replica uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import AdapterLoading
from gateway.placement.fleet import (
    EvictReason,
    FleetPlacement,
    Full,
    Load,
    LoadReason,
    Serve,
)
from gateway.placement.shared import SharedPlacement

log = logging.getLogger("turnout.placement")


@dataclass(frozen=True, slots=True)
class Placed:
    """Where `acquire` counted a request for `version` in flight, and `FleetPlacement.load_mark()`
    taken in the same step (before any await): a copy of the version loaded later is not the
    one the request was counted on, so its 404 or its end (`lost`, `release`) does not concern
    that copy."""

    backend: str
    version: str
    mark: int


class AdapterCalls(Protocol):
    """The backend side of placement: vLLM's `/v1/load_lora_adapter` and its unload twin."""

    async def load(self, backend: str, version: str) -> None: ...

    async def unload(self, backend: str, version: str) -> None: ...


class PlacementObserver(Protocol):
    """What placement reports (Prometheus in the gateway, counters in the bench)."""

    def loaded(self, backend: str, reason: LoadReason, seconds: float, ok: bool) -> None: ...

    def evicted(self, backend: str, reason: EvictReason) -> None: ...

    def served(self, backend: str, cold: bool, waited_s: float) -> None: ...

    def refused(self, reason: str) -> None: ...


class NoObserver:
    def loaded(self, backend: str, reason: LoadReason, seconds: float, ok: bool) -> None:
        pass

    def evicted(self, backend: str, reason: EvictReason) -> None:
        pass

    def served(self, backend: str, cold: bool, waited_s: float) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass


class AdapterLoads:
    """Single-flight loading and in-flight accounting over one `FleetPlacement`."""

    def __init__(
        self,
        fleet: FleetPlacement,
        calls: AdapterCalls,
        *,
        max_waiting: int = 256,
        wait_deadline_s: float = 30.0,
        observer: PlacementObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedPlacement | None = None,
    ) -> None:
        self.fleet = fleet
        self._calls = calls
        self.max_waiting = max_waiting
        self.wait_deadline_s = wait_deadline_s
        self._observer = observer or NoObserver()
        self._clock = clock
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.waiting = 0
        self._freed = asyncio.Event()  # set (and replaced) whenever a slot may have freed
        self._load_s = 1.0  # moving estimate of one load's time, for Retry-After
        self.shared = shared
        self._lost: set[tuple[str, str]] = set()  # vLLM said 404: Redis's record is stale
        self.evictions: dict[str, Counter[str]] = {}  # per backend, by reason, since the start

    @property
    def loads_in_flight(self) -> int:
        return len(self._loads)

    def _retry_after(self) -> float:
        return max(1.0, self._load_s)

    async def acquire(self, version: str, eligible: Collection[str] | None = None) -> Placed:
        """The backend for a request for `version`, counted in flight there until `release`.

        The mark is taken as the request is counted, before Redis is told (`shared.using`): a
        reload of the version that completes during that await is a copy this request was not
        counted on, so its end must not lower that copy's count."""
        backend = await self._place(version, eligible)
        placed = Placed(backend, version, self.fleet.load_mark())
        if self.shared is not None:
            try:
                await self.shared.using(backend, version)  # other replicas must not evict it
            except BaseException:  # `using` took its own count back
                self.fleet.end(backend, version)
                self._room_changed()
                raise
        return placed

    async def _place(self, version: str, eligible: Collection[str] | None) -> str:
        decision = self.fleet.route(version, eligible)
        if isinstance(decision, Serve):
            self.fleet.begin(decision.backend, version)
            self._observer.served(decision.backend, cold=False, waited_s=0.0)
            self._maybe_replicate(version, eligible)
            return decision.backend
        if self.waiting >= self.max_waiting:
            self._observer.refused("queue_full")
            raise AdapterLoading(
                f"Too many requests are waiting for adapters to load ({version} included).",
                retry_after_s=self._retry_after(),
            )
        started = self._clock()
        deadline = started + self.wait_deadline_s
        while isinstance(decision, Full):
            # Every slot holds a version in use: wait (as a queued request) for one to free.
            await self._wait_for_room(version, deadline)
            decision = self.fleet.route(version, eligible)
        if isinstance(decision, Serve):
            self.fleet.begin(decision.backend, version)
            self._observer.served(decision.backend, cold=True, waited_s=self._clock() - started)
            return decision.backend
        if isinstance(decision, Load):
            task = self._start(decision)
        else:
            task = self._loads[(decision.backend, version)]
        return await self._wait(decision.backend, version, task, started, deadline)

    async def _wait_for_room(self, version: str, deadline: float) -> None:
        self.waiting += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await self._freed.wait()
        except TimeoutError:
            self._observer.refused("full")
            raise AdapterLoading(
                f"Every adapter slot is in use; {version} could not be loaded in time.",
                retry_after_s=self._retry_after(),
            ) from None
        finally:
            self.waiting -= 1

    def _room_changed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    async def _wait(
        self,
        backend: str,
        version: str,
        task: asyncio.Task[None],
        started: float,
        deadline: float,
    ) -> str:
        self.waiting += 1
        self.fleet.expect(backend, version, +1)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await asyncio.shield(task)
        except TimeoutError:
            self._observer.refused("deadline")
            raise AdapterLoading(
                f"The adapter {version} is still loading; retry shortly.",
                retry_after_s=self._retry_after(),
            ) from None
        except Exception:
            self._observer.refused("load_failed")
            raise AdapterLoading(
                f"The adapter {version} could not be loaded onto {backend}; retry shortly.",
                retry_after_s=self._retry_after(),
            ) from None
        finally:
            self.waiting -= 1
            self.fleet.expect(backend, version, -1)
        # Counted as waiting until here, so the version cannot have been evicted meanwhile.
        self.fleet.begin(backend, version)
        self._observer.served(backend, cold=True, waited_s=self._clock() - started)
        return backend

    def release(self, backend: str, version: str, mark: int | None = None) -> None:
        """The request for `version` on `backend` ended; `mark`: `Placed.mark` from
        `acquire` (a copy loaded since is not the one it was counted on)."""
        self.fleet.end(backend, version, mark)
        if self.shared is not None:
            self.shared.done(backend, version)
        self._room_changed()

    def lost(self, backend: str, version: str, mark: int | None = None) -> bool:
        """vLLM answered 404 for `version` (its own LRU or a restart dropped it): forget it
        there, unless the copy there now completed its load after the request was sent (`mark`:
        `Placed.mark` from `acquire`; None: forget whatever is there).
        Such a 404 arrived late, about the copy before: the retry goes to the fresh copy and
        nothing is loaded again. False for such a late 404 (nothing forgotten)."""
        if mark is not None and self.fleet.loaded_after(backend, version, mark):
            log.info("late 404 for %s on %s: its copy was reloaded since, kept", version, backend)
            return False
        self._lost.add((backend, version))
        if version in self.fleet.resident(backend):
            self.fleet.lose(backend, version)
            self._evicted(backend, EvictReason.LOST)
        return True

    async def reconcile(
        self, backend: str, listing: Callable[[], Awaitable[Collection[str]]]
    ) -> list[str]:
        """Ask `backend` for its adapters (`listing`: vLLM's `/v1/models`) and forget there the
        versions it no longer holds (see `FleetPlacement.reconcile`); the versions forgotten.
        The listing's errors propagate: the caller skips that backend this time."""
        mark = self.fleet.load_mark()
        listed = await listing()
        dropped = self.fleet.reconcile(backend, listed, mark)
        for version in dropped:
            if self.shared is not None:
                self._lost.add((backend, version))  # Redis's record of it there is stale too
            self._evicted(backend, EvictReason.BACKEND_LOST)
            log.info("%s no longer lists %s: forgotten there", backend, version)
        if dropped:
            self._room_changed()
        return dropped

    def _evicted(self, backend: str, reason: EvictReason) -> None:
        self.evictions.setdefault(backend, Counter())[reason.value] += 1
        self._observer.evicted(backend, reason)

    def _maybe_replicate(self, version: str, eligible: Collection[str] | None) -> None:
        replica = self.fleet.replica_wanted(version, eligible)
        if replica is not None:
            task = self._start(replica)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def warm_up(self, eligible: Collection[str] | None = None) -> list[asyncio.Task[None]]:
        """Start loads for warm versions resident nowhere; the tasks, to await if wanted."""
        tasks = []
        for load in self.fleet.warm_loads(eligible):
            tasks.append(self._spawn(load))
        return tasks

    def publish(self, routed: Collection[str], warm: Collection[str]) -> None:
        """A new routing table: keep `warm` resident (loading what is missing now) and unload
        idle versions no route names; call from the event loop."""
        self.fleet.set_warm(warm)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (a table built before serving): the start publishes again
        self.warm_up()
        for backend, version in self.fleet.unrouted(routed):
            self._evicted(backend, EvictReason.UNROUTED)
            task = asyncio.get_running_loop().create_task(self._unload_unrouted(backend, version))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _unload_unrouted(self, backend: str, version: str) -> None:
        if self.shared is None:
            await self._unload(backend, version)
            return
        async with self.shared.lease(backend):
            await self._evict(backend, version, self.shared)

    async def _evict(self, backend: str, version: str, shared: SharedPlacement) -> None:
        """Unload `version` from `backend` unless another replica uses it (lease held)."""
        if await shared.used_elsewhere(backend, version):
            log.info("kept %s on %s: another replica is using it", version, backend)
            return
        await self._unload(backend, version)
        await shared.record(backend, version, held=False)

    async def _unload(self, backend: str, version: str) -> None:
        try:
            await self._calls.unload(backend, version)
        except Exception as error:
            log.warning("unload of %s on %s failed: %s", version, backend, error)

    def _start(self, load: Load) -> asyncio.Task[None]:
        self.fleet.start_load(load)
        return self._spawn(load)

    def _spawn(self, load: Load) -> asyncio.Task[None]:
        for _ in load.evict:
            self._evicted(load.backend, EvictReason.CAPACITY)
        task = asyncio.get_running_loop().create_task(self._run(load))
        self._loads[(load.backend, load.version)] = task
        # A failed load nobody waits for (a replica) must not log "exception never retrieved".
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _run(self, load: Load) -> None:
        started = self._clock()
        ok = False
        try:
            if self.shared is None:
                for victim in load.evict:  # vLLM's own LRU may have dropped it already
                    await self._unload(load.backend, victim)
                await self._calls.load(load.backend, load.version)
            else:
                async with self.shared.lease(load.backend):
                    await self._load_shared(load, self.shared)
            ok = True
        finally:
            seconds = self._clock() - started
            if ok:
                self._load_s = 0.8 * self._load_s + 0.2 * seconds
            self.fleet.finish_load(load.backend, load.version, ok=ok)
            self._observer.loaded(load.backend, load.reason, seconds, ok)
            del self._loads[(load.backend, load.version)]
            self._room_changed()

    async def _load_shared(self, load: Load, shared: SharedPlacement) -> None:
        """Carry a load out holding the backend's lease: skip it when another replica loaded
        the version meanwhile (unless vLLM told us it lost it), evict only what no other
        replica uses (a kept victim stays loaded; vLLM's own LRU makes room then)."""
        stale = (load.backend, load.version) in self._lost
        self._lost.discard((load.backend, load.version))
        if not stale and await shared.holds(load.backend, load.version):
            return
        for victim in load.evict:
            await self._evict(load.backend, victim, shared)
        await self._calls.load(load.backend, load.version)
        await shared.record(load.backend, load.version, held=True)
