"""`turnout bench rollback`: no request reaches the candidate after the call returns."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.bench.rollback import add_commands, measure_rollback
from gateway.rollouts.audit import AuditLog
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import Rollout, declare
from gateway.rollouts.state import FileStateStore


def test_bench_rollback_prints_the_three_numbers_and_sends_nothing_to_the_candidate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="turnout bench")
    add_commands(parser.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["rollback", "--json", "--rounds", "3"])
    assert args.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    print(report)
    assert report["candidate_requests_after_rollback"] == 0
    assert 0 < report["rollback_call_ms"] < 1000
    assert 0 < report["propagation_ms"] < 100


def test_the_measure_catches_a_table_published_after_the_call_returned(tmp_path: Path) -> None:
    # A deliberately broken controller, publishing 0.5 s late (longer than any rollback call),
    # must show candidate requests: the measure can fail.
    async def test() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        table: dict[str, Mapping[str, Rollout]] = {}
        first_published = asyncio.Event()

        def swap(published: Mapping[str, Rollout]) -> None:
            table["now"] = published
            first_published.set()

        def late_publish(published: Mapping[str, Rollout]) -> None:
            loop.call_later(0.5, swap, published)

        controller = RolloutController(
            FileStateStore(tmp_path / "state.json"),
            AuditLog(tmp_path / "audit.jsonl"),
            late_publish,
        )
        await controller.open({"r": declare("r", "r@v1", candidate="r@v2", steps=(50.0,))})
        await first_published.wait()
        try:
            return await measure_rollback(controller, "r", lambda: table["now"], None)
        finally:
            await controller.close()

    report = asyncio.run(asyncio.wait_for(test(), 30))
    assert report["candidate_requests_after_rollback"] > 0
