"""A shadow's verdict: reject on paired evidence of harm, else promote to canary once held.

Every pair signal is tested with `log_e_value_paired` at alpha / k (k signals), so a candidate
as good as stable is rejected, on any signal at any look, with probability at most alpha. The
verdict reuses the canary's `RolloutAdvice`: "rollback" means reject, "promote_step" means promote
to canary (`RolloutController.record_verdict` maps them for a shadow).
"""

from __future__ import annotations

import math
from types import MappingProxyType

from gateway.rollouts.analysis import DEFAULT_ALPHA, AdviceAction, RolloutAdvice, log_e_value_paired
from gateway.rollouts.model import Rollout
from gateway.shadow.compare import PAIR_SIGNALS
from gateway.shadow.evidence import PairSnapshot

AGREEMENT_KINDS = ("structured", "json", "text")


def shadow_numbers(snapshot: PairSnapshot) -> dict[str, float]:
    """The evidence behind a verdict: per signal both arms' rates and the discordant pairs,
    per agreement kind the exact share and mean score."""
    numbers: dict[str, float] = {"pairs": snapshot.pairs}
    for signal in PAIR_SIGNALS:
        for arm in ("stable", "candidate"):
            counts = snapshot.arm(signal, arm)
            numbers[f"{signal}.{arm}_events"] = counts.events
            numbers[f"{signal}.{arm}_trials"] = counts.trials
        candidate_only, stable_only = snapshot.discordant(signal)
        numbers[f"{signal}.candidate_only"] = candidate_only
        numbers[f"{signal}.stable_only"] = stable_only
        numbers[f"{signal}.log_e_value"] = round(log_e_value_paired(candidate_only, stable_only), 4)
    for kind in AGREEMENT_KINDS:
        pairs, exact, score = snapshot.agreement(kind)
        if pairs:
            numbers[f"agreement.{kind}.pairs"] = pairs
            numbers[f"agreement.{kind}.exact_rate"] = round(exact, 4)
            numbers[f"agreement.{kind}.mean_score"] = round(score, 4)
    return numbers


def analyse_shadow(
    rollout: Rollout, snapshot: PairSnapshot, now: float, alpha: float = DEFAULT_ALPHA
) -> RolloutAdvice:
    """Reject on evidence that the candidate is worse on a signal; advise promotion to canary
    once `shadow_min_pairs` pairs and `min_seconds_per_step` have passed without it."""

    def verdict(action: AdviceAction, reason: str, numbers: dict[str, float]) -> RolloutAdvice:
        return RolloutAdvice(
            rollout.route, rollout.rollout_id, action, reason, MappingProxyType(numbers)
        )

    if not rollout.shadowing or snapshot.rollout_id != rollout.rollout_id:
        return verdict("continue", "no shadow pairs for this rollout yet", {})
    numbers = shadow_numbers(snapshot)
    threshold = math.log(len(PAIR_SIGNALS) / alpha)
    numbers["log_threshold"] = round(threshold, 4)
    for signal in PAIR_SIGNALS:
        candidate_only, stable_only = snapshot.discordant(signal)
        log_e = log_e_value_paired(candidate_only, stable_only)
        if log_e >= threshold:
            c, s = snapshot.arm(signal, "candidate"), snapshot.arm(signal, "stable")
            return verdict(
                "rollback",
                f"reject: {signal}: candidate {c.rate:.2%} ({c.events}/{c.trials}) vs stable"
                f" {s.rate:.2%} ({s.events}/{s.trials}) over the same requests;"
                f" {candidate_only} pairs bad on the candidate alone, {stable_only} on stable"
                f" alone; e-value {math.exp(log_e):.0f} >= {math.exp(threshold):.0f}",
                numbers,
            )
    held_s = now - rollout.step_started_at
    numbers["shadow_seconds"] = round(held_s, 3)
    if snapshot.pairs >= rollout.shadow_min_pairs and held_s >= rollout.min_seconds_per_step:
        return verdict(
            "promote_step",
            f"promote to canary: {snapshot.pairs} pairs over {held_s:.0f} s without evidence"
            " that the candidate is worse on any signal",
            numbers,
        )
    return verdict("continue", "collecting pairs", numbers)
