"""Each garbage collection's pause is observed by generation, and the streaming bench reads the
pauses back from a gateway's `/metrics` text."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from gateway.bench.streaming import GcPauses, gc_pauses_in
from gateway.serving.gc_timing import time_collections


def _observed(generation: int) -> tuple[float, float]:
    labels = {"generation": str(generation)}
    count = REGISTRY.get_sample_value("turnout_gc_pause_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("turnout_gc_pause_seconds_sum", labels) or 0.0
    return count, total


def test_collections_are_timed_by_generation_until_stopped() -> None:
    before = [_observed(g) for g in range(3)]
    stop = time_collections()
    try:
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
    finally:
        stop()
    during = [_observed(g) for g in range(3)]
    assert during[1][0] >= before[1][0] + 1
    assert during[2][0] >= before[2][0] + 2
    assert during[2][1] > before[2][1]  # a full collection takes some time
    gc.collect(2)  # stopped: no longer observed
    assert _observed(2) == during[2]


def test_the_bench_sums_every_generation_and_counts_the_long_pauses() -> None:
    registry = CollectorRegistry()
    pauses = Histogram(
        "turnout_gc_pause_seconds", "pauses", ["generation"], registry=registry,
        buckets=(0.0005, 0.001, 0.002),
    )  # fmt: skip
    for generation, seconds in [("0", 0.0002), ("0", 0.0004), ("1", 0.0015), ("2", 0.004)]:
        pauses.labels(generation=generation).observe(seconds)
    read = gc_pauses_in(generate_latest(registry).decode())
    assert read.count == 4
    assert read.over_1ms == 2
    assert abs(read.seconds - 0.0061) < 1e-9
    assert read - GcPauses(1, 0.001, 1) == GcPauses(3, read.seconds - 0.001, 1)
    assert gc_pauses_in("# nothing\n") == GcPauses()
