"""Canary analysis: compare a candidate with stable over the same window with a sequential test.

Each signal (error, schema-invalid, refusal, slower-than-stable's-p95) turns a finished request
into "bad", "good" or "does not count". Per arm that gives binomial counts, and for each signal
`log_e_value` measures the evidence that the candidate's bad rate is above stable's. It is an
e-process (sequential universal-inference likelihood ratio): under "candidate no worse than
stable" the chance that it ever reaches 1/alpha is at most alpha, however often it is looked
at, so analysis may run after every request. See docs/rollouts.md for the derivation and the
measured false-rollback rate and detection power.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

from gateway.rollouts.model import Arm, Rollout

AdviceAction = Literal["rollback", "promote_step", "continue"]

DEFAULT_ALPHA = 0.01
# Jeffreys / Krichevsky-Trofimov prior for each arm's rate in the alternative's mixture.
PRIOR = 0.5
LATENCY_QUANTILE = 0.95
LATENCY_CALIBRATION_REQUESTS = 100


@dataclass(frozen=True, slots=True)
class AnalysisSample:
    """What the data plane knows about one finished request (None: not checked)."""

    status: int
    latency_s: float
    schema_valid: bool | None = None
    refusal: bool | None = None


class Signal(Protocol):
    """One health signal: is this request bad (True), good (False), or not counted (None)?"""

    @property
    def name(self) -> str: ...

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None: ...


class ErrorSignal:
    """A 5xx answer: the gateway or the backend failed (4xx are the client's doing)."""

    name = "error"

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None:
        return outcome.status >= 500


class SchemaInvalidSignal:
    """The answer broke the route's JSON Schema (routes without one are not counted)."""

    name = "schema_invalid"

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None:
        return None if outcome.schema_valid is None else not outcome.schema_valid


class RefusalSignal:
    """The refusal detector called the answer a refusal."""

    name = "refusal"

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None:
        return outcome.refusal


class SlowerThanStableP95Signal:
    """Latency above stable's p95, so a worse candidate p95 shows as a bad rate above 5 %.

    The threshold is stable's p95 over its first `calibration_requests` successful requests
    of the rollout; nothing counts until then. Fixing it from earlier requests only keeps the
    test valid: under "same latency distribution" both arms then exceed it equally often.
    """

    name = "latency_p95"

    def __init__(self, calibration_requests: int = LATENCY_CALIBRATION_REQUESTS) -> None:
        self._calibration_requests = calibration_requests
        self._calibration: list[float] = []
        self.threshold_s: float | None = None

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None:
        if outcome.status >= 400:
            return None
        if self.threshold_s is not None:
            return outcome.latency_s > self.threshold_s
        if arm == "stable":
            self._calibration.append(outcome.latency_s)
            if len(self._calibration) >= self._calibration_requests:
                ordered = sorted(self._calibration)
                self.threshold_s = ordered[math.ceil(LATENCY_QUANTILE * len(ordered)) - 1]
                self._calibration = []
        return None


def default_signals() -> list[Signal]:
    """A fresh set of the signals that exist today (one set per rollout: some keep state)."""
    return [ErrorSignal(), SchemaInvalidSignal(), RefusalSignal(), SlowerThanStableP95Signal()]


class ReviewBadSignal:
    """A reviewer judged an answer of the arm bad (the review console, docs/review.md).

    Requests never classify as it: reviewers' first judgements of answers given during the
    rollout are counted through `RolloutRecorder.record_review`. Optional
    (`state.review_verdicts_in_analysis`): with it the signals share alpha five ways.
    """

    name = "review_bad"

    def classify(self, arm: Arm, outcome: AnalysisSample) -> bool | None:
        return None


def signals_with_review() -> list[Signal]:
    """The default signals and reviewers' verdicts."""
    return [*default_signals(), ReviewBadSignal()]


@dataclass(frozen=True, slots=True)
class BinomialCounts:
    """`events` bad requests out of `trials` counted ones."""

    events: int = 0
    trials: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.trials if self.trials else 0.0


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_marginal(counts: BinomialCounts) -> float:
    """Log-probability of the arm's sequence under a Beta(PRIOR, PRIOR) mixture of rates."""
    failures = counts.trials - counts.events
    return _log_beta(counts.events + PRIOR, failures + PRIOR) - _log_beta(PRIOR, PRIOR)


def _log_likelihood(counts: BinomialCounts, rate: float) -> float:
    total = 0.0
    if counts.events:
        total += counts.events * math.log(rate)
    if counts.trials - counts.events:
        total += (counts.trials - counts.events) * math.log1p(-rate)
    return total


def log_e_value(candidate: BinomialCounts, stable: BinomialCounts) -> float:
    """Evidence (natural log) that the candidate's bad rate is above stable's.

    Numerator: the two arms' Beta-mixture likelihoods (a predictable bet on each arm's rate).
    Denominator: the largest likelihood any pair of rates with candidate <= stable gives the
    same data. Under that null the ratio is bounded by a test martingale, so by Ville's
    inequality P(ever >= 1/alpha) <= alpha (Wasserman, Ramdas and Balakrishnan's universal
    inference, run sequentially). Only counts matter, not their order.
    """
    alternative = _log_marginal(candidate) + _log_marginal(stable)
    if candidate.rate <= stable.rate:
        null = _log_likelihood(candidate, candidate.rate) + _log_likelihood(stable, stable.rate)
    else:
        pooled = BinomialCounts(
            candidate.events + stable.events, candidate.trials + stable.trials
        ).rate
        null = _log_likelihood(candidate, pooled) + _log_likelihood(stable, pooled)
    return alternative - null


def log_e_value_paired(candidate_only: int, stable_only: int) -> float:
    """Evidence (natural log) that a candidate is worse than stable from paired requests.

    Of each pair only the discordant ones tell the arms apart: bad on the candidate alone
    (`candidate_only`) or on stable alone (`stable_only`). Under "candidate no worse" a
    discordant pair is the candidate's fault with probability q <= 1/2, so the same
    universal-inference e-process as `log_e_value` applies, to one rate: the Beta-mixture
    likelihood of the discordant sequence over the largest likelihood any q <= 1/2 gives it.
    """
    counts = BinomialCounts(candidate_only, candidate_only + stable_only)
    null_rate = min(counts.rate, 0.5) if counts.trials else 0.5
    # A rate of 0 explains an all-good sequence with likelihood 1 (log 0).
    null = 0.0 if null_rate == 0.0 else _log_likelihood(counts, null_rate)
    return _log_marginal(counts) - null


@dataclass(frozen=True, slots=True)
class SignalCounts:
    """One signal's counts on both arms over the same window."""

    name: str
    stable: BinomialCounts
    candidate: BinomialCounts


@dataclass(frozen=True, slots=True)
class TallySnapshot:
    """A rollout's counts at one moment: per signal, and candidate requests per step."""

    rollout_id: str
    signals: tuple[SignalCounts, ...]
    candidate_requests_by_step: Mapping[int, int]


class RolloutTally:
    """Counts of one rollout's finished requests per arm and signal (data plane, no I/O)."""

    def __init__(self, rollout_id: str, signals: Sequence[Signal]) -> None:
        self.rollout_id = rollout_id
        self._signals = tuple(signals)
        # [signal][arm] -> [events, trials]
        self._counts = [{"stable": [0, 0], "candidate": [0, 0]} for _ in self._signals]
        self._by_step: dict[int, int] = {}

    def record(self, arm: Arm, step_index: int, outcome: AnalysisSample) -> None:
        if arm == "candidate":
            self._by_step[step_index] = self._by_step.get(step_index, 0) + 1
        for signal, counts in zip(self._signals, self._counts, strict=True):
            bad = signal.classify(arm, outcome)
            if bad is not None:
                cell = counts[arm]
                cell[0] += bad
                cell[1] += 1

    def record_verdict(self, signal_name: str, arm: Arm, bad: bool) -> bool:
        """Count one verdict for the signal `signal_name` alone; False if it is not tested."""
        for signal, counts in zip(self._signals, self._counts, strict=True):
            if signal.name == signal_name:
                cell = counts[arm]
                cell[0] += bad
                cell[1] += 1
                return True
        return False

    def snapshot(self) -> TallySnapshot:
        return TallySnapshot(
            rollout_id=self.rollout_id,
            signals=tuple(
                SignalCounts(
                    name=signal.name,
                    stable=BinomialCounts(*counts["stable"]),
                    candidate=BinomialCounts(*counts["candidate"]),
                )
                for signal, counts in zip(self._signals, self._counts, strict=True)
            ),
            candidate_requests_by_step=MappingProxyType(dict(self._by_step)),
        )


class RolloutRecorder:
    """The data plane's entry point: one tally per route for the rollout running on it."""

    def __init__(self, signals: Callable[[], Sequence[Signal]] = default_signals) -> None:
        self._signals = signals
        # Every signal is tested, counted or not: the threshold divides alpha among them all.
        self.signal_names = tuple(signal.name for signal in signals())
        self._tallies: dict[str, RolloutTally] = {}

    def record(self, rollout: Rollout, arm: Arm, outcome: AnalysisSample) -> None:
        """Count one finished request of a route with an active rollout."""
        tally = self._tallies.get(rollout.route)
        if tally is None or tally.rollout_id != rollout.rollout_id:
            tally = RolloutTally(rollout.rollout_id, self._signals())
            self._tallies[rollout.route] = tally
        tally.record(arm, rollout.step_index, outcome)

    def record_review(self, rollout: Rollout, arm: Arm, bad: bool) -> bool:
        """Count a reviewer's verdict on an answer of `rollout`'s `arm`; False when the review
        signal is not among this recorder's signals."""
        if ReviewBadSignal.name not in self.signal_names:
            return False
        tally = self._tallies.get(rollout.route)
        if tally is None or tally.rollout_id != rollout.rollout_id:
            tally = RolloutTally(rollout.rollout_id, self._signals())
            self._tallies[rollout.route] = tally
        return tally.record_verdict(ReviewBadSignal.name, arm, bad)

    def snapshot(self, rollout: Rollout) -> TallySnapshot:
        """The counts of `rollout` (all zero if none of its requests finished yet)."""
        tally = self._tallies.get(rollout.route)
        if tally is None or tally.rollout_id != rollout.rollout_id:
            none = BinomialCounts()
            signals = tuple(SignalCounts(name, none, none) for name in self.signal_names)
            return TallySnapshot(rollout.rollout_id, signals, MappingProxyType({}))
        return tally.snapshot()


@dataclass(frozen=True, slots=True)
class RolloutAdvice:
    """What the analysis advises for a rollout, why, and the numbers behind it."""

    route: str
    rollout_id: str
    action: AdviceAction
    reason: str
    numbers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def _numbers(signals: Iterable[SignalCounts], log_e: Mapping[str, float]) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for counts in signals:
        numbers[f"{counts.name}.stable_events"] = counts.stable.events
        numbers[f"{counts.name}.stable_trials"] = counts.stable.trials
        numbers[f"{counts.name}.candidate_events"] = counts.candidate.events
        numbers[f"{counts.name}.candidate_trials"] = counts.candidate.trials
        numbers[f"{counts.name}.log_e_value"] = round(log_e[counts.name], 4)
    return numbers


def analyse(
    rollout: Rollout, snapshot: TallySnapshot, now: float, alpha: float = DEFAULT_ALPHA
) -> RolloutAdvice:
    """Roll back on evidence of harm; step up once the step's hold is met without it.

    Each of the k signals is tested at alpha / k, so the chance that a candidate as good as
    stable is rolled back at all, on any signal, at any look, is at most alpha.
    """

    def verdict(action: AdviceAction, reason: str, numbers: Mapping[str, float]) -> RolloutAdvice:
        return RolloutAdvice(
            rollout.route, rollout.rollout_id, action, reason, MappingProxyType(dict(numbers))
        )

    if not rollout.active or snapshot.rollout_id != rollout.rollout_id:
        return verdict("continue", "no data for this rollout yet", {})
    log_e = {s.name: log_e_value(s.candidate, s.stable) for s in snapshot.signals}
    numbers = _numbers(snapshot.signals, log_e)
    threshold = math.log(max(len(snapshot.signals), 1) / alpha)
    numbers["log_threshold"] = round(threshold, 4)
    for counts in snapshot.signals:
        if log_e[counts.name] >= threshold:
            c, s = counts.candidate, counts.stable
            return verdict(
                "rollback",
                f"{counts.name}: candidate {c.rate:.2%} ({c.events}/{c.trials}) vs stable"
                f" {s.rate:.2%} ({s.events}/{s.trials}); e-value"
                f" {math.exp(log_e[counts.name]):.0f} >= {math.exp(threshold):.0f}",
                numbers,
            )
    held_requests = snapshot.candidate_requests_by_step.get(rollout.step_index, 0)
    held_s = now - rollout.step_started_at
    numbers["step_requests"] = held_requests
    numbers["step_seconds"] = round(held_s, 3)
    if held_requests >= rollout.min_requests_per_step and held_s >= rollout.min_seconds_per_step:
        return verdict(
            "promote_step",
            f"step {rollout.step_index + 1}/{len(rollout.steps)} at {rollout.weight_percent:g}%"
            f" held for {held_requests} candidate requests and {held_s:.0f} s without evidence"
            " of harm",
            numbers,
        )
    return verdict("continue", "collecting evidence", numbers)
