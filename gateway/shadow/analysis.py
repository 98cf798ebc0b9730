"""A shadow's verdict: reject on paired evidence of harm, else promote to canary once held.

Every pair signal is tested with `log_e_value_paired` on the whole traffic and, where the route
declares input categories (`shadow_category`), on each category apart (`other` included): with
k signals and m categories that is k * (1 + m) tests, each at alpha / (k * (1 + m))
(Bonferroni), so a candidate no worse than stable in any category is rejected, on any test at
any look, with probability at most alpha. The verdict reuses the canary's `RolloutAdvice`:
"rollback" means reject, "promote_step" means promote to canary
(`RolloutController.record_verdict` maps them for a shadow).
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import NamedTuple

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


def log_threshold(categories: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The log e-value a test must reach: alpha split over every signal of the whole traffic
    and of each of `categories` input categories."""
    return math.log(len(PAIR_SIGNALS) * (1 + categories) / alpha)


class Crossing(NamedTuple):
    """One test: its input category (None: the whole traffic), signal and log e-value."""

    category: str | None
    signal: str
    log_e: float


def strongest_test(snapshot: PairSnapshot) -> Crossing | None:
    """The test with the most evidence that the candidate is worse (None: no pair is
    discordant that way), over the whole traffic and every declared category."""
    best: Crossing | None = None
    for category in (None, *snapshot.categories):
        view = snapshot if category is None else snapshot.within(category)
        for signal in PAIR_SIGNALS:
            candidate_only, stable_only = view.discordant(signal)
            if candidate_only <= stable_only:  # the e-value is at most 1: no evidence
                continue
            log_e = log_e_value_paired(candidate_only, stable_only)
            if best is None or log_e > best.log_e:
                best = Crossing(category, signal, log_e)
    return best


def category_numbers(snapshot: PairSnapshot) -> dict[str, float]:
    """Per declared input category: its pairs, and each signal's discordant pairs and log
    e-value where a pair was discordant."""
    numbers: dict[str, float] = {}
    if snapshot.categories:
        numbers["categories"] = len(snapshot.categories)
    for category in snapshot.categories:
        view = snapshot.within(category)
        numbers[f"category.{category}.pairs"] = view.pairs
        for signal in PAIR_SIGNALS:
            candidate_only, stable_only = view.discordant(signal)
            if candidate_only or stable_only:
                key = f"category.{category}.{signal}"
                numbers[f"{key}.candidate_only"] = candidate_only
                numbers[f"{key}.stable_only"] = stable_only
                numbers[f"{key}.log_e_value"] = round(
                    log_e_value_paired(candidate_only, stable_only), 4
                )
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
    numbers.update(category_numbers(snapshot))
    threshold = log_threshold(len(snapshot.categories), alpha)
    numbers["log_threshold"] = round(threshold, 4)
    crossed = strongest_test(snapshot)
    if crossed is not None and crossed.log_e >= threshold:
        category, signal, log_e = crossed
        view = snapshot if category is None else snapshot.within(category)
        c, s = view.arm(signal, "candidate"), view.arm(signal, "stable")
        candidate_only, stable_only = view.discordant(signal)
        where = "" if category is None else f"category {category}: "
        return verdict(
            "rollback",
            f"reject: {where}{signal}: candidate {c.rate:.2%} ({c.events}/{c.trials}) vs stable"
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
