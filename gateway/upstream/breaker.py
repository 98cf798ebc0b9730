"""Fault tolerance per backend: circuit breakers, a retry budget, and failover picking.

A breaker is closed while its backend answers. Too many failures in a sliding window (a
failure rate over enough calls, or a run of consecutive failures) open it: requests skip that
backend. After a cool-down it lets one probe through (half-open): success closes it, failure
opens it again. The state changes are pure functions of a frozen snapshot and the time, so the
rules are tested without a clock; `CircuitBreaker` only keeps the current snapshot.

Retries are allowed only within a budget, a share of recent requests plus a small floor per
second, so that retries cannot multiply the load on a backend that is already failing.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from gateway.errors import NoHealthyBackend


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open."""

    window_s: int = 10
    failure_rate: float = 0.5
    min_calls: int = 10
    consecutive_failures: int = 5
    cool_down_s: float = 5.0

    def __post_init__(self) -> None:
        if self.window_s < 1 or not 0 < self.failure_rate <= 1 or self.cool_down_s <= 0:
            raise ValueError("window_s >= 1, 0 < failure_rate <= 1, cool_down_s > 0")
        if self.min_calls < 1 or self.consecutive_failures < 1:
            raise ValueError("min_calls and consecutive_failures must be at least 1")


@dataclass(frozen=True)
class SecondCounts:
    """Outcomes of the calls that finished in one whole second."""

    second: int
    ok: int = 0
    failed: int = 0


@dataclass(frozen=True)
class BreakerSnapshot:
    """A breaker's whole state at one moment."""

    state: CircuitState = CircuitState.CLOSED
    window: tuple[SecondCounts, ...] = ()
    consecutive_failures: int = 0
    opened_at_s: float = 0.0
    probe_at_s: float | None = None


def _counted(
    window: tuple[SecondCounts, ...], ok: bool, now_s: float, window_s: int
) -> tuple[SecondCounts, ...]:
    second = math.floor(now_s)
    if window and window[-1].second == second:  # the common case: only the last second moves
        last = window[-1]
        return (*window[:-1], SecondCounts(second, last.ok + ok, last.failed + (not ok)))
    kept = [counts for counts in window if counts.second > second - window_s]
    return (*kept, SecondCounts(second, int(ok), int(not ok)))


def _open(now_s: float) -> BreakerSnapshot:
    return BreakerSnapshot(state=CircuitState.OPEN, opened_at_s=now_s)


def admit(
    snapshot: BreakerSnapshot, policy: BreakerPolicy, now_s: float
) -> tuple[bool, BreakerSnapshot]:
    """Whether a request may go to the backend now, and the snapshot after deciding."""
    if snapshot.state is CircuitState.CLOSED:
        return True, snapshot
    if snapshot.state is CircuitState.OPEN:
        if now_s - snapshot.opened_at_s < policy.cool_down_s:
            return False, snapshot
        return True, replace(snapshot, state=CircuitState.HALF_OPEN, probe_at_s=now_s)
    # Half-open: one probe at a time; a probe that never reported back is replaced after a
    # cool-down, so a lost answer cannot keep the breaker half-open for ever.
    if snapshot.probe_at_s is not None and now_s - snapshot.probe_at_s < policy.cool_down_s:
        return False, snapshot
    return True, replace(snapshot, probe_at_s=now_s)


def record(
    snapshot: BreakerSnapshot, policy: BreakerPolicy, ok: bool, now_s: float
) -> BreakerSnapshot:
    """The snapshot after a call to the backend succeeded (`ok`) or failed."""
    if snapshot.state is CircuitState.HALF_OPEN:
        return BreakerSnapshot() if ok else _open(now_s)
    if snapshot.state is CircuitState.OPEN:
        return snapshot  # a late answer to a call made before the breaker opened
    window = _counted(snapshot.window, ok, now_s, policy.window_s)
    if ok:  # a success lowers the failure rate: it never opens the breaker
        return BreakerSnapshot(window=window)
    consecutive = snapshot.consecutive_failures + 1
    calls = sum(c.ok + c.failed for c in window)
    failures = sum(c.failed for c in window)
    if consecutive >= policy.consecutive_failures or (
        calls >= policy.min_calls and failures >= policy.failure_rate * calls
    ):
        return _open(now_s)
    return replace(snapshot, window=window, consecutive_failures=consecutive)


def retry_after_s(snapshot: BreakerSnapshot, policy: BreakerPolicy, now_s: float) -> float:
    """Seconds until the breaker will let a request (a probe) through; 0 if it would now."""
    if snapshot.state is CircuitState.CLOSED:
        return 0.0
    since = snapshot.opened_at_s if snapshot.state is CircuitState.OPEN else snapshot.probe_at_s
    return 0.0 if since is None else max(0.0, policy.cool_down_s - (now_s - since))


class CircuitBreaker:
    """The breaker of one backend: ask `allow()` before a call, then record how it went."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._snapshot = BreakerSnapshot()

    @property
    def state(self) -> CircuitState:
        return self._snapshot.state

    def allow(self) -> bool:
        allowed, self._snapshot = admit(self._snapshot, self.policy, self._clock())
        return allowed

    def record_success(self) -> None:
        self._snapshot = record(self._snapshot, self.policy, True, self._clock())

    def record_failure(self) -> None:
        self._snapshot = record(self._snapshot, self.policy, False, self._clock())

    def retry_after_s(self) -> float:
        return retry_after_s(self._snapshot, self.policy, self._clock())


@dataclass(frozen=True)
class RetryBudgetPolicy:
    """Retries allowed: `ratio` of the requests in the window plus `min_per_s` every second."""

    ratio: float = 0.2
    min_per_s: float = 1.0
    window_s: int = 10


@dataclass
class _PerSecond:
    counts: deque[list[int]] = field(default_factory=deque)

    def add(self, second: int) -> None:
        if self.counts and self.counts[-1][0] == second:
            self.counts[-1][1] += 1
        else:
            self.counts.append([second, 1])

    def total(self, second: int, window_s: int) -> int:
        while self.counts and self.counts[0][0] <= second - window_s:
            self.counts.popleft()
        return sum(count for _, count in self.counts)


class RetryBudget:
    """Counts requests and retries over a sliding window; `try_spend` says if one more fits."""

    def __init__(
        self, policy: RetryBudgetPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._requests = _PerSecond()
        self._retries = _PerSecond()

    def record_request(self) -> None:
        """Call once per client request (not per attempt)."""
        self._requests.add(math.floor(self._clock()))

    def try_spend(self) -> bool:
        """True, and the retry is counted, if the budget has room for one more retry."""
        second = math.floor(self._clock())
        window = self.policy.window_s
        allowed = (
            self.policy.ratio * self._requests.total(second, window)
            + self.policy.min_per_s * window
        )
        if self._retries.total(second, window) + 1 > allowed:
            return False
        self._retries.add(second)
        return True


def failover_order(backends: Sequence[str], start: int) -> list[str]:
    """The backends rotated to begin at `start`: spreads first tries, keeps a fixed fallback."""
    if not backends:
        return []
    start %= len(backends)
    return [*backends[start:], *backends[:start]]


class BackendPicker:
    """Chooses the backend for an attempt: round-robin over those whose breaker allows it."""

    def __init__(
        self,
        backends: Sequence[str],
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("a picker needs at least one backend")
        self.backends = list(backends)
        self.policy = policy
        self.breakers: Mapping[str, CircuitBreaker] = {
            backend: CircuitBreaker(policy, clock) for backend in self.backends
        }
        self._turn = itertools.count()

    def pick(
        self, tried: Collection[str] = (), eligible: Callable[[str], bool] = lambda _: True
    ) -> str:
        """An `eligible` backend not in `tried` whose breaker admits a call; NoHealthyBackend
        (503) if none.

        Each call starts one further along the rotation, so first attempts spread over the
        backends; a retry passes the backends it tried and so fails over to another.
        """
        for backend in failover_order(self.backends, next(self._turn)):
            if backend not in tried and eligible(backend) and self.breakers[backend].allow():
                return backend
        waits = [self.breakers[b].retry_after_s() for b in self.backends if b not in tried]
        raise NoHealthyBackend(
            "No backend is available right now; retry later.",
            retry_after_s=min(waits, default=self.policy.cool_down_s),
        )
