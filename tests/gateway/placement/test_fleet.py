"""The placement policy as pure logic: where versions load, what is evicted, what never is."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.placement.fleet import (
    BackendCapacity,
    Eviction,
    FleetPlacement,
    Full,
    Load,
    LoadReason,
    Serve,
    Wait,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fleet(
    backends: int = 2, resident: int = 2, eviction: Eviction = Eviction.LRU, replicate_at: int = 4
) -> tuple[FleetPlacement, Clock]:
    clock = Clock()
    capacities = {f"b{i}": BackendCapacity(resident=resident, batch=2) for i in range(backends)}
    return FleetPlacement(
        capacities, eviction=eviction, replicate_at=replicate_at, clock=clock
    ), clock


def load_now(placement: FleetPlacement, version: str) -> str:
    decision = placement.route(version)
    assert isinstance(decision, Load), decision
    placement.start_load(decision)
    placement.finish_load(decision.backend, version, ok=True)
    return decision.backend


def use(placement: FleetPlacement, version: str) -> str:
    decision = placement.route(version)
    assert isinstance(decision, Serve), decision
    placement.begin(decision.backend, version)
    placement.end(decision.backend, version)
    return decision.backend


def test_first_use_loads_once_and_later_requests_wait_for_that_load() -> None:
    placement, _ = fleet()
    first = placement.route("a@v1")
    assert isinstance(first, Load)
    assert first.reason is LoadReason.FIRST_USE
    assert not first.evict
    placement.start_load(first)
    assert placement.route("a@v1") == Wait(first.backend)
    placement.finish_load(first.backend, "a@v1", ok=True)
    assert placement.route("a@v1") == Serve(first.backend)


def test_first_loads_spread_over_the_least_loaded_backends() -> None:
    placement, _ = fleet(backends=2, resident=4)
    busy = load_now(placement, "a@v1")
    for _ in range(2):  # a whole batch's worth in flight on that backend
        placement.begin(busy, "a@v1")
    assert load_now(placement, "b@v1") != busy


def test_a_full_backend_evicts_its_least_recently_used_version() -> None:
    placement, clock = fleet(backends=1, resident=2)
    load_now(placement, "a@v1")
    load_now(placement, "b@v1")
    clock.now = 1.0
    use(placement, "a@v1")  # b is now the least recently used
    decision = placement.route("c@v1")
    assert isinstance(decision, Load)
    assert decision.evict == ("b@v1",)


def test_lfu_evicts_the_least_frequently_used_version_even_if_used_last() -> None:
    placement, clock = fleet(backends=1, resident=2, eviction=Eviction.LFU)
    load_now(placement, "a@v1")
    load_now(placement, "b@v1")
    for step in range(5):
        clock.now = step
        use(placement, "a@v1")
    clock.now = 6
    use(placement, "b@v1")
    decision = placement.route("c@v1")
    assert isinstance(decision, Load)
    assert decision.evict == ("b@v1",)


def test_lfu_remembers_an_evicted_versions_count_when_it_loads_again() -> None:
    """a is asked for often, then evicted while busy versions hold the other slot; loaded
    again, it keeps its count, so the next eviction takes the version asked for once."""
    placement, clock = fleet(backends=1, resident=2, eviction=Eviction.LFU)
    load_now(placement, "a@v1")
    for step in range(5):
        clock.now = step
        use(placement, "a@v1")
    load_now(placement, "b@v1")
    placement.begin("b0", "b@v1")  # b is busy: c's load must evict a
    clock.now = 5
    c = placement.route("c@v1")
    assert isinstance(c, Load)
    assert c.evict == ("a@v1",)
    placement.start_load(c)
    placement.finish_load("b0", "c@v1", ok=True)
    placement.end("b0", "b@v1")
    use(placement, "c@v1")
    use(placement, "b@v1")
    clock.now = 6
    a = placement.route("a@v1")  # a again: evicts b or c, each asked for twice
    assert isinstance(a, Load)
    placement.start_load(a)
    placement.finish_load("b0", "a@v1", ok=True)
    clock.now = 7
    d = placement.route("d@v1")
    assert isinstance(d, Load)
    assert d.evict != ("a@v1",)  # without its remembered five requests, a would go first


def test_the_lfu_memory_of_evicted_versions_is_bounded() -> None:
    placement, clock = fleet(backends=1, resident=2, eviction=Eviction.LFU)
    for step in range(200):  # every version once: each load evicts one asked for once
        clock.now = step
        version = f"v{step}@v1"
        load_now(placement, version)
        use(placement, version)
    assert len(placement._history) <= 4 * 2


def test_a_version_with_requests_in_flight_or_waiting_is_never_evicted() -> None:
    placement, _ = fleet(backends=1, resident=2)
    load_now(placement, "a@v1")
    placement.begin("b0", "a@v1")  # in flight
    loading = placement.route("b@v1")
    assert isinstance(loading, Load)
    placement.start_load(loading)  # loading: not evictable either
    assert isinstance(placement.route("c@v1"), Full)
    placement.finish_load("b0", "b@v1", ok=True)
    placement.expect("b0", "b@v1", +1)  # a request is waiting to be sent to it
    assert isinstance(placement.route("c@v1"), Full)
    placement.expect("b0", "b@v1", -1)
    decision = placement.route("c@v1")
    assert isinstance(decision, Load)
    assert decision.evict == ("b@v1",)
    placement.end("b0", "a@v1")


def test_warm_versions_keep_their_last_copy() -> None:
    placement, clock = fleet(backends=1, resident=2)
    placement.set_warm({"stable@v1", "cand@v2"})
    loads = placement.warm_loads()
    assert sorted(load.version for load in loads) == ["cand@v2", "stable@v1"]
    for load in loads:
        placement.finish_load(load.backend, load.version, ok=True)
    clock.now = 100.0
    assert isinstance(placement.route("other@v1"), Full)
    placement.set_warm({"stable@v1"})  # the rollout ended: the candidate may go
    decision = placement.route("other@v1")
    assert isinstance(decision, Load)
    assert decision.evict == ("cand@v2",)


def test_a_busy_hot_version_gets_a_replica_and_requests_spread_over_holders() -> None:
    placement, _ = fleet(backends=3, resident=4, replicate_at=2)
    first = load_now(placement, "hot@v1")
    placement.begin(first, "hot@v1")
    assert placement.replica_wanted("hot@v1") is None
    placement.begin(first, "hot@v1")
    replica = placement.replica_wanted("hot@v1")
    assert replica is not None
    assert replica.backend != first
    assert replica.reason is LoadReason.REPLICA
    placement.start_load(replica)
    assert placement.replica_wanted("hot@v1") is None  # one replica at a time
    placement.finish_load(replica.backend, "hot@v1", ok=True)
    assert placement.route("hot@v1") == Serve(replica.backend)  # the idle holder


def test_a_failed_load_leaves_no_trace_and_a_lost_version_is_loaded_again() -> None:
    placement, _ = fleet(backends=1, resident=2)
    decision = placement.route("a@v1")
    assert isinstance(decision, Load)
    placement.start_load(decision)
    placement.finish_load("b0", "a@v1", ok=False)
    assert placement.holders("a@v1", loaded_only=False) == []
    load_now(placement, "a@v1")
    placement.lose("b0", "a@v1")
    assert isinstance(placement.route("a@v1"), Load)


def test_a_version_the_backend_no_longer_lists_is_forgotten_and_loaded_again() -> None:
    placement, _ = fleet(backends=1, resident=3)
    load_now(placement, "a@v1")
    load_now(placement, "b@v1")
    mark = placement.load_mark()
    assert placement.reconcile("b0", {"b@v1", "other@v9"}, mark) == ["a@v1"]
    assert placement.resident("b0") == {"b@v1"}  # unknown names on the backend are not ours
    decision = placement.route("a@v1")
    assert isinstance(decision, Load)
    assert decision.reason is LoadReason.FIRST_USE


def test_a_listing_asked_for_before_a_load_completed_drops_nothing_of_it() -> None:
    placement, _ = fleet(backends=1, resident=3)
    decision = placement.route("a@v1")
    assert isinstance(decision, Load)
    placement.start_load(decision)
    before_start = placement.load_mark()
    assert placement.reconcile("b0", set(), before_start) == []  # still loading: left alone
    mark = placement.load_mark()  # the list is asked for while the load runs...
    placement.finish_load("b0", "a@v1", ok=True)  # ...the load completes...
    use(placement, "a@v1")  # ...a request is served: the version is idle again...
    assert placement.reconcile("b0", set(), mark) == []  # ...then the list comes, without it
    assert placement.reconcile("b0", set(), before_start) == []
    assert placement.resident("b0") == {"a@v1"}
    assert placement.route("a@v1") == Serve("b0")
    placement.begin("b0", "a@v1")
    # A list asked for after the load completed, still without it: the backend lost it. The
    # request in flight there meets vLLM's 404 (and reloads), or ends; then the next list
    # drops it.
    assert placement.reconcile("b0", set(), placement.load_mark()) == []
    placement.end("b0", "a@v1")
    assert placement.reconcile("b0", set(), placement.load_mark()) == ["a@v1"]
    assert placement.inflight("b0") == 0
    assert placement.resident("b0") == frozenset()


def test_a_reload_after_a_listing_was_asked_for_is_not_judged_by_it() -> None:
    placement, _ = fleet(backends=1, resident=3)
    load_now(placement, "a@v1")
    mark = placement.load_mark()
    placement.lose("b0", "a@v1")  # vLLM's 404 meanwhile: forgotten, and loaded again
    load_now(placement, "a@v1")
    assert placement.reconcile("b0", set(), mark) == []
    assert placement.resident("b0") == {"a@v1"}


def test_a_request_sent_before_a_reload_concerns_neither_the_fresh_copy_nor_its_count() -> None:
    placement, _ = fleet(backends=1, resident=2)
    load_now(placement, "a@v1")
    placement.begin("b0", "a@v1")
    early = placement.load_mark()  # sent to the first copy...
    placement.lose("b0", "a@v1")  # ...which another request's 404 forgot...
    load_now(placement, "a@v1")  # ...and reloaded: a fresh copy
    placement.begin("b0", "a@v1")
    fresh = placement.load_mark()
    assert placement.loaded_after("b0", "a@v1", early)
    assert not placement.loaded_after("b0", "a@v1", fresh)
    placement.end("b0", "a@v1", early)  # the early request ends: it was not counted here
    (held,) = placement.view()["b0"]
    assert held.inflight == 1
    assert placement.inflight("b0") == 1
    placement.end("b0", "a@v1", fresh)
    (held,) = placement.view()["b0"]
    assert held.inflight == 0
    assert placement.inflight("b0") == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), eviction=st.sampled_from(list(Eviction)))
def test_random_traffic_never_overfills_a_backend_or_evicts_a_busy_version(
    seed: int, eviction: Eviction
) -> None:
    rng = random.Random(seed)
    placement, clock = fleet(backends=3, resident=3, eviction=eviction, replicate_at=2)
    placement.set_warm({"v0"})
    inflight: list[tuple[str, str]] = []
    loading: list[Load] = []
    for step in range(300):
        clock.now = step
        action = rng.random()
        if action < 0.5:
            version = f"v{min(int(rng.paretovariate(1.0)) - 1, 12)}"
            decision = placement.route(version)
            if isinstance(decision, Serve):
                placement.begin(decision.backend, version)
                inflight.append((decision.backend, version))
                replica = placement.replica_wanted(version)
                if replica is not None:
                    placement.start_load(replica)
                    loading.append(replica)
            elif isinstance(decision, Load):
                busy = set(inflight) | {(load.backend, load.version) for load in loading}
                assert not {(decision.backend, victim) for victim in decision.evict} & busy
                placement.start_load(decision)
                loading.append(decision)
        elif action < 0.8 and inflight:
            placement.end(*inflight.pop(rng.randrange(len(inflight))))
        elif loading:
            load = loading.pop(rng.randrange(len(loading)))
            placement.finish_load(load.backend, load.version, ok=rng.random() < 0.9)
        for backend in placement.backends:
            assert len(placement.resident(backend)) <= 3
        for backend, version in inflight:
            assert version in placement.resident(backend)
