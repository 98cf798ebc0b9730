"""The rollout controller: publish before returning, persist, audit, meter, act on analysis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import REGISTRY

from gateway.errors import RolloutConflict, RouteNotFound, StateStoreUnavailable
from gateway.rollouts.analysis import RolloutAdvice
from gateway.rollouts.audit import AuditLog, read_audit_log
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import Rollout, assign_arm, declare
from gateway.rollouts.state import FileStateStore, RedisStateStore
from gateway.serving.embedded_vllm import free_port

DECLARED = {
    "triage": declare("triage", "triage@v1"),
    "chat": declare("chat", None),
}


class Harness:
    """A controller over a real state file and audit log; records every published table."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.published: list[Mapping[str, Rollout]] = []
        self.now = 1000.0
        self.controller = RolloutController(
            FileStateStore(folder / "state.json"),
            AuditLog(folder / "audit.jsonl"),
            self.published.append,
            clock=lambda: self.now,
        )

    @property
    def audit(self) -> list[dict[str, object]]:
        return read_audit_log(self.folder / "audit.jsonl")


def run(folder: Path, test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness(folder)
        await harness.controller.open(DECLARED)
        try:
            await test(harness)
        finally:
            await harness.controller.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_rollback_is_published_before_the_call_returns(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.controller.start_rollout(
            "triage", "triage@v2", mode="canary", steps=(50, 100), actor="alice"
        )
        rollout = h.published[-1]["triage"]
        callers = [f"user-{i}" for i in range(200)]
        on_candidate = [
            k for k in callers if assign_arm(k, rollout.rollout_id, 50, lambda: 0.0) == "candidate"
        ]
        assert on_candidate
        await h.controller.rollback("triage", actor="alice", reason="bad answers")
        table = h.published[-1]["triage"]  # what the very next request reads
        assert table.candidate is None
        assert all(
            assign_arm(k, table.rollout_id, table.weight_percent, lambda: 0.0) == "stable"
            for k in callers
        )
        assert sample("turnout_rollout_weight_percent", route="triage", arm="candidate") == 0
        assert sample("turnout_rollout_weight_percent", route="triage", arm="stable") == 100

    run(tmp_path, test)


def test_every_change_is_audited_with_who_what_and_why(tmp_path: Path) -> None:
    before = (
        sample(
            "turnout_rollout_decisions_total", route="triage", decision="pause", cause="operator"
        )
        or 0
    )

    async def test(h: Harness) -> None:
        await h.controller.start_rollout("triage", "triage@v2", mode="ab", steps=(30,), actor="bob")
        await h.controller.pause("triage", actor="bob", reason="holiday")
        await h.controller.resume("triage", actor="carol")
        await h.controller.promote("triage", actor="carol", reason="v2 wins the A/B test")
        records = h.audit
        assert [(r["decision"], r["actor"]) for r in records] == [
            ("start", "bob"),
            ("pause", "bob"),
            ("resume", "carol"),
            ("promote", "carol"),
        ]
        assert records[1]["reason"] == "holiday"
        assert records[0]["weight_after"] == 30
        assert str(records[0]["time"]).startswith("1970-01-01T00:16:40")
        assert h.controller.get("triage").stable == "triage@v2"

    run(tmp_path, test)
    after = sample(
        "turnout_rollout_decisions_total", route="triage", decision="pause", cause="operator"
    )
    assert after == before + 1


def test_runtime_state_survives_a_restart_while_the_config_is_unchanged(tmp_path: Path) -> None:
    async def first(h: Harness) -> None:
        await h.controller.start_rollout(
            "triage", "triage@v2", mode="canary", steps=(5, 25, 100), actor="alice"
        )
        verdict = RolloutAdvice(
            "triage", h.controller.get("triage").rollout_id, "promote_step", "held"
        )
        assert await h.controller.record_verdict(verdict) is not None

    async def second(h: Harness) -> None:
        rollout = h.controller.get("triage")
        assert (rollout.candidate, rollout.weight_percent, rollout.step_index) == (
            "triage@v2",
            25,
            1,
        )
        assert h.published[-1]["triage"] == rollout

    run(tmp_path, first)
    run(tmp_path, second)


def test_a_changed_declaration_replaces_runtime_state_and_is_audited(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.controller.start_rollout(
            "triage", "triage@v2", mode="canary", steps=(5,), actor="a"
        )
        await h.controller.apply_config(
            {
                **DECLARED,
                "triage": declare("triage", "triage@v1", candidate="triage@v3", steps=(10, 100)),
            }
        )
        rollout = h.controller.get("triage")
        assert (rollout.candidate, rollout.weight_percent) == ("triage@v3", 10)
        assert h.audit[-1]["cause"] == "config"
        assert h.audit[-1]["decision"] == "start"

    run(tmp_path, test)


def test_analysis_rolls_a_canary_back_but_only_advises_on_an_ab_split(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.controller.start_rollout("triage", "triage@v2", mode="ab", steps=(50,), actor="a")
        ab = h.controller.get("triage")
        verdict = RolloutAdvice(
            "triage", ab.rollout_id, "rollback", "errors", MappingProxyType({"x": 1.0})
        )
        assert await h.controller.record_verdict(verdict) is None
        assert h.controller.get("triage").candidate == "triage@v2"
        assert h.controller.latest_verdict("triage") == verdict  # per-arm results for the A/B
        await h.controller.rollback("triage", actor="a")

        await h.controller.start_rollout(
            "triage", "triage@v3", mode="canary", steps=(5,), actor="a"
        )
        canary = h.controller.get("triage")
        stale = RolloutAdvice("triage", ab.rollout_id, "rollback", "old rollout")
        assert await h.controller.record_verdict(stale) is None
        verdict = RolloutAdvice(
            "triage", canary.rollout_id, "rollback", "errors", MappingProxyType({"e": 9.5})
        )
        decision = await h.controller.record_verdict(verdict)
        assert decision is not None
        assert (decision.cause, decision.actor) == ("analysis", "analysis")
        assert h.controller.get("triage").candidate is None
        assert h.audit[-1]["numbers"] == {"e": 9.5}

    run(tmp_path, test)


def test_a_paused_rollout_takes_no_automatic_decision(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.controller.start_rollout(
            "triage", "triage@v2", mode="canary", steps=(5,), actor="a"
        )
        await h.controller.pause("triage", actor="a")
        verdict = RolloutAdvice(
            "triage", h.controller.get("triage").rollout_id, "rollback", "errors"
        )
        assert await h.controller.record_verdict(verdict) is None
        assert h.controller.get("triage").candidate == "triage@v2"

    run(tmp_path, test)


def test_bad_operations_are_refused_without_any_change(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        with pytest.raises(RouteNotFound):
            await h.controller.promote("nope", actor="a")
        with pytest.raises(RolloutConflict):
            await h.controller.promote("triage", actor="a")
        assert h.audit == []
        assert len(h.published) == 1  # only the start-up table

    run(tmp_path, test)


def test_a_replica_without_redis_serves_the_configs_rollouts_and_reports_degraded(
    tmp_path: Path,
) -> None:
    published: list[Mapping[str, Rollout]] = []

    async def test() -> None:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        controller = RolloutController(
            RedisStateStore(nowhere), AuditLog(tmp_path / "audit.jsonl"), published.append
        )
        declared = {"triage": declare("triage", "triage@v1", candidate="triage@v2", steps=(20,))}
        await controller.open(declared)
        try:
            assert published[-1]["triage"].candidate == "triage@v2"
            assert published[-1]["triage"].weight_percent == 20
            assert sample("turnout_state_store_up") == 0
            with pytest.raises(StateStoreUnavailable):
                await controller.rollback("triage", actor="a")
            assert published[-1]["triage"].candidate == "triage@v2"  # nothing changed
        finally:
            await controller.close()

    asyncio.run(asyncio.wait_for(test(), 30))
