"""The fleet view and the placement policy over it: pure and synchronous, the clock injected.

`FleetPlacement` knows, per backend, which adapter versions are resident or being loaded, how
many requests are in flight on each, and how recently and how often each was used. `route`
turns a request for a version into one decision: serve it on a holder (the least loaded one),
wait for a load already running, start a load (naming the versions to evict first), or give up
because every slot is pinned or busy. The caller (`loads.py`, or a simulator) carries the
decision out and reports back; nothing here does I/O.

Rules the policy keeps:
- a version with requests in flight, or with requests waiting for it, is never evicted;
- a warm version is never evicted while it is its last copy (extra replicas may go);
- among holders, and among backends with room for a load, the least loaded one goes first:
  its requests in flight from this gateway plus the requests waiting in its own queue that
  are not ours (`set_queue`, from the backend's `/metrics`), so a backend whose queue grows
  from other clients' traffic is avoided;
- a version whose holders are all busy (`replicate_at` requests in flight on the least busy)
  gets one more holder, so a hot adapter spreads instead of piling onto one backend;
- the first load goes to the least loaded backend with room, else to the backend whose coldest
  evictable version is coldest (least recently used, or least frequently used: counts decay
  with a half-life and outlive an eviction, so a version loaded again starts from its count);
- a backend's own list of its adapters (`reconcile`) drops only idle versions whose load had
  completed before that list was asked for: a list that raced a load says nothing of it;
- likewise a request's 404, and its end, concern only the copy it was sent to: one whose load
  completed before the request was counted in flight (`load_mark`), never a fresh copy
  loaded meanwhile (a 404 that arrives late must not forget the copy that replaced its own).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Eviction(StrEnum):
    """Which resident version gives up its slot when a backend is full."""

    LRU = "lru"
    LFU = "lfu"


class LoadReason(StrEnum):
    FIRST_USE = "first_use"
    REPLICA = "replica"
    WARM = "warm"
    RELOAD = "reload"


class EvictReason(StrEnum):
    CAPACITY = "capacity"
    UNROUTED = "unrouted"
    LOST = "lost"  # vLLM answered 404 for it
    BACKEND_LOST = "backend_lost"  # the backend's list of adapters no longer names it


@dataclass(frozen=True, slots=True)
class BackendCapacity:
    """What one vLLM backend can hold: `--max-cpu-loras` resident, `--max-loras` per batch."""

    resident: int
    batch: int

    def __post_init__(self) -> None:
        if self.resident < 1 or self.batch < 1:
            raise ValueError("a backend needs at least one resident and one batch slot")


@dataclass(frozen=True, slots=True)
class Serve:
    backend: str


@dataclass(frozen=True, slots=True)
class Load:
    backend: str
    version: str
    reason: LoadReason
    evict: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Wait:
    backend: str


@dataclass(frozen=True, slots=True)
class Full:
    """No backend has a free slot or an evictable version (all pinned, busy or loading)."""


Decision = Serve | Load | Wait | Full


@dataclass(slots=True)
class _Held:
    """One version on one backend."""

    reason: LoadReason
    loaded: bool = False  # False while its load runs
    inflight: int = 0
    waiting: int = 0  # requests waiting for this load, counted so no eviction races them
    last_used: float = 0.0
    frequency: float = 0.0  # decayed count of requests served here
    stamp: float = 0.0  # when `frequency` was last decayed
    loaded_mark: int = 0  # the fleet's count of completed loads when this one completed

    def busy(self) -> bool:
        return self.inflight > 0 or self.waiting > 0 or not self.loaded


@dataclass(frozen=True, slots=True)
class HeldView:
    """One resident version as `turnout adapters placement` shows it."""

    version: str
    loaded: bool
    reason: str
    inflight: int
    warm: bool
    idle_s: float


@dataclass(slots=True)
class _Backend:
    capacity: BackendCapacity
    held: dict[str, _Held] = field(default_factory=dict)
    inflight: int = 0
    queued: int = 0  # requests waiting in the backend's own queue that are not this gateway's

    def load(self) -> int:
        return self.inflight + self.queued


def _affinity(version: str, backend: str) -> int:
    """Rendezvous weight: ties go the same way in every replica and every run."""
    digest = hashlib.blake2b(f"{version}\0{backend}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class FleetPlacement:
    """Which backend holds which adapter version, and the decisions that change it."""

    def __init__(
        self,
        capacities: Mapping[str, BackendCapacity],
        *,
        eviction: Eviction = Eviction.LFU,
        replicate_at: int = 4,
        lfu_half_life_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not capacities:
            raise ValueError("at least one backend is needed")
        self._backends = {url: _Backend(capacity) for url, capacity in capacities.items()}
        self._holders: dict[str, set[str]] = {}
        self._warm: frozenset[str] = frozenset()
        self._loads_done = 0  # completed loads, fleet-wide: orders loads against listings
        self.eviction = eviction
        self.replicate_at = max(1, replicate_at)
        self._decay = math.log(2) / lfu_half_life_s
        self._clock = clock
        # Decayed request counts of versions no backend holds any more (LFU's memory): a
        # version loaded again starts from its count, not from nothing, so a popular version
        # evicted once is not the first to go again (`_remember`, `start_load`).
        self._history: dict[str, tuple[float, float]] = {}
        self._history_limit = 4 * sum(c.resident for c in capacities.values())

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._backends)

    @property
    def warm(self) -> frozenset[str]:
        return self._warm

    def set_warm(self, versions: Iterable[str]) -> None:
        """The versions to keep resident (stable and candidate of a rollout, `warm: true`)."""
        self._warm = frozenset(versions)

    def holders(self, version: str, *, loaded_only: bool = True) -> list[str]:
        backends = self._holders.get(version, ())
        if not loaded_only:
            return sorted(backends)
        return sorted(b for b in backends if self._backends[b].held[version].loaded)

    def resident(self, backend: str) -> frozenset[str]:
        return frozenset(v for v, h in self._backends[backend].held.items() if h.loaded)

    def inflight(self, backend: str) -> int:
        return self._backends[backend].inflight

    def queued(self, backend: str) -> int:
        return self._backends[backend].queued

    def capacity(self, backend: str) -> BackendCapacity:
        return self._backends[backend].capacity

    def set_capacity(self, backend: str, capacity: BackendCapacity) -> None:
        """The backend's slots as discovered; a smaller count evicts nothing now, only makes
        the next load there evict first."""
        self._backends[backend].capacity = capacity

    def set_queue(self, backend: str, waiting: int | None, running: int | None = None) -> None:
        """What the backend's `/metrics` says now: requests waiting in its queue and running,
        every client's (None: unknown or stale, so only this gateway's in-flight count)."""
        state = self._backends[backend]
        if waiting is None:
            state.queued = 0
            return
        # The backend counts this gateway's requests too (in `inflight`): only the waiting
        # requests beyond ours are other clients' queue, or the choice would herd on our own.
        others = max(0, (running or 0) + waiting - state.inflight)
        state.queued = min(waiting, others)

    # -- decisions -------------------------------------------------------------------------

    def route(self, version: str, eligible: Collection[str] | None = None) -> Decision:
        """Where a request for `version` goes now (`eligible`: backends that may take it)."""
        allowed = self._allowed(eligible)
        holders = self._holders.get(version, set())
        loaded = [b for b in holders if b in allowed and self._backends[b].held[version].loaded]
        if loaded:
            return Serve(min(loaded, key=lambda b: (self._backends[b].load(), b)))
        loading = [b for b in holders if b in allowed]
        if loading:
            return Wait(min(loading))
        return self._new_load(version, allowed, LoadReason.FIRST_USE)

    def replica_wanted(self, version: str, eligible: Collection[str] | None = None) -> Load | None:
        """One more holder for a version whose every holder is busy with it, if there is room."""
        holders = self._holders.get(version, set())
        if not holders:
            return None
        allowed = self._allowed(eligible)
        entries = [self._backends[b].held[version] for b in holders if b in allowed]
        if not entries or any(not held.loaded for held in entries):
            return None  # a load (or a replica) is already on its way
        if min(held.inflight for held in entries) < self.replicate_at:
            return None
        decision = self._new_load(version, allowed - holders, LoadReason.REPLICA)
        return decision if isinstance(decision, Load) else None

    def warm_loads(self, eligible: Collection[str] | None = None) -> list[Load]:
        """Loads that would make every warm version resident somewhere (applied one by one)."""
        allowed = self._allowed(eligible)
        loads = []
        for version in sorted(self._warm):
            if self._holders.get(version, set()) & allowed:
                continue
            decision = self._new_load(version, allowed, LoadReason.WARM)
            if isinstance(decision, Load):
                self.start_load(decision)
                loads.append(decision)
        return loads

    def _allowed(self, eligible: Collection[str] | None) -> set[str]:
        return set(self._backends) if eligible is None else set(eligible) & set(self._backends)

    def _new_load(self, version: str, allowed: set[str], reason: LoadReason) -> Decision:
        now = self._clock()
        free = [
            b for b in allowed if len(self._backends[b].held) < self._backends[b].capacity.resident
        ]
        if free:
            backend = min(free, key=lambda b: self._room_key(b, version))
            return Load(backend, version, reason)
        best: tuple[tuple[int, float, int], str, str] | None = None
        for backend in allowed:
            victim = self._victim(backend, now)
            if victim is None:
                continue
            key = (self._load_bucket(backend), victim[0], -_affinity(version, backend))
            if best is None or key < best[0]:
                best = (key, backend, victim[1])
        if best is None:
            return Full()
        return Load(best[1], version, reason, evict=(best[2],))

    def _load_bucket(self, backend: str) -> int:
        state = self._backends[backend]
        return state.load() // state.capacity.batch

    def _room_key(self, backend: str, version: str) -> tuple[int, int, int]:
        state = self._backends[backend]
        return (self._load_bucket(backend), len(state.held), -_affinity(version, backend))

    def _victim(self, backend: str, now: float) -> tuple[float, str] | None:
        """The coldest evictable version on `backend` and its retention score (lower: colder)."""
        best: tuple[float, str] | None = None
        for version, held in self._backends[backend].held.items():
            if held.busy():
                continue
            if version in self._warm and len(self._holders.get(version, ())) <= 1:
                continue
            score = held.last_used if self.eviction is Eviction.LRU else self._frequency(held, now)
            if best is None or (score, version) < best:
                best = (score, version)
        return best

    def _frequency(self, held: _Held, now: float) -> float:
        return held.frequency * math.exp(-self._decay * (now - held.stamp))

    # -- reports from whoever carries the decisions out --------------------------------------

    def start_load(self, load: Load) -> None:
        """Reserve the slot and drop the evicted versions at once (no request may pick them)."""
        state = self._backends[load.backend]
        for victim in load.evict:
            held = state.held.get(victim)
            if held is None or held.busy():
                raise ValueError(f"{victim} on {load.backend} cannot be evicted now")
            self._drop(load.backend, victim)
        now = self._clock()
        frequency, stamp = self._history.pop(load.version, (0.0, now))
        state.held[load.version] = _Held(
            reason=load.reason, last_used=now, frequency=frequency, stamp=stamp
        )
        self._holders.setdefault(load.version, set()).add(load.backend)

    def finish_load(self, backend: str, version: str, *, ok: bool) -> None:
        held = self._backends[backend].held.get(version)
        if held is None:
            return
        if ok:
            held.loaded = True
            self._loads_done += 1
            held.loaded_mark = self._loads_done
        else:
            self._drop(backend, version)  # its waiters learn of the failure from the loader

    def expect(self, backend: str, version: str, delta: int) -> None:
        """A request starts (+1) or stops (-1) waiting for `version`'s load on `backend`."""
        held = self._backends[backend].held.get(version)
        if held is not None:
            held.waiting += delta

    def begin(self, backend: str, version: str) -> None:
        """A request for `version` was sent to `backend`."""
        state = self._backends[backend]
        held = state.held[version]
        now = self._clock()
        held.frequency = self._frequency(held, now) + 1.0
        held.stamp = now
        held.last_used = now
        held.inflight += 1
        state.inflight += 1

    def end(self, backend: str, version: str, mark: int | None = None) -> None:
        """A request for `version` on `backend` finished (answered, failed or cancelled);
        `mark`: `load_mark()` when it was counted in flight (None: the copy there now)."""
        state = self._backends[backend]
        state.inflight -= 1
        held = state.held.get(version)
        if mark is not None and self.loaded_after(backend, version, mark):
            return  # its copy was lost and this one loaded since: not counted on this one
        if held is not None and held.inflight > 0:  # a reload after `lose` starts at zero
            held.inflight -= 1
            held.last_used = self._clock()

    def lose(self, backend: str, version: str) -> None:
        """The backend no longer holds `version` (vLLM answered 404 for it)."""
        held = self._backends[backend].held.get(version)
        if held is not None and held.loaded:
            # In-flight requests keep counting on the backend; `end` tolerates the missing entry.
            self._drop(backend, version)

    def loaded_after(self, backend: str, version: str, mark: int) -> bool:
        """Whether the copy of `version` on `backend` completed its load after `mark` (a
        `load_mark`): what was learnt at `mark` says nothing of it."""
        held = self._backends[backend].held.get(version)
        return held is not None and held.loaded and held.loaded_mark > mark

    def load_mark(self) -> int:
        """The count of completed loads now. Taken when a request is counted in flight (for
        `end`, and `AdapterLoads.lost` on vLLM's 404) or just before asking a backend for its
        list of adapters (for `reconcile`): a copy loaded after it is not the one meant."""
        return self._loads_done

    def reconcile(self, backend: str, listed: Collection[str], mark: int) -> list[str]:
        """Drop the versions placed on `backend` that its own list (asked for at `mark`) does
        not name: it restarted, or someone unloaded them. The versions dropped, sorted.

        Only versions whose load completed before the list was asked for are judged: one
        loaded while the list was on its way may be missing from it and still be there.
        Versions still loading, or with requests in flight, are left alone too: a request
        that meets vLLM's 404 reloads its version (`lose`), and the next list judges it once
        idle (its in-flight count is then never confused with a fresh copy's).
        """
        state = self._backends[backend]
        missing = [
            version
            for version, held in state.held.items()
            if held.loaded
            and held.inflight == 0
            and held.loaded_mark <= mark
            and version not in listed
        ]
        for version in missing:
            self._drop(backend, version)
        return sorted(missing)

    def unrouted(self, routed: Collection[str]) -> list[tuple[str, str]]:
        """Drop idle versions no route names any more; the (backend, version) pairs to unload."""
        dropped = []
        for backend, state in self._backends.items():
            for version, held in list(state.held.items()):
                if version not in routed and not held.busy():
                    self._drop(backend, version)
                    dropped.append((backend, version))
        return dropped

    def _drop(self, backend: str, version: str) -> None:
        held = self._backends[backend].held.pop(version)
        holders = self._holders.get(version)
        if holders is not None:
            holders.discard(backend)
            if not holders:
                del self._holders[version]
                self._remember(version, held)

    def _remember(self, version: str, held: _Held) -> None:
        """Keep the decayed count of a version's last copy; past `_history_limit` entries,
        forget those decayed below one request, then the least recently counted half."""
        now = self._clock()
        self._history[version] = (self._frequency(held, now), now)
        if len(self._history) <= self._history_limit:
            return
        kept = {
            v: (frequency, stamp)
            for v, (frequency, stamp) in self._history.items()
            if frequency * math.exp(-self._decay * (now - stamp)) >= 1.0
        }
        if len(kept) > self._history_limit // 2:
            newest = sorted(kept.items(), key=lambda item: item[1][1])[len(kept) // 2 :]
            kept = dict(newest)
        self._history = kept

    def view(self) -> dict[str, list[HeldView]]:
        """Per backend, what it holds and why (for the CLI and the admin API)."""
        now = self._clock()
        return {
            backend: [
                HeldView(
                    version=version,
                    loaded=held.loaded,
                    reason=held.reason.value,
                    inflight=held.inflight,
                    warm=version in self._warm,
                    idle_s=round(max(0.0, now - held.last_used), 3),
                )
                for version, held in sorted(state.held.items())
            ]
            for backend, state in self._backends.items()
        }
