"""Each garbage collection's pause in the gateway process, observed as a metric."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any

from prometheus_client import Histogram

from monitoring.metrics import GC_PAUSE

# Pauses waiting to be observed; past this many (no flush for a long while) the oldest go.
_PENDING = 4096
# How often the gateway observes the collections timed since (`CollectionTimer.flush_every`).
FLUSH_S = 0.25


class CollectionTimer:
    """Times every collection from `start` to `stop`, for `turnout_gc_pause_seconds`.

    A collection holds the event loop: every stream's next event, and every request, waits for
    it. With 256 streams relayed, the gateway collected every few hundredths of a second, and
    some collections lasted over a millisecond (docs/performance.md).

    The callback only appends to a deque: it may run in any thread, inside any code that
    allocates, and prometheus_client's values take a lock (one lock for all of them in the
    multiprocess mode that several workers use), so observing there could wait on a lock that
    the interrupted code holds, for ever. `flush` observes them, from the event loop.
    """

    def __init__(self, pauses: Histogram = GC_PAUSE) -> None:
        self._observers = [pauses.labels(generation=str(g)) for g in range(3)]
        self._pending: deque[tuple[int, int]] = deque(maxlen=_PENDING)
        self._started_ns = 0

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
        else:
            self._pending.append((info["generation"], time.perf_counter_ns() - self._started_ns))

    def start(self) -> None:
        gc.callbacks.append(self._timed)

    def stop(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        self.flush()

    def flush(self) -> None:
        """Observe the pauses timed since the last flush."""
        pending = self._pending
        while pending:
            generation, pause_ns = pending.popleft()
            self._observers[generation].observe(pause_ns / 1e9)

    async def flush_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush()
