"""The offline load bounds the fleet bench reports beside its policies."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bench.fleet import Scenario, request_sequence
from gateway.bench.fleet_bounds import (
    lfu_with_history_loads,
    load_bounds,
    lru_loads,
    optimal_loads,
)


def fewest_loads(sequence: tuple[str, ...], slots: int) -> int:
    """Every eviction choice tried: the true minimum, for short sequences."""

    @cache
    def best(index: int, resident: frozenset[str]) -> int:
        if index == len(sequence):
            return 0
        version = sequence[index]
        if version in resident:
            return best(index + 1, resident)
        if len(resident) < slots:
            return 1 + best(index + 1, resident | {version})
        return 1 + min(best(index + 1, (resident - {victim}) | {version}) for victim in resident)

    return best(0, frozenset())


@settings(max_examples=200, deadline=None)
@given(
    sequence=st.lists(st.sampled_from("abcde"), max_size=14).map(tuple),
    slots=st.integers(min_value=1, max_value=4),
)
def test_the_optimal_bound_is_the_true_minimum_and_below_every_online_policy(
    sequence: tuple[str, ...], slots: int
) -> None:
    optimal = optimal_loads(sequence, slots)
    assert optimal == fewest_loads(sequence, slots)
    assert len(set(sequence)) <= optimal
    assert optimal <= lfu_with_history_loads(sequence, slots)
    assert optimal <= lru_loads(sequence, slots)


def test_lfu_keeps_what_was_asked_for_most_even_after_evicting_it() -> None:
    # Two slots: a, asked for most, stays under LFU while b and c take turns in the other
    # slot; LRU evicts a once b and c were asked for after it.
    sequence = ["a", "a", "a", "b", "c", "a", "b", "a"]
    assert lfu_with_history_loads(sequence, 2) == 4  # a, b, c (evicts b), b (evicts c)
    assert lru_loads(sequence, 2) == 5  # c evicts a (least recent), a evicts b, b evicts c


def test_the_bench_traffic_bounds_are_ordered() -> None:
    sequence = request_sequence(Scenario(adapters=200, requests=1500))
    bounds = load_bounds(sequence, 32)
    assert bounds["slots"] == 32
    assert bounds["first_loads"] <= bounds["optimal"] < bounds["lfu_with_history"]
    assert bounds["optimal"] < bounds["lru"]
