"""Each garbage collection's pause in the gateway process, observed as a metric."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from monitoring.metrics import GC_PAUSE

GcCallback = Callable[[str, dict[str, Any]], None]


def time_collections() -> Callable[[], None]:
    """Observe every collection's pause in `turnout_gc_pause_seconds` by generation, from now
    on; returns what stops it.

    A collection holds the event loop: every stream's next event, and every request, waits for
    it. With 256 streams relayed, the gateway's collections of the two younger generations came
    every few hundredths of a second, and the longest lasted over a millisecond
    (docs/performance.md), as long as the gaps the issue allows the gateway to add.
    """
    observers = [GC_PAUSE.labels(generation=str(g)) for g in range(3)]
    started = [0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            observers[info["generation"]].observe((time.perf_counter_ns() - started[0]) / 1e9)

    callback: GcCallback = timed
    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)
