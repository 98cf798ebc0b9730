"""The budget of answers a second that get refusal, drift and capture checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.outcomes.recorder import SignalBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_checks_are_spread_over_the_second_not_spent_at_its_start() -> None:
    clock = Clock()
    budget = SignalBudget(200, clock)
    burst = sum(budget.take() for _ in range(200))
    assert burst == 10  # a twentieth of a second's worth at once, not all 200
    clock.now += 0.006  # one refills every 5 ms
    assert budget.take()
    assert not budget.take()


@given(st.lists(st.floats(0, 0.05), min_size=1, max_size=400), st.integers(1, 500))
def test_no_second_gets_more_than_its_rate_and_one_burst(gaps: list[float], rate: int) -> None:
    clock = Clock()
    budget = SignalBudget(rate, clock)
    taken_at = []
    for gap in gaps:
        clock.now += gap
        if budget.take():
            taken_at.append(clock.now)
    for start in taken_at:
        in_a_second = sum(1 for t in taken_at if start <= t < start + 1)
        assert in_a_second <= rate + max(1, rate / 20)


def test_a_steady_flood_gets_the_configured_rate() -> None:
    clock = Clock()
    budget = SignalBudget(100, clock)
    taken = 0
    for _ in range(10_000):  # 10,000 answers over 10 s
        clock.now += 0.001
        taken += budget.take()
    assert 1000 <= taken <= 1000 + 5
