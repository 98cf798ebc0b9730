"""Each garbage collection's pause is observed by generation, and the streaming bench reads the
pauses back from a gateway's `/metrics` text."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.bench.streaming import GcPauses, gc_pauses_in
from gateway.serving.gc_timing import CollectionTimer


def _pauses() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    pauses = Histogram(
        "turnout_gc_pause_seconds", "pauses", ["generation"], registry=registry,
        buckets=(0.0005, 0.001, 0.002),
    )  # fmt: skip
    return registry, pauses


def _observed(registry: CollectorRegistry) -> list[tuple[float, float]]:
    def sample(name: str, generation: int) -> float:
        value = registry.get_sample_value(name, {"generation": str(generation)})
        return value or 0.0

    return [
        (sample("turnout_gc_pause_seconds_count", g), sample("turnout_gc_pause_seconds_sum", g))
        for g in range(3)
    ]


def test_collections_are_timed_by_generation_and_observed_only_at_a_flush() -> None:
    registry, pauses = _pauses()
    timer = CollectionTimer(pauses)
    timer.start()
    try:
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
        # Nothing is observed inside a collection: the metric's lock may be held by the code
        # that the collection interrupted (one lock for every value with several workers).
        assert _observed(registry) == [(0.0, 0.0)] * 3
        timer.flush()
        flushed = _observed(registry)
        assert flushed[1][0] >= 1
        assert flushed[2][0] >= 2
        assert flushed[2][1] > 0  # a full collection takes some time
    finally:
        timer.stop()
    gc.collect(2)  # stopped: no longer timed
    timer.flush()
    assert _observed(registry)[2][0] == flushed[2][0]


def test_the_bench_sums_every_generation_and_counts_the_long_pauses() -> None:
    registry, pauses = _pauses()
    for generation, seconds in [("0", 0.0002), ("0", 0.0004), ("1", 0.0015), ("2", 0.004)]:
        pauses.labels(generation=generation).observe(seconds)
    read = gc_pauses_in(generate_latest(registry).decode())
    assert read.count == 4
    assert read.over_1ms == 2
    assert abs(read.seconds - 0.0061) < 1e-9
    assert read - GcPauses(1, 0.001, 1) == GcPauses(3, read.seconds - 0.001, 1)
    assert gc_pauses_in("# nothing\n") == GcPauses()
