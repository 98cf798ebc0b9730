"""Rollout state stores: a file that survives restarts, and Redis shared by replicas."""

from __future__ import annotations

import asyncio
import operator
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.bench.redis_server import RedisServer
from gateway.errors import RolloutConflict, StateStoreUnavailable
from gateway.rollouts.model import Rollout
from gateway.rollouts.state import FileStateStore, RedisStateStore
from tests.support.rollouts import CANARY


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.001)


def store_up() -> float | None:
    return REGISTRY.get_sample_value("turnout_state_store_up")


def test_file_store_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rollouts.json"

    async def test() -> None:
        first = FileStateStore(path)
        assert await first.open(lambda r: None) == {}
        await first.save(CANARY)
        stepped = replace(CANARY, step_index=1, weight_percent=50.0, revision=2)
        await first.save(stepped)
        await first.close()
        restarted = FileStateStore(path)
        assert await restarted.open(lambda r: None) == {"triage": stepped}

    run(test)
    assert [p.name for p in path.parent.iterdir()] == ["rollouts.json"]  # no temporary left


def test_file_store_refuses_a_lost_update(tmp_path: Path) -> None:
    async def test() -> None:
        store = FileStateStore(tmp_path / "rollouts.json")
        await store.open(lambda r: None)
        await store.save(CANARY)
        with pytest.raises(RolloutConflict):
            await store.save(replace(CANARY, weight_percent=0.0))

    run(test)


def test_a_change_on_one_replica_reaches_the_other_within_100_ms(
    redis_server: RedisServer,
) -> None:
    delays_ms: list[float] = []

    async def test() -> None:
        seen: dict[int, float] = {}
        one, two = RedisStateStore(redis_server.url, "p1"), RedisStateStore(redis_server.url, "p1")
        await one.open(lambda r: None)
        await two.open(lambda r: seen.setdefault(r.revision, time.perf_counter()))
        try:
            for revision in range(1, 31):
                saved_at = time.perf_counter()
                await one.save(replace(CANARY, revision=revision, weight_percent=revision))
                arrived = partial(operator.contains, seen, revision)
                await until(arrived, 1.0, f"revision {revision} on replica two")
                delays_ms.append((seen[revision] - saved_at) * 1000)
        finally:
            await one.close()
            await two.close()

    run(test)
    delays_ms.sort()
    print(
        f"\npropagation: median {statistics.median(delays_ms):.2f} ms, max {delays_ms[-1]:.2f} ms"
    )
    assert delays_ms[-1] < 100


def test_a_late_replica_loads_the_shared_state(redis_server: RedisServer) -> None:
    async def test() -> None:
        early = RedisStateStore(redis_server.url, "p2")
        await early.open(lambda r: None)
        await early.save(CANARY)
        late = RedisStateStore(redis_server.url, "p2")
        assert await late.open(lambda r: None) == {"triage": CANARY}
        with pytest.raises(RolloutConflict, match="another replica"):
            await late.save(replace(CANARY, weight_percent=50.0))  # same revision: lost update
        await early.close()
        await late.close()

    run(test)


def test_a_replica_that_loses_redis_reports_degraded_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(str(tmp_path))
    server.start()

    async def test() -> None:
        changes: list[Rollout] = []
        store = RedisStateStore(server.url, "p3")
        writer = RedisStateStore(server.url, "p3")
        try:
            await store.open(changes.append)
            await writer.open(lambda r: None)
            assert store.up
            assert store_up() == 1
            server.stop()
            with pytest.raises(StateStoreUnavailable):
                await store.save(CANARY)
            await until(lambda: not store.up, 5, "the store to notice Redis is gone")
            assert store_up() == 0
            server.start()
            await until(lambda: store.up, 10, "the store to reconnect")
            assert store_up() == 1
            await until(lambda: writer.up, 10, "the writer to reconnect")
            await writer.save(CANARY)
            await until(lambda: changes == [CANARY], 1, "changes to flow again")
        finally:
            await store.close()
            await writer.close()

    try:
        run(test)
    finally:
        server.stop()


def test_a_replica_started_without_redis_starts_empty_and_degraded(tmp_path: Path) -> None:
    server = RedisServer(str(tmp_path))  # never started: nothing listens on its port

    async def test() -> None:
        store = RedisStateStore(server.url, "p4")
        assert await store.open(lambda r: None) == {}
        assert not store.up
        assert store_up() == 0
        await store.close()

    run(test)
