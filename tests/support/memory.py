"""What an object costs in memory: the Python allocations still held once it is built."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def built_and_held(build: Callable[[], T]) -> tuple[T, int]:
    """`build()`'s result, and the bytes of Python allocations held after it (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
