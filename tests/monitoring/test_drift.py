"""Drift profiles: shifted inputs cross the threshold, unshifted ones stay below (fixed seeds)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from monitoring.drift import (
    DRIFT_PSI_THRESHOLD,
    DriftConfig,
    DriftMonitor,
    DriftScore,
    FeatureCounts,
    SlidingWindow,
    jensen_shannon_divergence,
    population_stability_index,
    prompt_features,
)

SUPPORT_WORDS = (
    "my", "order", "has", "not", "arrived", "yet", "please", "help", "refund", "package",
    "charged", "twice", "account", "password", "reset", "login", "delivery", "tracking",
    "number", "invoice", "subscription", "cancel", "why", "when", "where", "the", "a", "is",
)  # fmt: skip
SQL_WORDS = (
    "select", "join", "group", "by", "having", "where", "count", "sum", "orders", "customers",
    "table", "index", "column", "schema", "insert", "update", "delete", "primary", "key",
    "foreign", "null", "distinct", "limit", "offset",
)  # fmt: skip


def prompts(
    seed: int, count: int, words: tuple[str, ...], length: tuple[int, int]
) -> list[tuple[str, int]]:
    """`count` prompts of random words and their token counts (about 1.3 tokens per word)."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        size = rng.randint(*length)
        text = " ".join(rng.choice(words) for _ in range(size)) + rng.choice(["?", ".", "!"])
        made.append((text, math.ceil(size * 1.3) + 12))
    return made


def observe_all(
    monitor: DriftMonitor, stream: list[tuple[str, int]], route: str = "support-triage"
) -> None:
    for text, tokens in stream:
        monitor.observe(route, "support-triage@v1", text, tokens)


def psi_by_feature(scores: list[DriftScore]) -> dict[str, float]:
    return {score.feature: score.value for score in scores if score.statistic == "psi"}


def bootstrapped(live: list[tuple[str, int]]) -> list[DriftScore]:
    """Scores after the first 1000 prompts of one stream, then `live`, filled the window."""
    monitor = DriftMonitor(DriftConfig(window_size=1000, reference_size=1000))
    observe_all(monitor, prompts(seed=1, count=1000, words=SUPPORT_WORDS, length=(5, 40)))
    observe_all(monitor, live)
    return monitor.scores()


def test_unshifted_stream_stays_below_the_threshold_on_every_feature() -> None:
    scores = bootstrapped(prompts(seed=2, count=1000, words=SUPPORT_WORDS, length=(5, 40)))
    assert {score.feature for score in scores} == {"prompt_tokens", "char_class", "terms"}
    assert all(value < DRIFT_PSI_THRESHOLD for value in psi_by_feature(scores).values())


def test_stream_on_another_topic_raises_the_term_score_past_the_threshold() -> None:
    psi = psi_by_feature(bootstrapped(prompts(seed=2, count=1000, words=SQL_WORDS, length=(5, 40))))
    assert psi["terms"] > DRIFT_PSI_THRESHOLD
    assert psi["prompt_tokens"] < DRIFT_PSI_THRESHOLD


def test_longer_prompts_raise_only_the_length_score() -> None:
    psi = psi_by_feature(
        bootstrapped(prompts(seed=2, count=1000, words=SUPPORT_WORDS, length=(60, 300)))
    )
    assert psi["prompt_tokens"] > DRIFT_PSI_THRESHOLD
    assert psi["terms"] < DRIFT_PSI_THRESHOLD
    assert psi["char_class"] < DRIFT_PSI_THRESHOLD


def test_prompts_in_another_script_raise_the_character_class_score() -> None:
    chinese = [
        (f"订单还没有到 {text}", tokens + 6)
        for text, tokens in prompts(2, 1000, SUPPORT_WORDS, (5, 40))
    ]
    psi = psi_by_feature(bootstrapped(chinese))
    assert psi["char_class"] > DRIFT_PSI_THRESHOLD


def test_window_forgets_a_past_shift_once_it_has_been_refilled() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=500, reference_size=1000))
    observe_all(monitor, prompts(seed=1, count=1000, words=SUPPORT_WORDS, length=(5, 40)))
    observe_all(monitor, prompts(seed=2, count=500, words=SQL_WORDS, length=(5, 40)))
    assert psi_by_feature(monitor.scores())["terms"] > DRIFT_PSI_THRESHOLD
    observe_all(monitor, prompts(seed=3, count=500, words=SUPPORT_WORDS, length=(5, 40)))
    assert psi_by_feature(monitor.scores())["terms"] < DRIFT_PSI_THRESHOLD


def test_given_reference_is_used_instead_of_the_first_live_prompts() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=500))
    training = prompts(seed=1, count=800, words=SQL_WORDS, length=(5, 40))
    monitor.set_reference(
        "support-triage", "support-triage@v1", [t for t, _ in training], [n for _, n in training]
    )
    observe_all(monitor, prompts(seed=2, count=500, words=SQL_WORDS, length=(5, 40)))
    assert psi_by_feature(monitor.scores())["terms"] < DRIFT_PSI_THRESHOLD
    observe_all(monitor, prompts(seed=3, count=500, words=SUPPORT_WORDS, length=(5, 40)))
    assert psi_by_feature(monitor.scores())["terms"] > DRIFT_PSI_THRESHOLD


def test_reference_without_token_counts_leaves_the_length_feature_unscored() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=300))
    texts = [text for text, _ in prompts(seed=1, count=300, words=SUPPORT_WORDS, length=(5, 40))]
    monitor.set_reference("support-triage", "support-triage@v1", texts)
    observe_all(monitor, prompts(seed=2, count=300, words=SUPPORT_WORDS, length=(5, 40)))
    assert {score.feature for score in monitor.scores()} == {"char_class", "terms"}


def test_no_score_until_the_window_holds_min_window_prompts() -> None:
    monitor = DriftMonitor(DriftConfig(reference_size=100, min_window=50))
    observe_all(monitor, prompts(seed=1, count=149, words=SUPPORT_WORDS, length=(5, 40)))
    assert monitor.scores() == []
    observe_all(monitor, prompts(seed=2, count=1, words=SUPPORT_WORDS, length=(5, 40)))
    assert len(monitor.scores()) == 6


def test_routes_and_versions_keep_separate_profiles() -> None:
    monitor = DriftMonitor(DriftConfig(reference_size=200, min_window=200, window_size=200))
    observe_all(monitor, prompts(seed=1, count=400, words=SUPPORT_WORDS, length=(5, 40)), "a")
    observe_all(monitor, prompts(seed=2, count=200, words=SUPPORT_WORDS, length=(5, 40)), "b")
    observe_all(monitor, prompts(seed=3, count=200, words=SQL_WORDS, length=(5, 40)), "b")
    assert {score.route for score in monitor.scores()} == {"a", "b"}
    terms = {
        s.route: s.value for s in monitor.scores() if (s.feature, s.statistic) == ("terms", "psi")
    }
    assert terms["a"] < DRIFT_PSI_THRESHOLD < terms["b"]


def test_observe_never_raises_and_keeps_counting_after_bad_input() -> None:
    monitor = DriftMonitor(DriftConfig(reference_size=1, min_window=1))
    monitor.observe("r", "v", None, 3)  # type: ignore[arg-type]  # what a caller bug would pass
    monitor.observe("r", "v", "hello there", 3)
    monitor.observe("r", "v", "hello again", 3)
    assert len(monitor.scores()) == 6


def test_refresh_gauges_exports_turnout_drift_score_per_feature_and_statistic() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=300, reference_size=300, min_window=300))
    observe_all(monitor, prompts(seed=1, count=300, words=SUPPORT_WORDS, length=(5, 40)), "gauged")
    observe_all(monitor, prompts(seed=2, count=300, words=SQL_WORDS, length=(5, 40)), "gauged")
    monitor.refresh_gauges()
    labels = {"route": "gauged", "version": "support-triage@v1", "feature": "terms"}
    psi = REGISTRY.get_sample_value("turnout_drift_score", {**labels, "statistic": "psi"})
    js = REGISTRY.get_sample_value("turnout_drift_score", {**labels, "statistic": "js"})
    assert psi is not None
    assert psi > DRIFT_PSI_THRESHOLD
    assert js is not None
    assert 0 < js <= 1


def test_a_route_version_is_drifting_after_a_refresh_sees_psi_over_the_threshold() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=300, reference_size=300, min_window=300))
    observe_all(monitor, prompts(seed=1, count=300, words=SUPPORT_WORDS, length=(5, 40)), "calm")
    observe_all(monitor, prompts(seed=2, count=300, words=SUPPORT_WORDS, length=(5, 40)), "calm")
    observe_all(monitor, prompts(seed=1, count=300, words=SUPPORT_WORDS, length=(5, 40)), "moved")
    observe_all(monitor, prompts(seed=2, count=300, words=SQL_WORDS, length=(5, 40)), "moved")
    assert not monitor.drifting("moved", "support-triage@v1")  # nothing refreshed yet
    monitor.refresh_gauges()
    assert monitor.drifting("moved", "support-triage@v1")
    assert not monitor.drifting("calm", "support-triage@v1")


def test_refresh_forever_publishes_scores_in_the_background() -> None:
    monitor = DriftMonitor(DriftConfig(window_size=50, reference_size=50, min_window=50))
    observe_all(monitor, prompts(seed=1, count=100, words=SUPPORT_WORDS, length=(5, 40)), "bg")
    labels = {"route": "bg", "version": "support-triage@v1", "feature": "terms", "statistic": "js"}

    async def refreshed() -> float | None:
        task = asyncio.create_task(monitor.refresh_forever(0.01))
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < deadline:
                value = REGISTRY.get_sample_value("turnout_drift_score", labels)
                if value is not None:
                    return value
                await asyncio.sleep(0.01)
            return None
        finally:
            task.cancel()

    assert asyncio.run(refreshed()) is not None


def test_psi_matches_a_hand_computed_value() -> None:
    # (0.8 - 0.5) ln(0.8 / 0.5) + (0.2 - 0.5) ln(0.2 / 0.5)
    assert population_stability_index([50, 50], [80, 20]) == pytest.approx(0.41589, abs=1e-5)


def test_js_divergence_is_zero_for_equal_and_one_for_disjoint_distributions() -> None:
    assert jensen_shannon_divergence([3, 1, 0], [6, 2, 0]) == pytest.approx(0)
    assert jensen_shannon_divergence([5, 0], [0, 7]) == pytest.approx(1)


@given(
    st.lists(st.integers(0, 50), min_size=2, max_size=8).filter(lambda c: sum(c) > 0),
    st.lists(st.integers(0, 50), min_size=2, max_size=8).filter(lambda c: sum(c) > 0),
)
def test_js_divergence_is_symmetric_and_bounded(first: list[int], second: list[int]) -> None:
    size = min(len(first), len(second))
    p, q = first[:size], second[:size]
    if sum(p) == 0 or sum(q) == 0:
        return
    forward = jensen_shannon_divergence(p, q)
    assert forward == pytest.approx(jensen_shannon_divergence(q, p))
    assert -1e-12 <= forward <= 1 + 1e-12


@settings(max_examples=50)
@given(
    st.integers(1, 20),
    st.lists(st.tuples(st.text(max_size=30), st.one_of(st.none(), st.integers(0, 10000)))),
)
def test_window_counts_equal_a_recount_of_its_last_prompts(
    size: int, stream: list[tuple[str, int | None]]
) -> None:
    window = SlidingWindow(size, term_buckets=16)
    for text, tokens in stream:
        window.push(prompt_features(text, tokens, 16, 2048))
    recount = FeatureCounts(16)
    for text, tokens in stream[-size:] if stream else []:
        recount.add(prompt_features(text, tokens, 16, 2048))
    assert window.counts.histograms() == recount.histograms()
    assert window.counts.prompts == recount.prompts


def test_character_mix_shares_each_class_in_per_mille() -> None:
    features = prompt_features("ab 1!é", None, 16, 2048)
    assert features.char_mix == (333, 166, 166, 166, 166)
    assert features.length_bin is None
    assert len(features.terms) == 3  # "ab", "1", "é"
