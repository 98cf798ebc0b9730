"""Circuit breakers, the retry budget and failover picking, on a clock the test moves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.errors import error_response
from gateway.errors import NoHealthyBackend
from gateway.upstream.breaker import (
    BackendPicker,
    BreakerPolicy,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitState,
    RetryBudget,
    RetryBudgetPolicy,
    admit,
    failover_order,
    record,
)


class FakeClock:
    """A clock the test moves by hand (the code under test reads only this)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POLICY = BreakerPolicy(
    window_s=10, failure_rate=0.5, min_calls=10, consecutive_failures=5, cool_down_s=5.0
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(POLICY, clock)


def test_consecutive_failures_open_the_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()


def test_a_success_resets_the_run_of_failures(breaker: CircuitBreaker) -> None:
    for _ in range(4):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED


def test_a_failure_rate_over_enough_calls_opens_the_breaker(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    # Alternating: never 5 failures in a row, but half of the calls fail.
    for index in range(9):
        (breaker.record_failure if index % 2 else breaker.record_success)()
        clock.now += 0.5
    assert breaker.state is CircuitState.CLOSED  # 4 of 9: too few calls and under the rate
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN  # 5 of 10 calls failed


def test_failures_older_than_the_window_are_forgotten(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for ok in (False, True, False, True, False, True, False, False):
        (breaker.record_success if ok else breaker.record_failure)()
    clock.now += 11.0
    for _ in range(6):
        breaker.record_success()
    for _ in range(4):
        breaker.record_failure()
    # 4 failures of the last 10 calls; counting the expired ones it would be 9 of 18 (open).
    assert breaker.state is CircuitState.CLOSED


def test_after_the_cool_down_one_probe_goes_through_and_success_closes(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(5):
        breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()


def test_a_failed_probe_opens_the_breaker_for_another_cool_down(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(5):
        breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_a_cool_down(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(5):
        breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()  # this probe's answer is lost
    clock.now += 5.0
    assert breaker.allow()


def test_late_answers_while_open_change_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(5):
        breaker.record_failure()
    breaker.record_success()
    assert breaker.state is CircuitState.OPEN
    clock.now += 5.0
    assert breaker.allow()


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60))
def test_the_breaker_opens_only_on_enough_recent_failures_and_closes_only_on_a_probe_success(
    calls: list[tuple[bool, float]],
) -> None:
    snapshot, now = BreakerSnapshot(), 0.0
    since_reset: list[tuple[float, bool]] = []  # outcomes since the breaker last changed state
    for ok, step in calls:
        now += step
        allowed, snapshot = admit(snapshot, POLICY, now)
        if not allowed:
            continue
        before = snapshot.state
        since_reset.append((now, ok))
        snapshot = record(snapshot, POLICY, ok, now)
        if snapshot.state is CircuitState.OPEN and before is CircuitState.CLOSED:
            recent_failures = sum(
                not passed
                for at, passed in since_reset
                if math.floor(at) > math.floor(now) - POLICY.window_s
            )
            trailing = 0  # failures in a row, however long they took
            for _, passed in reversed(since_reset):
                if passed:
                    break
                trailing += 1
            assert (
                trailing >= POLICY.consecutive_failures
                or recent_failures >= POLICY.min_calls * POLICY.failure_rate
            )
        if snapshot.state is CircuitState.CLOSED and before is CircuitState.HALF_OPEN:
            assert ok
        if snapshot.state is not before:
            since_reset = []


def test_nonsensical_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerPolicy(failure_rate=0)
    with pytest.raises(ValueError, match="min_calls"):
        BreakerPolicy(min_calls=0)


# --- retry budget ---------------------------------------------------------------------------


def test_retries_are_capped_at_a_share_of_requests_plus_a_floor(clock: FakeClock) -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_per_s=0.5, window_s=10), clock)
    for _ in range(100):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 20 + 5  # 20% of 100, plus 0.5 a second over 10 s


def test_the_retry_budget_refills_as_the_window_moves(clock: FakeClock) -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_per_s=0.0, window_s=10), clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(10)) == 2
    clock.now += 10.0
    assert not budget.try_spend()  # the old requests left the window with the old retries
    for _ in range(5):
        budget.record_request()
    assert budget.try_spend()


def test_with_no_traffic_only_the_floor_is_available(clock: FakeClock) -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_per_s=0.3, window_s=10), clock)
    assert sum(budget.try_spend() for _ in range(10)) == 3


# --- picking and failover -------------------------------------------------------------------


def test_failover_order_rotates_and_keeps_every_backend() -> None:
    assert failover_order(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert failover_order([], 3) == []


def test_first_attempts_spread_over_healthy_backends(clock: FakeClock) -> None:
    picker = BackendPicker(["a", "b", "c"], POLICY, clock)
    assert [picker.pick() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_an_open_breaker_sends_traffic_to_the_others(clock: FakeClock) -> None:
    picker = BackendPicker(["a", "b"], POLICY, clock)
    for _ in range(5):
        picker.breakers["a"].record_failure()
    assert {picker.pick() for _ in range(10)} == {"b"}
    clock.now += 5.0
    assert "a" in {picker.pick() for _ in range(2)}  # the probe


def test_a_retry_fails_over_to_a_backend_not_yet_tried(clock: FakeClock) -> None:
    picker = BackendPicker(["a", "b", "c"], POLICY, clock)
    first = picker.pick()
    second = picker.pick(tried={first})
    third = picker.pick(tried={first, second})
    assert len({first, second, third}) == 3


def test_with_every_breaker_open_the_client_gets_503_with_the_nearest_retry(
    clock: FakeClock,
) -> None:
    picker = BackendPicker(["a", "b"], POLICY, clock)
    for backend in ("a", "b"):
        for _ in range(5):
            picker.breakers[backend].record_failure()
        clock.now += 2.0
    with pytest.raises(NoHealthyBackend) as raised:
        picker.pick()
    assert raised.value.retry_after_s == pytest.approx(1.0)  # a opened 4 s ago
    response = error_response(raised.value)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def test_when_every_backend_was_tried_there_is_nothing_to_fail_over_to(
    clock: FakeClock,
) -> None:
    picker = BackendPicker(["a", "b"], POLICY, clock)
    with pytest.raises(NoHealthyBackend):
        picker.pick(tried={"a", "b"})
