"""Backend `/metrics` readings shared through a real Redis: one read per backend and interval
for all workers, the others take the published reading; alone when Redis is down."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bench.redis_server import RedisServer
from gateway.serving.embedded_vllm import free_port
from gateway.upstream.backend_metrics import BackendMetrics, BackendReading, read_backend
from gateway.upstream.shared_readings import SharedReadings, decode_reading, encode_reading

pytestmark = pytest.mark.anyio
PAGE = (Path(__file__).parent / "vllm_metrics.txt").read_bytes()
_prefixes = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Reply:
    status: int
    body: bytes


class CountingBackend:
    """A backend's `/metrics`, counting its reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def get(self, backend: str, path: str, timeout_s: float) -> Reply:
        self.reads += 1
        await asyncio.sleep(0.005)
        return Reply(200, PAGE)


def workers(url: str, count: int, interval_s: float) -> list[BackendMetrics]:
    prefix = f"t{next(_prefixes)}"
    return [
        BackendMetrics(["b0"], interval_s=interval_s, exchange=SharedReadings(url, prefix=prefix))
        for _ in range(count)
    ]


async def close(*watchers: BackendMetrics) -> None:
    for watcher in watchers:
        await watcher.close()


async def test_three_workers_read_a_backend_once_per_interval_and_share_it(
    redis_server: RedisServer,
) -> None:
    backend = CountingBackend()
    three = workers(redis_server.url, 3, interval_s=0.2)
    try:
        for _ in range(5):  # five intervals: every worker scrapes in each
            for watcher in three:
                assert await watcher.scrape(backend, "b0")
            await asyncio.sleep(0.2)
        assert backend.reads == 5
        expected = read_backend(PAGE.decode())
        assert expected.max_lora == 4  # the page was read: not an empty reading
        for watcher in three:
            assert watcher.latest("b0") == expected
    finally:
        await close(*three)


async def test_each_worker_reads_alone_when_redis_cannot_be_reached() -> None:
    backend = CountingBackend()
    two = workers(f"redis://127.0.0.1:{free_port()}/0", 2, interval_s=0.2)
    try:
        for watcher in two:
            assert await watcher.scrape(backend, "b0")
        assert backend.reads == 2
        assert all(watcher.latest("b0") is not None for watcher in two)
    finally:
        await close(*two)


async def test_a_published_reading_past_the_staleness_window_is_not_used(
    redis_server: RedisServer,
) -> None:
    now = [1000.0]
    prefix = f"t{next(_prefixes)}"
    reader = SharedReadings(redis_server.url, prefix=prefix, clock=lambda: now[0])
    other = SharedReadings(redis_server.url, prefix=prefix, clock=lambda: now[0])
    try:
        reading = read_backend(PAGE.decode())
        await reader.publish("b0", reading, keep_s=60)
        now[0] += 2.0
        assert await other.fetch("b0", max_age_s=3.0) == (reading, 2.0)
        now[0] += 2.0
        assert await other.fetch("b0", max_age_s=3.0) is None
    finally:
        await reader.close()
        await other.close()


names = st.none() | st.frozensets(st.text(min_size=1, max_size=8).filter(lambda s: "," not in s))
counts = st.none() | st.integers(min_value=0, max_value=10**6)


@given(
    reading=st.builds(BackendReading, counts, counts, counts, names, names),
    at=st.floats(min_value=0, max_value=2e9),
)
def test_a_reading_survives_its_trip_through_redis_unchanged(
    reading: BackendReading, at: float
) -> None:
    assert decode_reading(encode_reading(reading, at)) == (reading, at)
