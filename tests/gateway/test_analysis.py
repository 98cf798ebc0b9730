"""The sequential test: detection power and false-rollback rate in seeded simulations.

Each simulated rollout draws every request's outcome per signal and arm (failure positions
from geometric gaps, the same as independent Bernoulli draws), and runs the real `analyse`
on the counts. Run with `-s` to see the measured numbers quoted in docs/rollouts.md.
"""

from __future__ import annotations

import bisect
import math
import random
from types import MappingProxyType

import pytest

from gateway.rollouts.analysis import (
    AnalysisSample,
    BinomialCounts,
    RolloutRecorder,
    SignalCounts,
    SlowerThanStableP95Signal,
    TallySnapshot,
    analyse,
    log_e_value,
)
from gateway.rollouts.model import Rollout

SIGNALS = ("error", "schema_invalid", "refusal", "latency_p95")
# Bad rates of a healthy version: errors, schema breaks, refusals, and (by construction of the
# latency signal) 5 % above stable's p95.
HEALTHY = {"error": 0.01, "schema_invalid": 0.01, "refusal": 0.02, "latency_p95": 0.05}


def canary(weight: float = 5.0, min_requests: int = 10**9) -> Rollout:
    return Rollout(
        route="triage",
        stable="triage@v1",
        rollout_id="sim",
        candidate="triage@v2",
        weight_percent=weight,
        steps=(weight,),
        min_requests_per_step=min_requests,
        min_seconds_per_step=0.0,
    )


def failure_positions(rng: random.Random, rate: float, trials: int) -> list[int]:
    """1-based positions of the failures among `trials` Bernoulli(rate) requests."""
    positions: list[int] = []
    log_keep = math.log1p(-rate)
    position = 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_keep) + 1
        if position > trials:
            return positions
        positions.append(position)


def simulate(
    rng: random.Random,
    candidate_rates: dict[str, float],
    weight: float,
    horizon: int,
    look_every: int,
) -> int | None:
    """Candidate requests seen when `analyse` first says rollback (None: never, to `horizon`)."""
    stable_per_candidate = (100.0 - weight) / weight
    stable_horizon = int(horizon * stable_per_candidate) + 1
    streams = {
        name: (
            failure_positions(rng, candidate_rates[name], horizon),
            failure_positions(rng, HEALTHY[name], stable_horizon),
        )
        for name in SIGNALS
    }
    rollout = canary(weight)
    for n_candidate in range(look_every, horizon + 1, look_every):
        n_stable = int(n_candidate * stable_per_candidate)
        snapshot = TallySnapshot(
            rollout_id=rollout.rollout_id,
            signals=tuple(
                SignalCounts(
                    name,
                    stable=BinomialCounts(bisect.bisect_right(stable, n_stable), n_stable),
                    candidate=BinomialCounts(bisect.bisect_right(cand, n_candidate), n_candidate),
                )
                for name, (cand, stable) in streams.items()
            ),
            candidate_requests_by_step=MappingProxyType({0: n_candidate}),
        )
        if analyse(rollout, snapshot, now=0.0).action == "rollback":
            return n_candidate
    return None


def binomial_upper_bound(events: int, trials: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper confidence bound of a binomial rate (Clopper-Pearson)."""

    def cdf(rate: float) -> float:
        return sum(
            math.comb(trials, k) * rate**k * (1 - rate) ** (trials - k) for k in range(events + 1)
        )

    low, high = events / trials, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) > 1 - confidence else (low, middle)
    return high


@pytest.mark.parametrize(
    ("weight", "median_at_most", "p95_at_most"), [(5.0, 150, 300), (50.0, 350, 600)]
)
def test_a_candidate_failing_ten_times_as_often_is_rolled_back_within_a_few_hundred_requests(
    weight: float, median_at_most: int, p95_at_most: int
) -> None:
    rng = random.Random(20240605)
    rollouts = 400
    bad = {**HEALTHY, "error": 0.10}
    caught = [simulate(rng, bad, weight, horizon=2000, look_every=1) for _ in range(rollouts)]
    assert None not in caught
    ordered = sorted(n for n in caught if n is not None)
    median, p95 = ordered[rollouts // 2], ordered[math.ceil(0.95 * rollouts) - 1]
    print(
        f"\nweight {weight}%: 10% vs 1% errors caught after median {median}, p95 {p95}"
        f" candidate requests ({rollouts} rollouts)"
    )
    assert median <= median_at_most
    assert p95 <= p95_at_most


def test_a_candidate_as_good_as_stable_is_rolled_back_in_under_one_percent_of_rollouts() -> None:
    rng = random.Random(7)
    per_weight = 1000
    false_rollbacks = 0
    for weight in (5.0, 50.0):
        for _ in range(per_weight):
            false_rollbacks += (
                simulate(rng, HEALTHY, weight, horizon=1000, look_every=5) is not None
            )
    total = 2 * per_weight
    upper = binomial_upper_bound(false_rollbacks, total)
    print(f"\nequal rates: {false_rollbacks}/{total} false rollbacks, 95% upper bound {upper:.3%}")
    assert upper < 0.01


def test_evidence_grows_only_when_the_candidate_is_worse() -> None:
    stable = BinomialCounts(events=20, trials=2000)
    assert log_e_value(BinomialCounts(1, 200), stable) < 0  # better than stable: no evidence
    assert log_e_value(BinomialCounts(2, 200), stable) < 0  # the same rate: none either
    assert log_e_value(BinomialCounts(20, 200), stable) > math.log(400)  # 10 %: strong
    assert log_e_value(BinomialCounts(0, 0), BinomialCounts(0, 0)) == 0


def test_a_step_is_promoted_once_its_hold_is_met_without_evidence_of_harm() -> None:
    rollout = canary(weight=5.0, min_requests=100)
    snapshot = TallySnapshot(
        "sim",
        (SignalCounts("error", BinomialCounts(10, 1900), BinomialCounts(1, 100)),),
        MappingProxyType({0: 100}),
    )
    verdict = analyse(rollout, snapshot, now=rollout.step_started_at)
    assert verdict.action == "promote_step"
    assert verdict.numbers["error.candidate_trials"] == 100
    short = TallySnapshot("sim", snapshot.signals, MappingProxyType({0: 99}))
    assert analyse(rollout, short, now=0.0).action == "continue"


def test_recorder_counts_each_signal_per_arm_for_the_current_rollout_only() -> None:
    recorder = RolloutRecorder()
    rollout = canary()
    recorder.record(rollout, "candidate", AnalysisSample(status=502, latency_s=0.1))
    recorder.record(rollout, "candidate", AnalysisSample(200, 0.1, schema_valid=False))
    recorder.record(rollout, "stable", AnalysisSample(200, 0.1, refusal=True))
    counts = {s.name: s for s in recorder.snapshot(rollout).signals}
    assert counts["error"].candidate == BinomialCounts(1, 2)
    assert counts["error"].stable == BinomialCounts(0, 1)
    assert counts["schema_invalid"].candidate == BinomialCounts(1, 1)
    assert counts["refusal"].stable == BinomialCounts(1, 1)
    assert counts["refusal"].candidate == BinomialCounts(0, 0)
    assert recorder.snapshot(rollout).candidate_requests_by_step == {0: 2}
    later = Rollout(route="triage", stable="triage@v1", rollout_id="next", candidate="triage@v3")
    assert all(s.candidate.trials == s.stable.trials == 0 for s in recorder.snapshot(later).signals)


def test_latency_signal_compares_with_stables_p95_fixed_after_calibration() -> None:
    signal = SlowerThanStableP95Signal(calibration_requests=100)
    for i in range(1, 101):
        assert signal.classify("stable", AnalysisSample(200, i / 100)) is None
    assert signal.threshold_s == 0.95
    assert signal.classify("candidate", AnalysisSample(200, 0.96)) is True
    assert signal.classify("candidate", AnalysisSample(200, 0.5)) is False
    assert signal.classify("candidate", AnalysisSample(500, 9.0)) is None
