"""Garbage collection held off while a config's objects are built in bulk."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside (unless it was already off, it is back on after).

    Building 10,000 routes allocates millions of objects, none of them garbage, and each
    collection pass walks them all: a config check plus table build took 1.4 s with collection
    and 1.1 s without (`turnout bench fleet-scale`). What was allocated is collected as usual
    afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
