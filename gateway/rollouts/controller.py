"""Applies rollout operations: persist, publish to the request path, audit, and meter each one.

Every change goes the same way: the pure transition (`gateway.rollouts.model`), then the state store
(which refuses lost updates and shares the change with other replicas), then `publish` with
the new rollouts (synchronously, so the next request already sees them), then the audit log
and the metrics. A rollback is therefore in force before its call returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

from gateway.errors import RolloutConflict, RouteNotFound, StateStoreUnavailable, TurnoutError
from gateway.rollouts import model as transitions
from gateway.rollouts.analysis import RolloutAdvice, analyse
from gateway.rollouts.audit import AuditLog
from gateway.rollouts.evidence import Evidence
from gateway.rollouts.model import DecisionKind, Mode, Rollout, RolloutDecision, Transition, Why
from gateway.rollouts.state import RolloutStateStore
from gateway.shadow.analysis import analyse_shadow
from gateway.shadow.evidence import PairEvidence
from monitoring.metrics import ROLLOUT_DECISIONS, ROLLOUT_WEIGHT, SHADOW_SHARE, SHADOW_VERDICT

log = logging.getLogger("turnout.rollouts")

Publish = Callable[[Mapping[str, Rollout]], None]


def _new_rollout_id() -> str:
    return uuid.uuid4().hex[:16]


def _set_weight_metric(rollout: Rollout) -> None:
    ROLLOUT_WEIGHT.labels(route=rollout.route, arm="candidate").set(rollout.weight_percent)
    ROLLOUT_WEIGHT.labels(route=rollout.route, arm="stable").set(100.0 - rollout.weight_percent)
    SHADOW_SHARE.labels(route=rollout.route).set(rollout.shadow_percent if rollout.shadowing else 0)


class RolloutController:
    """The one writer of rollout state in a process; the admin API and analysis call it."""

    def __init__(
        self,
        store: RolloutStateStore,
        audit: AuditLog,
        publish: Publish,
        *,
        clock: Callable[[], float] = time.time,
        new_rollout_id: Callable[[], str] = _new_rollout_id,
    ) -> None:
        self._store = store
        self._audit = audit
        self._publish = publish
        self._clock = clock
        self._new_rollout_id = new_rollout_id
        self._rollouts: Mapping[str, Rollout] = MappingProxyType({})
        self._verdicts: dict[str, RolloutAdvice] = {}
        self._lock = asyncio.Lock()

    # --- reading ------------------------------------------------------------------------

    @property
    def rollouts(self) -> Mapping[str, Rollout]:
        """The rollouts in force, by route (an immutable snapshot)."""
        return self._rollouts

    def get(self, route: str) -> Rollout:
        rollout = self._rollouts.get(route)
        if rollout is None:
            raise RouteNotFound(f"The route `{route}` does not exist.")
        return rollout

    def latest_verdict(self, route: str) -> RolloutAdvice | None:
        """The last analysis verdict for the route's current rollout, with its per-arm numbers."""
        verdict = self._verdicts.get(route)
        rollout = self._rollouts.get(route)
        if verdict is None or rollout is None or verdict.rollout_id != rollout.rollout_id:
            return None
        return verdict

    # --- start-up and config ------------------------------------------------------------

    async def open(self, declared: Mapping[str, Rollout]) -> None:
        """Load persisted state, merge the config's declarations into it, publish the result."""
        stored = await self._store.open(self._apply_remote)
        await self._merge(declared, stored)

    async def apply_config(self, declared: Mapping[str, Rollout]) -> None:
        """A changed config file: routes follow it; unchanged declarations keep runtime state."""
        await self._merge(declared, dict(self._rollouts))

    async def _merge(self, declared: Mapping[str, Rollout], known: Mapping[str, Rollout]) -> None:
        async with self._lock:
            merged: dict[str, Rollout] = {}
            changes: list[Transition] = []
            for route, wanted in declared.items():
                current = known.get(route)
                if current is not None and current.declared_id == wanted.declared_id:
                    merged[route] = current
                    continue
                now = self._clock()
                merged[route] = replace(
                    wanted,
                    started_at=now,
                    step_started_at=now,
                    revision=current.revision + 1 if current is not None else 1,
                )
                if current is not None or wanted.active:
                    why = Why("config", "config", "the config file declares it", now)
                    changes.append(_config_transition(current, merged[route], why))
            applied = []
            for change in changes:
                try:
                    await self._store.save(change.rollout)
                except RolloutConflict:
                    # Another replica applied the same file first; its record reaches us too.
                    route = change.rollout.route
                    merged[route] = known.get(route, change.rollout)
                    continue
                except StateStoreUnavailable:
                    # Degraded: serve what the config says; the store is updated on a later change.
                    log.warning("state store unavailable: %s applied locally", change.rollout.route)
                applied.append(change)
            self._rollouts = MappingProxyType(merged)
            self._publish(self._rollouts)
            for rollout in merged.values():
                _set_weight_metric(rollout)
            for change in applied:
                await self._record(change.decision)

    def _apply_remote(self, rollout: Rollout) -> None:
        """Another replica changed a route: take it if newer, and publish it at once."""
        current = self._rollouts.get(rollout.route)
        if current is None or current.revision >= rollout.revision:
            return
        self._rollouts = MappingProxyType({**self._rollouts, rollout.route: rollout})
        self._publish(self._rollouts)
        _set_weight_metric(rollout)

    # --- operations -----------------------------------------------------------------------

    async def start_rollout(
        self,
        route: str,
        candidate: str,
        *,
        mode: Mode,
        steps: tuple[float, ...],
        actor: str,
        reason: str = "",
        min_requests_per_step: int = transitions.DEFAULT_MIN_REQUESTS_PER_STEP,
        min_seconds_per_step: float = transitions.DEFAULT_MIN_SECONDS_PER_STEP,
        shadow_percent: float = transitions.DEFAULT_SHADOW_PERCENT,
        shadow_min_pairs: int = transitions.DEFAULT_SHADOW_MIN_PAIRS,
        auto_promote: bool | None = None,
    ) -> Rollout:
        """Start a canary (progressive `steps`), an A/B split (one step: its weight) or a
        shadow (`shadow_percent` of requests copied to the candidate, `steps` for later)."""
        async with self._lock:
            transition = transitions.start(
                self.get(route),
                rollout_id=self._new_rollout_id(),
                candidate=candidate,
                mode=mode,
                steps=steps,
                why=self._why("operator", actor, reason or f"{mode} started"),
                min_requests_per_step=min_requests_per_step,
                min_seconds_per_step=min_seconds_per_step,
                shadow_percent=shadow_percent,
                shadow_min_pairs=shadow_min_pairs,
                auto_promote=auto_promote,
            )
            return await self._commit(transition)

    async def promote(self, route: str, *, actor: str, reason: str = "") -> Rollout:
        async with self._lock:
            why = self._why("operator", actor, reason or "promoted by an operator")
            return await self._commit(transitions.promote(self.get(route), why))

    async def promote_to_canary(self, route: str, *, actor: str, reason: str = "") -> Rollout:
        """A shadow's candidate starts serving as a canary."""
        async with self._lock:
            why = self._why("operator", actor, reason or "promoted to canary by an operator")
            return await self._commit(transitions.promote_to_canary(self.get(route), why))

    async def rollback(self, route: str, *, actor: str, reason: str = "") -> Rollout:
        async with self._lock:
            why = self._why("operator", actor, reason or "rolled back by an operator")
            return await self._commit(transitions.rollback(self.get(route), why))

    async def pause(self, route: str, *, actor: str, reason: str = "") -> Rollout:
        async with self._lock:
            why = self._why("operator", actor, reason or "paused by an operator")
            return await self._commit(transitions.pause(self.get(route), why))

    async def resume(self, route: str, *, actor: str, reason: str = "") -> Rollout:
        async with self._lock:
            why = self._why("operator", actor, reason or "resumed by an operator")
            return await self._commit(transitions.resume(self.get(route), why))

    async def record_verdict(self, verdict: RolloutAdvice) -> RolloutDecision | None:
        """Act on an analysis verdict where the rollout allows automatic decisions."""
        async with self._lock:
            rollout = self._rollouts.get(verdict.route)
            if rollout is None or not rollout.active or verdict.rollout_id != rollout.rollout_id:
                return None
            self._verdicts[verdict.route] = verdict
            if rollout.paused:
                return None
            why = self._why("analysis", "analysis", verdict.reason, verdict.numbers)
            if rollout.shadowing:
                if verdict.action == "rollback" and rollout.auto_rollback:
                    transition = transitions.reject(rollout, why)
                elif verdict.action == "promote_step" and rollout.auto_promote:
                    transition = transitions.promote_to_canary(rollout, why)
                else:
                    return None
            elif verdict.action == "rollback" and rollout.auto_rollback:
                transition = transitions.rollback(rollout, why)
            elif verdict.action == "promote_step" and rollout.auto_promote:
                step = transitions.promote if rollout.last_step else transitions.step
                transition = step(rollout, why)
            else:
                return None
            await self._commit(transition)
            return transition.decision

    async def analyse_once(
        self, evidence: Evidence, shadows: PairEvidence | None = None
    ) -> list[RolloutDecision]:
        """Analyse every active rollout on its evidence (a shadow on its pairs) and act on
        the verdicts."""
        decisions = []
        now = self._clock()
        for rollout in list(self._rollouts.values()):
            if not rollout.active or (rollout.shadowing and shadows is None):
                continue
            try:
                if shadows is not None and rollout.shadowing:
                    verdict = analyse_shadow(rollout, await shadows.snapshot(rollout), now)
                    for action in ("continue", "rollback", "promote_step"):
                        SHADOW_VERDICT.labels(route=rollout.route, action=action).set(
                            int(verdict.action == action)
                        )
                else:
                    verdict = analyse(rollout, await evidence.snapshot(rollout), now)
                decision = await self.record_verdict(verdict)
            except TurnoutError as error:
                log.warning("analysis of %s not applied: %s", rollout.route, error.message)
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def run_analysis(
        self, evidence: Evidence, interval_s: float = 1.0, shadows: PairEvidence | None = None
    ) -> None:
        """Analyse every `interval_s` until cancelled (run it as a task beside the server)."""
        while True:
            await self.analyse_once(evidence, shadows)
            await asyncio.sleep(interval_s)

    # --- the one way a change is made -------------------------------------------------------

    def _why(
        self,
        cause: transitions.Cause,
        actor: str,
        reason: str,
        numbers: Mapping[str, float] | None = None,
    ) -> Why:
        return Why(cause, actor, reason, self._clock(), MappingProxyType(dict(numbers or {})))

    async def _commit(self, transition: Transition) -> Rollout:
        rollout = transition.rollout
        await self._store.save(rollout)
        self._rollouts = MappingProxyType({**self._rollouts, rollout.route: rollout})
        self._publish(self._rollouts)
        _set_weight_metric(rollout)
        await self._record(transition.decision)
        return rollout

    async def _record(self, decision: RolloutDecision) -> None:
        ROLLOUT_DECISIONS.labels(
            route=decision.route, decision=decision.decision, cause=decision.cause
        ).inc()
        log.info(
            "rollout %s on %s (%s by %s): %s",
            decision.decision,
            decision.route,
            decision.cause,
            decision.actor,
            decision.reason,
        )
        await self._audit.append(decision)

    async def close(self) -> None:
        await self._store.close()
        self._audit.close()


def _config_transition(before: Rollout | None, after: Rollout, why: Why) -> Transition:
    """A change the config file made: a new rollout, a removed candidate or a new stable."""
    kind: DecisionKind = "promote"
    if after.active:
        kind = "start"
    elif before is not None and before.active:
        kind = "rollback"
    decision = RolloutDecision(
        route=after.route,
        rollout_id=after.rollout_id,
        decision=kind,
        cause=why.cause,
        actor=why.actor,
        reason=why.reason,
        weight_before=before.weight_percent if before is not None else 0.0,
        weight_after=after.weight_percent,
        at=why.at,
    )
    return Transition(rollout=after, decision=decision)
