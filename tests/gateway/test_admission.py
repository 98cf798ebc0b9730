"""Admission control with real asyncio tasks: slots, the wait queue, shedding and deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.api.errors import error_response
from gateway.errors import Overloaded
from gateway.upstream.admission import AdmissionGate, AdmissionLimits, BackendGates

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Yield to the loop until `condition` holds, failing with `what` after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            # Conditions on the gate's counters have no event to wait on: poll them.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Held:
    """A request that holds its slot until the test releases it."""

    def __init__(self, gate: AdmissionGate) -> None:
        self.gate = gate
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.gate.slot():
            self.entered.set()
            await self.release.wait()


async def test_requests_up_to_the_limit_run_at_once(anyio_backend: str) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=3, max_queued=2, queue_timeout_s=5))
    held = [Held(gate) for _ in range(3)]
    await until(lambda: all(h.entered.is_set() for h in held), "three running")
    assert (gate.in_flight, gate.queued) == (3, 0)
    for h in held:
        h.release.set()
    await asyncio.gather(*(h.task for h in held))
    assert gate.in_flight == 0


async def test_the_queue_is_served_first_come_first_served(anyio_backend: str) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=3, queue_timeout_s=5))
    first = Held(gate)
    await first.entered.wait()
    waiting = [Held(gate) for _ in range(3)]
    await until(lambda: gate.queued == 3, "three queued")
    order: list[int] = []
    first.release.set()
    for _ in range(3):
        await until(lambda: any(h.entered.is_set() and not h.release.is_set() for h in waiting),
                    "the next one running")  # fmt: skip
        running = next(i for i, h in enumerate(waiting) if h.entered.is_set() and i not in order)
        order.append(running)
        waiting[running].release.set()
        await waiting[running].task
    assert order == [0, 1, 2]
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_past_the_queue_limit_requests_are_shed_at_once_with_retry_after(
    anyio_backend: str,
) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=2, max_queued=1, queue_timeout_s=30))
    held = [Held(gate) for _ in range(3)]  # two run, one waits
    await until(lambda: gate.queued == 1, "one queued")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded) as raised:
        async with gate.slot():
            pytest.fail("a request past the queue limit must not run")
    assert loop.time() - started < 1.0  # shed now, not after the 30 s queue deadline
    response = error_response(raised.value)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    for h in held:
        h.release.set()
    await asyncio.gather(*(h.task for h in held))
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_request_waiting_past_the_deadline_gets_503_and_leaves_the_queue(
    anyio_backend: str,
) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=5, queue_timeout_s=0.05))
    blocker = Held(gate)
    await blocker.entered.wait()
    with pytest.raises(Overloaded, match=r"within 0\.05 s"):
        async with gate.slot():
            pytest.fail("no slot was free")
    assert gate.queued == 0
    blocker.release.set()
    await blocker.task
    async with gate.slot():  # the gate is whole again
        assert gate.in_flight == 1


async def test_a_cancelled_waiter_neither_runs_nor_leaks_a_slot(anyio_backend: str) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=5, queue_timeout_s=5))
    blocker = Held(gate)
    await blocker.entered.wait()
    gone = Held(gate)
    await until(lambda: gate.queued == 1, "queued")
    gone.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    assert not gone.entered.is_set()
    blocker.release.set()
    await blocker.task
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_slot_handed_over_as_the_waiter_is_cancelled_passes_on(
    anyio_backend: str,
) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=5, queue_timeout_s=5))
    go = asyncio.Event()
    unlucky: list[Held] = []

    async def blocker() -> None:
        async with gate.slot():
            await go.wait()
        # Same step of the loop as the hand-over: `unlucky` owns the slot but has not run yet.
        unlucky[0].task.cancel()

    blocking = asyncio.create_task(blocker())
    await until(lambda: gate.in_flight == 1, "the blocker running")
    unlucky.append(Held(gate))
    next_in_line = Held(gate)
    await until(lambda: gate.queued == 2, "two queued")
    go.set()
    await blocking
    with pytest.raises(asyncio.CancelledError):
        await unlucky[0].task
    assert not unlucky[0].entered.is_set()
    await until(next_in_line.entered.is_set, "the next waiter running")
    next_in_line.release.set()
    await next_in_line.task
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_failing_request_gives_its_slot_back(anyio_backend: str) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=0, queue_timeout_s=1))
    with pytest.raises(RuntimeError):
        async with gate.slot():
            raise RuntimeError("upstream broke")
    async with gate.slot():
        assert gate.in_flight == 1


async def test_retry_after_grows_with_the_backlog_and_the_hold_time(
    anyio_backend: str,
) -> None:
    now = [0.0]
    gate = AdmissionGate(
        AdmissionLimits(max_concurrent=2, max_queued=10, queue_timeout_s=5), clock=lambda: now[0]
    )
    for _ in range(20):  # requests that each hold a slot for 4 s of the gate's clock
        async with gate.slot():
            now[0] += 4.0
    short_queue = gate.retry_after_s()
    held = [Held(gate) for _ in range(8)]
    await until(lambda: gate.queued == 6, "six queued")
    assert gate.retry_after_s() > short_queue >= 1.0
    assert gate.retry_after_s() == pytest.approx((6 + 1) / 2 * 4.0, rel=0.05)
    for h in held:
        h.release.set()
    await asyncio.gather(*(h.task for h in held))


async def test_many_concurrent_tasks_never_exceed_the_limit(anyio_backend: str) -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent=4, max_queued=200, queue_timeout_s=10))
    running = 0
    peak = 0

    async def request() -> None:
        nonlocal running, peak
        async with gate.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)  # yield so that others contend for the slots
            running -= 1

    work: list[Awaitable[None]] = [request() for _ in range(200)]
    await asyncio.gather(*work)
    assert peak == 4
    assert (gate.in_flight, gate.queued) == (0, 0)


def test_each_backend_has_its_own_gate() -> None:
    gates = BackendGates(["http://a:1", "http://b:1"], AdmissionLimits(max_concurrent=1))
    assert gates["http://a:1"] is not gates["http://b:1"]
    assert gates["http://a:1"].limits.max_concurrent == 1


def test_nonsensical_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        AdmissionLimits(max_concurrent=0)
