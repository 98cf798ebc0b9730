"""`turnout bench rollback`: how fast a rollback takes hold, here and on a second replica.

While a task assigns requests in a tight loop from the published table (as the request path
does), the rollback call is timed; every assignment made after the call returned is checked
(none may go to the candidate); and a second replica, sharing state through Redis, is watched
until its table shows the rollback. `measure_rollback` takes the objects to measure, so the
same measurement runs against a real gateway's controller and table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.rollouts.audit import AuditLog
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import Rollout, assign_arm, declare
from gateway.rollouts.state import RedisStateStore

ROUTE = "bench"
ASSIGNMENTS_AFTER_RETURN = 20_000
TIMEOUT_S = 10.0

Table = Callable[[], Mapping[str, Rollout]]


async def _until(condition: Callable[[], bool], what: str) -> float:
    """Spin (yielding to other tasks) until `condition`; return the time it first held."""
    deadline = time.perf_counter() + TIMEOUT_S
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0)
    return time.perf_counter()


async def measure_rollback(
    controller: RolloutController, route: str, table: Table, replica_table: Table | None
) -> dict[str, float]:
    """Roll back `route`'s running candidate; measure the call, stragglers and propagation."""
    returned = False
    assigned = after_return = to_candidate_after_return = 0
    draw = random.Random(0).random

    async def assign_requests() -> None:
        nonlocal assigned, after_return, to_candidate_after_return
        while after_return < ASSIGNMENTS_AFTER_RETURN:
            call_had_returned = returned  # read before the table, as a request would
            rollout = table()[route]
            arm = assign_arm(f"caller-{assigned}", rollout.rollout_id, rollout.weight_percent, draw)
            assigned += 1
            if call_had_returned:
                after_return += 1
                to_candidate_after_return += arm == "candidate"
            await asyncio.sleep(0)

    assigner = asyncio.create_task(assign_requests())
    await _until(lambda: assigned >= 1000, "the assigner to run")
    started = time.perf_counter()
    await controller.rollback(route, actor="bench", reason="turnout bench rollback")
    done = time.perf_counter()
    returned = True
    propagated = done
    if replica_table is not None:
        propagated = await _until(
            lambda: replica_table()[route].candidate is None, "the second replica"
        )
    await assigner
    return {
        "rollback_call_ms": (done - started) * 1000,
        "candidate_requests_after_rollback": to_candidate_after_return,
        "propagation_ms": (propagated - started) * 1000,
    }


async def _two_replicas(redis_url: str, folder: Path, rounds: int) -> list[dict[str, float]]:
    tables: list[Mapping[str, Rollout]] = [{}, {}]

    def publisher(replica: int) -> Callable[[Mapping[str, Rollout]], None]:
        def publish(published: Mapping[str, Rollout]) -> None:
            tables[replica] = published

        return publish

    controllers = [
        RolloutController(
            RedisStateStore(redis_url, prefix="turnout-bench"),
            AuditLog(folder / f"audit-{replica}.jsonl"),
            publisher(replica),
        )
        for replica in range(2)
    ]
    declared = {ROUTE: declare(ROUTE, f"{ROUTE}@v1")}
    for controller in controllers:
        await controller.open(declared)
    results = []
    try:
        for round_ in range(rounds):
            primary = controllers[0]
            await primary.start_rollout(
                ROUTE, f"{ROUTE}@c{round_}", mode="canary", steps=(50.0,), actor="bench"
            )
            await _until(lambda: tables[1][ROUTE].candidate is not None, "the canary on replica 2")
            results.append(
                await measure_rollback(primary, ROUTE, lambda: tables[0], lambda: tables[1])
            )
    finally:
        for controller in controllers:
            await controller.close()
    return results


def run_rollback_benchmark(redis_url: str | None = None, rounds: int = 5) -> dict[str, Any]:
    """Two replicas sharing state through Redis (started here unless `redis_url` is given)."""
    from gateway.bench.redis_server import running_redis_server

    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as folder:
        if redis_url is None:
            with running_redis_server() as server:
                results = asyncio.run(_two_replicas(server.url, Path(folder), rounds))
        else:
            results = asyncio.run(_two_replicas(redis_url, Path(folder), rounds))
    return {
        "rollback_call_ms": round(statistics.median(r["rollback_call_ms"] for r in results), 3),
        "candidate_requests_after_rollback": int(
            sum(r["candidate_requests_after_rollback"] for r in results)
        ),
        "propagation_ms": round(statistics.median(r["propagation_ms"] for r in results), 3),
        "rounds": rounds,
        "max_rollback_call_ms": round(max(r["rollback_call_ms"] for r in results), 3),
        "max_propagation_ms": round(max(r["propagation_ms"] for r in results), 3),
    }


def cmd_bench_rollback(args: argparse.Namespace) -> int:
    report = run_rollback_benchmark(args.redis_url, args.rounds)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rollback` on the `turnout bench` subparsers."""
    command = subparsers.add_parser(
        "rollback", help="rollback call time, stragglers and propagation to a second replica"
    )
    command.add_argument("--redis-url", help="an existing Redis (default: start redis-server)")
    command.add_argument("--rounds", type=int, default=5)
    command.add_argument("--json", action="store_true", help="one JSON object")
    command.set_defaults(run=cmd_bench_rollback)
