"""The rollout model: a route's stable and candidate versions, its transitions, and arm assignment.

Everything here is pure: a transition takes a `Rollout` and returns a new one together with the
`RolloutDecision` that records what changed and why. I/O (state store, audit log, metrics,
publishing a routing table) is the controller's job (`gateway.rollouts.controller`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from gateway.errors import RolloutConflict

Mode = Literal["canary", "ab", "shadow"]
Arm = Literal["stable", "candidate"]
DecisionKind = Literal[
    "start", "step", "promote", "rollback", "pause", "resume", "promote_to_canary", "reject"
]
Cause = Literal["operator", "analysis", "config"]

DEFAULT_STEPS: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
DEFAULT_MIN_REQUESTS_PER_STEP = 200
DEFAULT_MIN_SECONDS_PER_STEP = 60.0
DEFAULT_SHADOW_PERCENT = 100.0
DEFAULT_SHADOW_MIN_PAIRS = 200
# 2**64 positions mapped onto [0, 100): fine enough that a weight of 0.01 % still splits.
_HASH_SPACE = float(2**64)


@dataclass(frozen=True, slots=True)
class Rollout:
    """One route's versions and, while a rollout runs, its candidate and where it stands.

    A route with no candidate is settled: every request goes to `stable`. `rollout_id` names
    the rollout for the whole of its life (assignment hashes it). `declared_id` is the id of
    the config declaration this record descends from: while the config file declares the same
    thing, a restart or reload keeps the runtime state (operator changes included).
    `revision` grows by one per transition; stores use it to refuse lost updates.

    A `shadow` rollout serves nothing from the candidate (`weight_percent` stays 0): a
    `shadow_percent` share of the route's requests is also sent to it and the two answers are
    compared. It ends in `promote_to_canary` (a canary over `steps`) or `reject`.
    """

    route: str
    stable: str | None
    rollout_id: str = ""
    declared_id: str = ""
    candidate: str | None = None
    mode: Mode = "canary"
    weight_percent: float = 0.0
    steps: tuple[float, ...] = DEFAULT_STEPS
    step_index: int = 0
    min_requests_per_step: int = DEFAULT_MIN_REQUESTS_PER_STEP
    min_seconds_per_step: float = DEFAULT_MIN_SECONDS_PER_STEP
    paused: bool = False
    auto_promote: bool = True
    auto_rollback: bool = True
    started_at: float = 0.0
    step_started_at: float = 0.0
    revision: int = 0
    shadow_percent: float = 0.0
    shadow_min_pairs: int = DEFAULT_SHADOW_MIN_PAIRS

    @property
    def shadowing(self) -> bool:
        """The candidate gets a copy of some requests, and none of the answers is served."""
        return self.candidate is not None and self.mode == "shadow"

    @property
    def active(self) -> bool:
        """A candidate receives (or may receive) traffic."""
        return self.candidate is not None

    @property
    def last_step(self) -> bool:
        return self.step_index >= len(self.steps) - 1


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    """One change to a rollout: what, who or what caused it, why, and the numbers behind it."""

    route: str
    rollout_id: str
    decision: DecisionKind
    cause: Cause
    actor: str
    reason: str
    weight_before: float
    weight_after: float
    at: float
    numbers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Transition:
    """A transition's result: the new rollout and the decision that explains it."""

    rollout: Rollout
    decision: RolloutDecision


@dataclass(frozen=True, slots=True)
class Why:
    """Who asked for a transition and why; `numbers` carry an automatic decision's evidence."""

    cause: Cause
    actor: str
    reason: str
    at: float
    numbers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def _transition(before: Rollout, after: Rollout, decision: DecisionKind, why: Why) -> Transition:
    after = replace(after, revision=before.revision + 1)
    return Transition(
        rollout=after,
        decision=RolloutDecision(
            route=before.route,
            rollout_id=after.rollout_id,
            decision=decision,
            cause=why.cause,
            actor=why.actor,
            reason=why.reason,
            weight_before=before.weight_percent,
            weight_after=after.weight_percent,
            at=why.at,
            numbers=MappingProxyType(dict(why.numbers)),
        ),
    )


def _require_candidate(rollout: Rollout, operation: str) -> str:
    if rollout.candidate is None:
        raise RolloutConflict(f"Route `{rollout.route}` has no candidate to {operation}.")
    return rollout.candidate


def _refuse_shadow(rollout: Rollout, operation: str) -> None:
    if rollout.mode == "shadow":
        raise RolloutConflict(
            f"Route `{rollout.route}` shadows its candidate, which has served nothing yet:"
            f" promote it to canary before you {operation} it."
        )


def validate_steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    """Steps are weights in (0, 100], strictly rising; raise `RolloutConflict` otherwise."""
    if not steps:
        raise RolloutConflict("A canary needs at least one step.")
    if any(not 0 < s <= 100 for s in steps):
        raise RolloutConflict("Every step must be a weight in (0, 100].")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise RolloutConflict("Steps must rise strictly, e.g. 5, 25, 50, 100.")
    return steps


def start(
    current: Rollout,
    *,
    rollout_id: str,
    candidate: str,
    mode: Mode,
    steps: tuple[float, ...],
    why: Why,
    min_requests_per_step: int = DEFAULT_MIN_REQUESTS_PER_STEP,
    min_seconds_per_step: float = DEFAULT_MIN_SECONDS_PER_STEP,
    shadow_percent: float = DEFAULT_SHADOW_PERCENT,
    shadow_min_pairs: int = DEFAULT_SHADOW_MIN_PAIRS,
    auto_promote: bool | None = None,
) -> Transition:
    """Begin a rollout of `candidate` at `steps[0]`; an `ab` split has one step, its weight.

    A `shadow` starts at weight 0 with `shadow_percent` of requests copied to the candidate;
    `steps` are the canary's it becomes if promoted. Its `auto_promote` (default off) lets the
    analysis promote it to canary; rejection is always automatic.
    """
    if current.candidate is not None:
        raise RolloutConflict(
            f"Route `{current.route}` already rolls out `{current.candidate}`;"
            " promote or roll it back first."
        )
    if candidate == current.stable:
        raise RolloutConflict(f"`{candidate}` is already the stable version of `{current.route}`.")
    steps = validate_steps(steps)
    if mode == "ab" and len(steps) != 1:
        raise RolloutConflict("An A/B split has one fixed weight, not steps.")
    if mode == "shadow":
        validate_shadow_percent(shadow_percent)
    automatic = mode == "canary"
    after = replace(
        current,
        rollout_id=rollout_id,
        candidate=candidate,
        mode=mode,
        weight_percent=0.0 if mode == "shadow" else steps[0],
        steps=steps,
        step_index=0,
        min_requests_per_step=min_requests_per_step,
        min_seconds_per_step=min_seconds_per_step,
        paused=False,
        auto_promote=_auto_promote(mode, auto_promote),
        auto_rollback=automatic or mode == "shadow",
        started_at=why.at,
        step_started_at=why.at,
        shadow_percent=shadow_percent if mode == "shadow" else 0.0,
        shadow_min_pairs=shadow_min_pairs,
    )
    return _transition(current, after, "start", why)


def _auto_promote(mode: Mode, asked: bool | None) -> bool:
    if mode == "shadow":
        return bool(asked)
    return mode == "canary" if asked is None else asked


def validate_shadow_percent(share: float) -> float:
    """A shadow's share is a percentage in (0, 100]; raise `RolloutConflict` otherwise."""
    if not 0 < share <= 100:
        raise RolloutConflict("A shadow's share must be a percentage in (0, 100].")
    return share


def promote_to_canary(current: Rollout, why: Why) -> Transition:
    """A shadow's candidate starts serving: a canary at the first of its `steps`."""
    _require_candidate(current, "promote to canary")
    if current.mode != "shadow":
        raise RolloutConflict(f"The rollout on `{current.route}` is not a shadow.")
    after = replace(
        current,
        mode="canary",
        weight_percent=current.steps[0],
        step_index=0,
        shadow_percent=0.0,
        paused=False,
        auto_promote=True,
        auto_rollback=True,
        step_started_at=why.at,
    )
    return _transition(current, after, "promote_to_canary", why)


def reject(current: Rollout, why: Why) -> Transition:
    """A shadow's candidate is dropped without ever having served a request."""
    _require_candidate(current, "reject")
    if current.mode != "shadow":
        raise RolloutConflict(f"The rollout on `{current.route}` is not a shadow; roll it back.")
    after = replace(current, candidate=None, shadow_percent=0.0, paused=False)
    return _transition(current, after, "reject", why)


def step(current: Rollout, why: Why) -> Transition:
    """Move the candidate to the next step's weight."""
    _require_candidate(current, "step up")
    _refuse_shadow(current, "step up")
    if current.last_step:
        raise RolloutConflict(
            f"Route `{current.route}` is at its last step; promote the candidate instead."
        )
    index = current.step_index + 1
    after = replace(
        current, step_index=index, weight_percent=current.steps[index], step_started_at=why.at
    )
    return _transition(current, after, "step", why)


def promote(current: Rollout, why: Why) -> Transition:
    """The candidate becomes stable and the rollout ends."""
    candidate = _require_candidate(current, "promote")
    _refuse_shadow(current, "promote")
    after = replace(current, stable=candidate, candidate=None, weight_percent=0.0, paused=False)
    return _transition(current, after, "promote", why)


def rollback(current: Rollout, why: Why) -> Transition:
    """The candidate gets no more traffic and is removed; stable serves everything."""
    _require_candidate(current, "roll back")
    after = replace(current, candidate=None, weight_percent=0.0, shadow_percent=0.0, paused=False)
    return _transition(current, after, "rollback", why)


def pause(current: Rollout, why: Why) -> Transition:
    """Hold the current weight: no automatic step, promotion or rollback until resumed."""
    _require_candidate(current, "pause")
    if current.paused:
        raise RolloutConflict(f"The rollout on `{current.route}` is already paused.")
    return _transition(current, replace(current, paused=True), "pause", why)


def resume(current: Rollout, why: Why) -> Transition:
    """Let a paused rollout go on; the current step's hold starts again."""
    _require_candidate(current, "resume")
    if not current.paused:
        raise RolloutConflict(f"The rollout on `{current.route}` is not paused.")
    after = replace(current, paused=False, step_started_at=why.at)
    return _transition(current, after, "resume", why)


def declared_rollout_id(
    route: str,
    stable: str | None,
    candidate: str | None,
    mode: Mode,
    steps: tuple[float, ...],
    shadow: str = "",
) -> str:
    """A config-declared rollout's id: the same declaration always gets the same id."""
    parts = [route, stable or "", candidate or "", mode, ",".join(map(str, steps))]
    text = "\0".join([*parts, shadow] if shadow else parts)
    return "cfg-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def declare(
    route: str,
    stable: str | None,
    *,
    candidate: str | None = None,
    mode: Mode = "canary",
    weight_percent: float | None = None,
    steps: tuple[float, ...] = DEFAULT_STEPS,
    min_requests_per_step: int = DEFAULT_MIN_REQUESTS_PER_STEP,
    min_seconds_per_step: float = DEFAULT_MIN_SECONDS_PER_STEP,
    now: float = 0.0,
    shadow_percent: float = DEFAULT_SHADOW_PERCENT,
    shadow_min_pairs: int = DEFAULT_SHADOW_MIN_PAIRS,
    auto_promote: bool | None = None,
) -> Rollout:
    """The `Rollout` a config file declares for a route (the lead maps YAML onto this).

    `ab` takes `weight_percent`; `canary` takes `steps` (or a single `weight_percent`).
    """
    if candidate is not None and weight_percent is not None and mode != "shadow":
        steps = (weight_percent,)
    if candidate is not None:
        steps = validate_steps(steps)
        if mode == "ab" and len(steps) != 1:
            raise RolloutConflict(f"Route `{route}`: an A/B split needs `weight`, not steps.")
        if mode == "shadow":
            validate_shadow_percent(shadow_percent)
    automatic = mode == "canary"
    shadowed = candidate is not None and mode == "shadow"
    shadow = f"{shadow_percent:g},{shadow_min_pairs},{auto_promote}" if shadowed else ""
    rollout_id = declared_rollout_id(route, stable, candidate, mode, steps, shadow)
    return Rollout(
        route=route,
        stable=stable,
        rollout_id=rollout_id,
        declared_id=rollout_id,
        candidate=candidate,
        mode=mode,
        weight_percent=steps[0] if candidate is not None and not shadowed else 0.0,
        steps=steps,
        min_requests_per_step=min_requests_per_step,
        min_seconds_per_step=min_seconds_per_step,
        auto_promote=_auto_promote(mode, auto_promote),
        auto_rollback=automatic or mode == "shadow",
        started_at=now,
        step_started_at=now,
        shadow_percent=shadow_percent if shadowed else 0.0,
        shadow_min_pairs=shadow_min_pairs,
    )


def sticky_position(sticky_key: str, rollout_id: str) -> float:
    """Where a caller sits in [0, 100) for one rollout: uniform over keys, fixed for its life."""
    digest = hashlib.blake2b(
        sticky_key.encode(), digest_size=8, key=rollout_id.encode()[:64]
    ).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE * 100.0


def assign_arm(
    sticky_key: str | None,
    rollout_id: str,
    weight_percent: float,
    draw: Callable[[], float],
) -> Arm:
    """The arm for one request: by the caller's sticky position, or `draw()` (in [0, 1)) if none.

    A caller whose position is below the weight gets the candidate, so raising the weight only
    moves callers from stable to candidate, and the same caller always lands on the same arm
    while the weight stands.
    """
    if weight_percent <= 0.0:
        return "stable"
    if weight_percent >= 100.0:
        return "candidate"
    position = draw() * 100.0 if sticky_key is None else sticky_position(sticky_key, rollout_id)
    return "candidate" if position < weight_percent else "stable"
