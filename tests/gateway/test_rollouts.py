"""The rollout model: transitions and sticky, monotone arm assignment."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import RolloutConflict
from gateway.rollouts.model import (
    Rollout,
    Why,
    assign_arm,
    declare,
    pause,
    promote,
    resume,
    rollback,
    start,
    step,
)

keys = st.text(min_size=1, max_size=40)
weights = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


def never_drawn() -> float:
    raise AssertionError("a caller with a sticky key must not use the random draw")


def operator(at: float = 1000.0) -> Why:
    return Why("operator", "alice", "test", at)


def settled() -> Rollout:
    return Rollout(route="triage", stable="triage@v1", rollout_id="r0")


def canary() -> Rollout:
    return start(
        settled(),
        rollout_id="r1",
        candidate="triage@v2",
        mode="canary",
        steps=(5, 25, 50, 100),
        why=operator(),
    ).rollout


@given(key=keys, rollout_id=st.text(max_size=20), weight=weights)
def test_a_caller_stays_on_one_arm_while_the_weight_stands(
    key: str, rollout_id: str, weight: float
) -> None:
    arms = {assign_arm(key, rollout_id, weight, never_drawn) for _ in range(3)}
    assert len(arms) == 1


@given(key=keys, rollout_id=st.text(max_size=20), low=weights, high=weights)
def test_raising_the_weight_only_moves_callers_from_stable_to_candidate(
    key: str, rollout_id: str, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    if assign_arm(key, rollout_id, low, never_drawn) == "candidate":
        assert assign_arm(key, rollout_id, high, never_drawn) == "candidate"


@pytest.mark.parametrize("weight", [1.0, 5.0, 25.0, 50.0, 90.0])
def test_sticky_split_matches_the_weight(weight: float) -> None:
    callers = 40_000
    on_candidate = sum(
        assign_arm(f"user-{i}", "rollout-7", weight, never_drawn) == "candidate"
        for i in range(callers)
    )
    # Binomial standard deviation is at most 0.25 % here; 4 of them is a generous bound.
    assert abs(on_candidate / callers * 100 - weight) < 1.0


def test_requests_without_a_key_split_by_the_random_draw() -> None:
    draw = random.Random(3).random
    arms = [assign_arm(None, "rollout-7", 25.0, draw) for _ in range(40_000)]
    assert abs(arms.count("candidate") / len(arms) - 0.25) < 0.01


def test_a_new_rollout_reshuffles_who_is_on_the_candidate() -> None:
    first = {k for k in map(str, range(2000)) if assign_arm(k, "a", 50, never_drawn) == "candidate"}
    second = {
        k for k in map(str, range(2000)) if assign_arm(k, "b", 50, never_drawn) == "candidate"
    }
    assert 0.4 < len(first & second) / len(first) < 0.6


def test_canary_walks_its_steps_then_promotion_makes_the_candidate_stable() -> None:
    rollout = canary()
    assert (rollout.weight_percent, rollout.auto_promote, rollout.auto_rollback) == (5, True, True)
    weights_seen = [rollout.weight_percent]
    while not rollout.last_step:
        rollout = step(rollout, operator()).rollout
        weights_seen.append(rollout.weight_percent)
    assert weights_seen == [5, 25, 50, 100]
    transition = promote(rollout, Why("analysis", "analysis", "held", 2000.0, {"n": 300}))
    assert transition.rollout.stable == "triage@v2"
    assert transition.rollout.candidate is None
    assert transition.rollout.weight_percent == 0
    assert transition.decision.decision == "promote"
    assert transition.decision.numbers == {"n": 300}
    assert transition.decision.weight_before == 100


def test_rollback_removes_the_candidate_and_records_the_weight_it_had() -> None:
    transition = rollback(canary(), operator())
    assert transition.rollout.candidate is None
    assert transition.rollout.stable == "triage@v1"
    assert transition.rollout.weight_percent == 0
    assert (transition.decision.weight_before, transition.decision.weight_after) == (5, 0)
    assert transition.rollout.revision == canary().revision + 1


def test_ab_split_is_one_fixed_weight_without_automatic_decisions() -> None:
    rollout = start(
        settled(), rollout_id="r2", candidate="triage@v2", mode="ab", steps=(50,), why=operator()
    ).rollout
    assert (rollout.weight_percent, rollout.auto_promote, rollout.auto_rollback) == (
        50,
        False,
        False,
    )
    with pytest.raises(RolloutConflict):
        start(
            settled(), rollout_id="r3", candidate="x@v2", mode="ab", steps=(5, 50), why=operator()
        )


def test_pause_and_resume_restart_the_step_hold() -> None:
    paused = pause(canary(), operator(1500.0)).rollout
    assert paused.paused
    resumed = resume(paused, operator(1600.0)).rollout
    assert not resumed.paused
    assert resumed.step_started_at == 1600.0


@pytest.mark.parametrize(
    "operation",
    [
        lambda r: promote(r, operator()),
        lambda r: rollback(r, operator()),
        lambda r: pause(r, operator()),
        lambda r: step(r, operator()),
    ],
)
def test_operations_on_a_route_without_candidate_are_conflicts(operation: object) -> None:
    with pytest.raises(RolloutConflict, match="no candidate"):
        operation(settled())  # type: ignore[operator]


def test_a_second_rollout_on_the_same_route_is_a_conflict() -> None:
    with pytest.raises(RolloutConflict, match="already rolls out"):
        start(
            canary(),
            rollout_id="r9",
            candidate="triage@v3",
            mode="canary",
            steps=(5,),
            why=operator(),
        )


@pytest.mark.parametrize("steps", [(), (0,), (5, 5), (50, 25), (5, 101)])
def test_bad_steps_are_refused(steps: tuple[float, ...]) -> None:
    with pytest.raises(RolloutConflict):
        start(
            settled(),
            rollout_id="r",
            candidate="triage@v2",
            mode="canary",
            steps=steps,
            why=operator(),
        )


def test_the_same_declaration_gets_the_same_rollout_id() -> None:
    one = declare("triage", "triage@v1", candidate="triage@v2", steps=(10, 100))
    two = declare("triage", "triage@v1", candidate="triage@v2", steps=(10, 100))
    other = declare("triage", "triage@v1", candidate="triage@v3", steps=(10, 100))
    assert one.rollout_id == two.rollout_id != other.rollout_id
    assert one.weight_percent == 10
    ab = declare("triage", "triage@v1", candidate="triage@v2", mode="ab", weight_percent=30)
    assert (ab.weight_percent, ab.auto_rollback) == (30, False)
