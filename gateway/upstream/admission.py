"""Admission control: bounded concurrency per backend, a bounded wait queue, and early shedding.

A request takes a slot of its backend for as long as it runs upstream. When every slot is
busy it waits in a first-come queue, at most `queue_timeout_s`; when the queue is full too it
is shed at once with 503 and a Retry-After, so latency stays bounded instead of growing with
the backlog. Retry-After estimates when the backlog will have drained: the queue ahead,
divided among the slots, times the recent time a slot is held.

Shadow calls (gateway/shadow) may borrow a free slot, never wait for one, and give it back at
once when a real request finds no other: the real request takes it and the shadow is cancelled
(`preempt`), so shadows are shed before anything real waits or is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from gateway.errors import Overloaded

# Weight of the newest hold time in the running average that Retry-After is estimated from.
_HOLD_SMOOTHING = 0.2
_MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class AdmissionLimits:
    """Per backend: requests in flight, requests waiting, and the longest wait."""

    max_concurrent: int = 64
    max_queued: int = 256
    queue_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queued < 0 or self.queue_timeout_s <= 0:
            raise ValueError("max_concurrent >= 1, max_queued >= 0, queue_timeout_s > 0")


class AdmissionGate:
    """The slots and the queue of one backend; use `async with gate.slot(): ...`."""

    def __init__(
        self, limits: AdmissionLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._mean_hold_s = 0.0
        # Slots lent to shadow calls: token -> how to cancel it (insertion order: oldest first).
        self._shadows: dict[object, Callable[[], object]] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_s(self) -> float:
        """When a request shed now could expect a free slot."""
        backlog = (len(self._waiters) + 1) / self.limits.max_concurrent
        return min(_MAX_RETRY_AFTER_S, max(1.0, backlog * self._mean_hold_s))

    def slot(self) -> Slot:
        """Hold a slot for the body of an `async with`; Overloaded (503) if none comes."""
        return Slot(self)

    def _held(self, started: float) -> None:
        held = self._clock() - started
        self._mean_hold_s += _HOLD_SMOOTHING * (held - self._mean_hold_s)
        self._release()

    def lend_to_shadow(self, cancel: Callable[[], object]) -> object | None:
        """A free slot for a shadow call (a token to `give_back`), or None: no slot is free
        now, or a real request waits. `cancel` is called if a real request needs the slot."""
        busy = self._in_flight + len(self._shadows)
        if busy >= self.limits.max_concurrent or self._waiters:
            return None
        token = object()
        self._shadows[token] = cancel
        return token

    def give_back(self, token: object) -> None:
        """A shadow call ended (or was preempted: then this does nothing)."""
        self._shadows.pop(token, None)

    @property
    def lent_to_shadows(self) -> int:
        return len(self._shadows)

    def _preempt_shadow(self) -> bool:
        if not self._shadows:
            return False
        newest = next(reversed(self._shadows))
        self._shadows.pop(newest)()
        return True

    async def _acquire(self) -> None:
        if self._in_flight + len(self._shadows) >= self.limits.max_concurrent:
            self._preempt_shadow()
        if self._in_flight + len(self._shadows) < self.limits.max_concurrent and not self._waiters:
            self._in_flight += 1
            return
        if len(self._waiters) >= self.limits.max_queued:
            raise Overloaded(
                "The backend is at capacity and its queue is full; retry later.",
                retry_after_s=self.retry_after_s(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.limits.queue_timeout_s):
                await waiter
        except TimeoutError:
            self._leave_queue(waiter)
            raise Overloaded(
                f"No capacity freed up within {self.limits.queue_timeout_s:g} s; retry later.",
                retry_after_s=self.retry_after_s(),
            ) from None
        except asyncio.CancelledError:
            self._leave_queue(waiter)
            raise

    def _leave_queue(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            # The slot was handed over just as the wait ended: pass it on, or it leaks.
            self._release()
        elif waiter in self._waiters:  # `_release` may already have skipped it
            self._waiters.remove(waiter)

    def _release(self) -> None:
        # A freed slot goes straight to the longest waiter, so a newcomer cannot jump the queue
        # (shadows never wait, and take no slot while someone does: it stays a real slot).
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1


class Slot:
    """One request's slot of a gate, from `async with` entry to exit.

    A class rather than `@asynccontextmanager`: it is entered on every request, and the
    generator machinery cost more than the admission logic itself.
    """

    __slots__ = ("_gate", "_started")

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate
        self._started = 0.0

    async def __aenter__(self) -> None:
        await self._gate._acquire()
        self._started = self._gate._clock()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._gate._held(self._started)


class BackendGates:
    """One `AdmissionGate` per backend, all with the same limits."""

    def __init__(self, backends: Iterable[str], limits: AdmissionLimits) -> None:
        self._gates = {backend: AdmissionGate(limits) for backend in backends}

    def __getitem__(self, backend: str) -> AdmissionGate:
        return self._gates[backend]
