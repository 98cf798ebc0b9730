"""Garbage collection held off while a config's objects are built in bulk."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside (unless it was already off, it is back on after).

    A config of 10,000 routes, its manifests and its table allocate millions of objects, none
    of them garbage, and each collection pass walks all that survived: loading, checking and
    building took 0.8 s of CPU paused against 1.0 s collecting (median of 4 each, one process).
    What was allocated is collected as usual afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
