"""Canary evidence pooled across replicas through a real Redis."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from gateway.bench.redis_server import RedisServer
from gateway.errors import StateStoreUnavailable
from gateway.rollouts.analysis import (
    DEFAULT_ALPHA,
    AnalysisSample,
    BinomialCounts,
    RolloutRecorder,
    analyse,
)
from gateway.rollouts.evidence import LocalEvidence, PooledEvidence
from gateway.rollouts.model import Rollout
from gateway.serving.embedded_vllm import free_port
from tests.support.rollouts import CANARY

FAILED = AnalysisSample(status=502, latency_s=0.1)
SERVED = AnalysisSample(status=200, latency_s=0.1)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def serve(recorder: RolloutRecorder, rollout: Rollout, arm: str, failed: int, served: int) -> None:
    for _ in range(failed):
        recorder.record(rollout, arm, FAILED)  # type: ignore[arg-type]
    for _ in range(served):
        recorder.record(rollout, arm, SERVED)  # type: ignore[arg-type]


def errors(snapshot: object) -> tuple[BinomialCounts, BinomialCounts]:
    counts = {s.name: s for s in snapshot.signals}["error"]  # type: ignore[attr-defined]
    return counts.stable, counts.candidate


def test_each_replica_judges_the_sum_and_catches_what_neither_share_shows(
    redis_server: RedisServer,
) -> None:
    async def test() -> None:
        one, two = RolloutRecorder(), RolloutRecorder()
        pooled = [PooledEvidence(r, redis_server.url, prefix="t1") for r in (one, two)]
        # Each replica saw half of the traffic: the candidate fails 4 of 40, stable 2 of 800.
        for recorder in (one, two):
            serve(recorder, CANARY, "candidate", failed=4, served=36)
            serve(recorder, CANARY, "stable", failed=2, served=798)
        try:
            local = await LocalEvidence(one).snapshot(CANARY)
            assert analyse(CANARY, local, now=0.0).action == "continue"
            for evidence in pooled:
                await evidence.snapshot(CANARY)
            for evidence in pooled:
                snapshot = await evidence.snapshot(CANARY)
                assert errors(snapshot) == (BinomialCounts(4, 1600), BinomialCounts(8, 80))
                assert snapshot.candidate_requests_by_step == {0: 80}
                assert analyse(CANARY, snapshot, now=0.0).action == "rollback"
        finally:
            for evidence in pooled:
                await evidence.close()

    run(test)


def test_a_look_adds_only_what_was_counted_since_the_last_one(redis_server: RedisServer) -> None:
    async def test() -> None:
        recorder = RolloutRecorder()
        evidence = PooledEvidence(recorder, redis_server.url, prefix="t2")
        try:
            serve(recorder, CANARY, "candidate", failed=1, served=9)
            for _ in range(3):
                assert errors(await evidence.snapshot(CANARY))[1] == BinomialCounts(1, 10)
            serve(recorder, CANARY, "candidate", failed=0, served=5)
            assert errors(await evidence.snapshot(CANARY))[1] == BinomialCounts(1, 15)
            # A new rollout on the route is judged on its own requests only.
            second = replace(CANARY, rollout_id="r2", revision=2)
            serve(recorder, second, "candidate", failed=0, served=3)
            assert errors(await evidence.snapshot(second))[1] == BinomialCounts(0, 3)
        finally:
            await evidence.close()

    run(test)


def test_unreachable_redis_stops_the_analysis_rather_than_judge_a_share() -> None:
    async def test() -> None:
        recorder = RolloutRecorder()
        serve(recorder, CANARY, "candidate", failed=5, served=5)
        evidence = PooledEvidence(recorder, f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(StateStoreUnavailable):
                await evidence.snapshot(CANARY)
        finally:
            await evidence.close()

    run(test)


def test_signals_nobody_has_counted_yet_still_share_alpha(redis_server: RedisServer) -> None:
    # Only the error signal has counts here (no schema, no refusal verdicts, latency still
    # calibrating); a pooled look must test all the signals, each at alpha / k, as a lone
    # replica does, or the chance of a false rollback grows.
    async def test() -> None:
        recorder = RolloutRecorder()
        evidence = PooledEvidence(recorder, redis_server.url, prefix="t6")
        serve(recorder, CANARY, "candidate", failed=3, served=7)
        serve(recorder, CANARY, "stable", failed=0, served=10)
        try:
            pooled = await evidence.snapshot(CANARY)
            local = await LocalEvidence(recorder).snapshot(CANARY)
        finally:
            await evidence.close()
        assert len(recorder.signal_names) == 4
        assert [s.name for s in pooled.signals] == list(recorder.signal_names)
        assert pooled == local
        threshold = analyse(CANARY, pooled, now=0.0).numbers["log_threshold"]
        assert threshold == round(math.log(4 / DEFAULT_ALPHA), 4)

    run(test)


def test_a_replica_with_no_requests_yet_tests_every_signal() -> None:
    snapshot = RolloutRecorder().snapshot(CANARY)
    names = [s.name for s in snapshot.signals]
    assert names == ["error", "schema_invalid", "refusal", "latency_p95"]
    assert all(s.candidate.trials == s.stable.trials == 0 for s in snapshot.signals)
