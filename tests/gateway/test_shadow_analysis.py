"""Shadow comparison and analysis: pure logic, the controller's decisions in the audit log, and
evidence pooled through a real Redis."""

from __future__ import annotations

import asyncio
import functools
import math
import random
import statistics
from pathlib import Path

import pytest

from gateway.bench.redis_server import RedisServer
from gateway.rollouts.analysis import (
    DEFAULT_ALPHA,
    BinomialCounts,
    RolloutRecorder,
    default_signals,
    log_e_value,
    log_e_value_paired,
)
from gateway.rollouts.audit import AuditLog, read_audit_log
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.evidence import LocalEvidence
from gateway.rollouts.model import declare
from gateway.rollouts.state import FileStateStore
from gateway.shadow.analysis import analyse_shadow, log_threshold, strongest_test
from gateway.shadow.compare import (
    PAIR_SIGNALS,
    PairComparison,
    Side,
    agreement,
    compare,
    field_agreement,
)
from gateway.shadow.evidence import (
    PairSnapshot,
    PairTally,
    PooledPairEvidence,
    add_pair,
    category_prefix,
)

SHADOW_THRESHOLD = math.log(len(PAIR_SIGNALS) / DEFAULT_ALPHA)
CANARY_THRESHOLD = math.log(len(default_signals()) / DEFAULT_ALPHA)


def ok(text: str, latency_s: float = 1.0, **fields: object) -> Side:
    return Side(200, latency_s, text, "stop", len(text.split()), **fields)  # type: ignore[arg-type]


# --- comparison ------------------------------------------------------------------------------


def test_structured_answers_agree_exactly_or_field_by_field() -> None:
    same = agreement('{"team": "it", "urgent": true}', '{"urgent": true, "team": "it"}', True)
    assert (same.kind, same.exact, same.score) == ("structured", True, 1.0)
    half = agreement('{"team": "it", "urgent": true}', '{"team": "it", "urgent": false}', True)
    assert (half.exact, half.score) == (False, 0.5)
    broken = agreement('{"team": "it"}', "Sorry, no.", True)
    assert (broken.exact, broken.score) == (False, 0.0)


def test_json_agreement_counts_nested_and_missing_fields() -> None:
    stable = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert field_agreement(stable, stable) == 1.0
    # leaves: a.b, a.c[0], a.c[1], d; the candidate changes a.c[1] and adds e: 3 of 5 agree.
    candidate = {"a": {"b": 1, "c": [1, 3]}, "d": "x", "e": 0}
    assert field_agreement(stable, candidate) == pytest.approx(3 / 5)
    assert agreement('{"x": 1}', '{"x": 1}', False).kind == "json"


def test_free_text_gets_a_similarity_score() -> None:
    assert agreement("the printer is jammed", "the printer is jammed ", False).exact
    close = agreement(
        "the printer on floor two is jammed", "the printer on floor 2 is jammed", False
    )
    assert close.kind == "text"
    assert 0.8 < close.score < 1.0
    far = agreement("the printer on floor two is jammed", "I cannot help with that", False)
    assert far.score < 0.2


def test_each_signal_is_judged_on_both_sides() -> None:
    stable = ok("fine", 1.0, schema_valid=True, refusal=False)
    candidate = Side(200, 2.0, "no", "length", 40, schema_valid=False, refusal=True)
    pair = compare(stable, candidate, structured=True)
    assert pair.signals == {
        "error": (False, False),
        "schema_invalid": (False, True),
        "refusal": (False, True),
        "truncated": (False, True),
        "slower": (False, True),
    }
    assert pair.length_ratio == 40
    # Milliseconds apart is the gateway's own scheduling, whatever the ratio.
    quick = compare(ok("a", 0.001), ok("a", 0.003), structured=False)
    assert quick.signals["slower"] == (False, False)
    failed = compare(stable, Side(502, 0.1, None), structured=True)
    assert failed.signals["error"] == (False, True)
    assert failed.signals["refusal"] == (False, None)  # no answer: not counted
    assert failed.agreement is None


# --- the paired test -------------------------------------------------------------------------


def test_a_candidate_as_good_as_stable_is_rarely_rejected() -> None:
    """Null: both arms bad 5 % of the time, independently; 300 shadows of 1,000 pairs, looked at
    after every pair. The bound is alpha / k = 0.2 % per signal: about 0.6 expected rejections."""
    rng = random.Random(7)
    rejected = 0
    for _ in range(300):
        candidate_only = stable_only = 0
        for _ in range(1000):
            c, s = rng.random() < 0.05, rng.random() < 0.05
            candidate_only += c and not s
            stable_only += s and not c
            if log_e_value_paired(candidate_only, stable_only) >= SHADOW_THRESHOLD:
                rejected += 1
                break
    assert rejected <= 3


def _canary_requests(rng: random.Random) -> int:
    """Candidate requests a canary (equal arms) needs to roll back 10 % bad vs 1 % bad."""
    candidate = stable = 0
    for n in range(1, 20_000):
        candidate += rng.random() < 0.10
        stable += rng.random() < 0.01
        if log_e_value(BinomialCounts(candidate, n), BinomialCounts(stable, n)) >= CANARY_THRESHOLD:
            return n
    return 20_000


@functools.cache
def _canary_median() -> float:
    return statistics.median(_canary_requests(random.Random(seed)) for seed in range(100))


def _shadow_pairs(rng: random.Random, category_share: float) -> int:
    """Pairs a shadow needs to reject a candidate that breaks the schema on 10 % of one input
    category (`category_share` of the traffic), stable breaking it on 1 % of everything."""
    candidate_only = stable_only = 0
    for n in range(1, 20_000):
        in_category = rng.random() < category_share
        c = rng.random() < (0.10 if in_category else 0.01)
        s = rng.random() < 0.01
        candidate_only += c and not s
        stable_only += s and not c
        if log_e_value_paired(candidate_only, stable_only) >= SHADOW_THRESHOLD:
            return n
    return 20_000


def test_shadow_rejects_a_schema_breaker_within_the_canary_s_sample() -> None:
    """The target: a candidate breaking the schema on 10 % of one input category is rejected
    within the requests a canary needs for 10 % vs 1 %, here when the category is the traffic
    (docs/rollouts.md gives the numbers, and those for a category that is a quarter of it)."""
    canary = _canary_median()
    shadow = statistics.median(_shadow_pairs(random.Random(seed), 1.0) for seed in range(100))
    assert shadow <= canary


# --- per input category ----------------------------------------------------------------------

# A route declaring four input categories: with `other` five, so 6 groups x 5 signals are tested.
CATEGORIES = ("billing", "hardware", "access", "account", "other")


def _schema_pair(stable_bad: bool, candidate_bad: bool) -> PairComparison:
    return PairComparison({"schema_invalid": (stable_bad, candidate_bad)}, None, None)


def _category_pairs(rng: random.Random, share: float) -> tuple[int, int, PairSnapshot]:
    """Pairs (all, and those of `billing`) the split test needs to reject a candidate that breaks
    the schema on 10 % of `billing` (`share` of the traffic) and 1 % of the other categories,
    stable 1 % everywhere; and the counts then. Counted as the tally counts them, judged by the
    analysis after every discordant pair (no e-value moves on the others)."""
    counts: dict[str, int] = {}
    snapshot = PairSnapshot("r", counts, CATEGORIES)
    threshold = log_threshold(len(CATEGORIES))
    pairs = in_category = 0
    while pairs < 20_000:
        pairs += 1
        billing = rng.random() < share
        in_category += billing
        category = "billing" if billing else rng.choice(CATEGORIES[1:4])
        candidate_bad = rng.random() < (0.10 if billing else 0.01)
        stable_bad = rng.random() < 0.01
        pair = _schema_pair(stable_bad, candidate_bad)
        add_pair(counts, pair)
        add_pair(counts, pair, category_prefix(category))
        if candidate_bad and not stable_bad:
            strongest = strongest_test(snapshot)
            if strongest is not None and strongest.log_e >= threshold:
                break
    return pairs, in_category, snapshot


def test_a_category_s_schema_breaker_is_rejected_within_the_canary_s_sample_of_it() -> None:
    """The target with the category a quarter of the traffic: the pairs of that category the
    split test needs are no more than the requests the canary needs for 10 % vs 1 %, and all
    pairs fewer than the unsplit test's (docs/rollouts.md gives the numbers)."""
    canary = _canary_median()
    unsplit = statistics.median(_shadow_pairs(random.Random(seed), 0.25) for seed in range(100))
    runs = [_category_pairs(random.Random(seed), 0.25) for seed in range(100)]
    assert statistics.median(in_category for _, in_category, _ in runs) <= canary
    assert statistics.median(pairs for pairs, _, _ in runs) < unsplit
    # The analysis itself names the category that decided.
    rollout = declare("triage", "triage@v1", candidate="triage@v2", mode="shadow")
    _, _, counts = runs[0]
    snapshot = PairSnapshot(rollout.rollout_id, counts.fields, CATEGORIES)
    advice = analyse_shadow(rollout, snapshot, 0.0)
    assert advice.action == "rollback"
    assert advice.reason.startswith("reject: category billing: schema_invalid:")


def test_split_by_category_a_candidate_as_good_as_stable_is_rarely_rejected() -> None:
    """Null, on every signal: both arms bad 5 % of the time, independently; four declared
    categories and `other` a fifth of the traffic each; 300 shadows of 1,000 pairs, looked at
    after every pair. Only discordant pairs move an e-value, so each signal's are drawn (which
    side, which category) and every test they move is looked at. Bonferroni over 6 groups x 5
    signals bounds the rejected share by alpha: 3 expected at most."""
    rng = random.Random(11)
    threshold = log_threshold(len(CATEGORIES))
    rejected = 0
    for _ in range(300):
        counts: dict[tuple[str, str], list[int]] = {}
        crossed = False
        for _ in range(1000):
            for signal in PAIR_SIGNALS:
                draw = rng.random()
                if draw >= 0.095:  # P(exactly one side bad) = 2 x 0.05 x 0.95
                    continue
                side = 0 if draw < 0.0475 else 1  # 0: the candidate alone
                for group in ("all", rng.choice(CATEGORIES)):
                    tally = counts.setdefault((group, signal), [0, 0])
                    tally[side] += 1
                    crossed |= side == 0 and log_e_value_paired(*tally) >= threshold
            if crossed:
                rejected += 1
                break
    assert rejected <= 3


def test_a_category_that_refuses_decides_and_the_audit_names_it(tmp_path: Path) -> None:
    """The candidate alone refuses every billing ticket (a quarter of pairs), stable alone a few
    hardware ones: over the whole traffic that is no evidence an unsplit test acts on, over
    billing it is; the audit entry names billing and carries each category's counts."""

    async def scenario() -> None:
        controller = await _controller(tmp_path, auto_promote=False)
        rollout = controller.get("triage")
        tally = PairTally(lambda route: CATEGORIES)
        answer = ok("Printer team.", refusal=False)
        refused = ok("I can't help with that.", refusal=True)
        for n in range(64):
            category = CATEGORIES[n % 4]
            stable = refused if category == "hardware" and n < 12 else answer
            candidate = refused if category == "billing" else answer
            tally.record(rollout, compare(stable, candidate, False), category)
        snapshot = tally.snapshot(rollout)
        assert snapshot.discordant("refusal") == (16, 3)
        assert snapshot.within("billing").discordant("refusal") == (16, 0)
        assert log_e_value_paired(16, 3) < log_threshold(0)  # unsplit: no rejection
        [decision] = await controller.analyse_once(
            LocalEvidence(RolloutRecorder()), LocalEvidence(tally)
        )
        assert decision.decision == "reject"
        await controller.close()

    asyncio.run(scenario())
    rejected = read_audit_log(tmp_path / "audit.jsonl")[-1]
    assert rejected["decision"] == "reject"
    assert rejected["reason"].startswith("reject: category billing: refusal: candidate 100.00%")
    numbers = rejected["numbers"]
    assert numbers["categories"] == len(CATEGORIES)
    assert numbers["category.billing.refusal.candidate_only"] == 16
    assert numbers["category.hardware.refusal.stable_only"] == 3
    assert numbers["category.access.pairs"] == 16
    assert "category.access.refusal.candidate_only" not in numbers
    assert numbers["log_threshold"] == round(log_threshold(len(CATEGORIES)), 4)


# --- the controller --------------------------------------------------------------------------


async def _controller(tmp_path: Path, auto_promote: bool) -> RolloutController:
    controller = RolloutController(
        FileStateStore(tmp_path / "state.json"), AuditLog(tmp_path / "audit.jsonl"), lambda r: None
    )
    declared = declare(
        "triage",
        "triage@v1",
        candidate="triage@v2",
        mode="shadow",
        steps=(10.0, 100.0),
        shadow_min_pairs=50,
        min_seconds_per_step=0,
        auto_promote=auto_promote,
    )
    await controller.open({"triage": declared})
    return controller


def _feed(tally: PairTally, controller: RolloutController, pairs: int, refuse_every: int) -> None:
    rollout = controller.get("triage")
    for n in range(pairs):
        refuses = refuse_every > 0 and n % refuse_every == 0
        candidate = ok("I can't help with that." if refuses else "Printer team.", refusal=refuses)
        tally.record(rollout, compare(ok("Printer team.", refusal=False), candidate, False))


def test_a_shadow_that_agrees_is_promoted_to_canary_with_its_evidence(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = await _controller(tmp_path, auto_promote=True)
        tally = PairTally()
        _feed(tally, controller, 49, refuse_every=0)
        evidence = LocalEvidence(RolloutRecorder())
        assert await controller.analyse_once(evidence, LocalEvidence(tally)) == []
        _feed(tally, controller, 1, refuse_every=0)
        [decision] = await controller.analyse_once(evidence, LocalEvidence(tally))
        assert decision.decision == "promote_to_canary"
        rollout = controller.get("triage")
        assert (rollout.mode, rollout.weight_percent, rollout.candidate) == (
            "canary",
            10.0,
            "triage@v2",
        )
        await controller.close()

    asyncio.run(scenario())
    [start, promoted] = read_audit_log(tmp_path / "audit.jsonl")
    assert (start["decision"], promoted["decision"], promoted["cause"]) == (
        "start",
        "promote_to_canary",
        "analysis",
    )
    assert promoted["numbers"]["pairs"] == 50
    assert promoted["numbers"]["agreement.text.exact_rate"] == 1.0


def test_a_shadow_that_refuses_on_a_subset_is_rejected_with_its_evidence(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = await _controller(tmp_path, auto_promote=False)
        tally = PairTally()
        _feed(tally, controller, 40, refuse_every=3)  # 14 of 40 refused by the candidate alone
        [decision] = await controller.analyse_once(
            LocalEvidence(RolloutRecorder()), LocalEvidence(tally)
        )
        assert decision.decision == "reject"
        assert controller.get("triage").candidate is None
        await controller.close()

    asyncio.run(scenario())
    rejected = read_audit_log(tmp_path / "audit.jsonl")[-1]
    assert rejected["decision"] == "reject"
    assert rejected["reason"].startswith("reject: refusal:")
    assert rejected["numbers"]["refusal.candidate_only"] == 14
    assert rejected["numbers"]["refusal.stable_only"] == 0


def test_without_auto_promote_a_good_shadow_waits_for_an_operator(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = await _controller(tmp_path, auto_promote=False)
        tally = PairTally()
        _feed(tally, controller, 60, refuse_every=0)
        evidence = LocalEvidence(RolloutRecorder())
        assert await controller.analyse_once(evidence, LocalEvidence(tally)) == []
        verdict = controller.latest_verdict("triage")
        assert verdict is not None
        assert verdict.action == "promote_step"
        assert controller.get("triage").mode == "shadow"
        await controller.close()

    asyncio.run(scenario())


# --- pooled through Redis --------------------------------------------------------------------


def test_replicas_pool_their_pairs_and_each_judges_the_sum(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        rollout = declare(
            "triage", "triage@v1", candidate="triage@v2", mode="shadow", shadow_min_pairs=10
        )
        tallies = [PairTally(), PairTally()]
        pooled = [PooledPairEvidence(t, redis_server.url, prefix="shadow-t1") for t in tallies]
        stable = ok("Printer team.", refusal=False)
        refused = ok("I can't help with that.", refusal=True)
        for tally in tallies:  # 6 refusals each: not enough alone, enough together
            for _ in range(6):
                tally.record(rollout, compare(stable, refused, False))
        alone = analyse_shadow(rollout, tallies[0].snapshot(rollout), 0.0)
        assert alone.action == "continue"
        await pooled[0].snapshot(rollout)
        together = await pooled[1].snapshot(rollout)
        assert together.pairs == 12
        assert together.discordant("refusal") == (12, 0)
        assert analyse_shadow(rollout, together, 0.0).action == "rollback"
        # A second look adds nothing twice.
        again = await pooled[0].snapshot(rollout)
        assert again.pairs == 12
        for evidence in pooled:
            await evidence.close()

    assert log_e_value_paired(6, 0) < SHADOW_THRESHOLD <= log_e_value_paired(12, 0)
    asyncio.run(scenario())


def test_replicas_pool_each_category_and_the_category_decides(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        rollout = declare("triage", "triage@v1", candidate="triage@v2", mode="shadow")
        tallies = [PairTally(lambda route: CATEGORIES) for _ in range(2)]
        pooled = [PooledPairEvidence(t, redis_server.url, prefix="shadow-t2") for t in tallies]
        answer = ok("Printer team.", refusal=False)
        refused = ok("I can't help with that.", refusal=True)
        for tally in tallies:  # 8 billing refusals each: enough for billing only together
            for _ in range(8):
                tally.record(rollout, compare(answer, refused, False), "billing")
            for _ in range(3):  # stable alone refuses a few: the whole traffic stays unclear
                tally.record(rollout, compare(refused, answer, False), "hardware")
        assert analyse_shadow(rollout, tallies[0].snapshot(rollout), 0.0).action == "continue"
        await pooled[0].snapshot(rollout)
        together = await pooled[1].snapshot(rollout)
        assert together.categories == CATEGORIES
        assert together.discordant("refusal") == (16, 6)
        assert together.within("billing").discordant("refusal") == (16, 0)
        assert together.within("hardware").pairs == 6
        advice = analyse_shadow(rollout, together, 0.0)
        assert advice.action == "rollback"
        assert advice.reason.startswith("reject: category billing: refusal:")
        for evidence in pooled:
            await evidence.close()

    assert log_e_value_paired(8, 0) < log_threshold(len(CATEGORIES)) <= log_e_value_paired(16, 0)
    asyncio.run(scenario())
