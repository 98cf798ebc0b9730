"""How often the semantic drift test flags a window: a meaning shift (power) and a fresh
sample of the same traffic (false alarms), over many windows.

The traffic is two support topics written with one vocabulary (`topic_prompts`): half the
prompts lead with a billing word, half with a shipping word, and every word is used as often in
either kind of window. The reference and unchanged traffic keep each prompt on one topic; the
shifted traffic pairs a billing word with a shipping word, so the words and lengths stay and the
meaning changes, which term and length histograms do not see
(tests/monitoring/test_semantic_drift.py).

Each trial draws a new reference window and a new live window from those generators and runs
`mmd_permutation_test` on their embeddings (the gateway's encoder; every distinct prompt is
embedded once). `measure_sliding_power` asks how soon the gateway's sliding live window sees a
shift that has just begun: its last k prompts shifted, the rest not. Run as `turnout bench
drift --json [--sliding 500]` (the `signals` extra).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monitoring.semantic_drift import mmd_permutation_test

BILLING = ["invoice", "refund", "charge", "subscription", "payment", "receipt"]
SHIPPING = ["parcel", "delivery", "courier", "tracking number", "package", "shipment"]
TEMPLATES = [
    "Something is wrong with my {a} and my {b}.",
    "Please check the {a} and the {b} for me.",
    "I have a question about the {a} and the {b}.",
    "Why are my {a} and {b} not updated?",
]

Embed = Callable[[Sequence[str]], "np.ndarray[Any, Any]"]


def topic_prompts(rng: random.Random, coherent: bool, count: int) -> list[str]:
    """`count` prompts, on one topic each (`coherent`) or mixing the two."""
    out = []
    for index in range(count):
        first = BILLING if index % 2 == 0 else SHIPPING
        other = SHIPPING if first is BILLING else BILLING
        second = first if coherent else other
        a = rng.choice(first)
        b = rng.choice([word for word in second if word != a])
        out.append(rng.choice(TEMPLATES).format(a=a, b=b))
    return out


def wilson_interval(hits: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate of `hits` in `trials`."""
    if trials == 0:
        return (0.0, 1.0)
    rate = hits / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
        / (1 + z * z / trials)
    )  # fmt: skip
    return (max(0.0, centre - half), min(1.0, centre + half))


class _Embeddings:
    """Each distinct prompt embedded once."""

    def __init__(self, embed: Embed) -> None:
        self._embed = embed
        self._rows: dict[str, np.ndarray[Any, Any]] = {}

    def __call__(self, texts: list[str]) -> np.ndarray[Any, Any]:
        new = sorted({text for text in texts if text not in self._rows})
        if new:
            for text, row in zip(new, self._embed(new), strict=True):
                self._rows[text] = row
        return np.vstack([self._rows[text] for text in texts])


SLIDING_SHIFTS = (25, 50, 100, 200)  # shifted prompts at the end of a sliding window


def _rate(hits: int, trials: int) -> dict[str, Any]:
    return {
        "rate": hits / trials,
        "interval_95": [round(v, 4) for v in wilson_interval(hits, trials)],
    }


class _Trials:
    """Runs the test, as the gateway does, on pairs of windows of prompts embedded once."""

    def __init__(self, embed: Embed, permutations: int, alpha: float, seed: int) -> None:
        self._embeddings = _Embeddings(embed)
        self._permutations = permutations
        self._alpha = alpha
        self._seed = seed
        self.cpu_s = 0.0

    def flagged(self, reference: list[str], live: list[str], trial: int) -> bool:
        """Whether the live window drifts from the reference, timing the test alone."""
        reference_rows, live_rows = self._embeddings(reference), self._embeddings(live)
        started = time.process_time()
        result = mmd_permutation_test(
            reference_rows, live_rows, self._permutations, self._alpha,
            seed=self._seed * 1_000_003 + trial,
        )  # fmt: skip
        self.cpu_s += time.process_time() - started
        return result.drifted


def measure_drift_power(
    embed: Embed,
    windows: Sequence[int] = (25, 50, 100),
    trials: int = 1000,
    permutations: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per window size: the share of shifted live windows flagged (power) and of unchanged ones
    flagged (false alarms), each with its 95% interval, over `trials` fresh pairs of windows."""
    rng = random.Random(seed)
    runner = _Trials(embed, permutations, alpha, seed)
    reports = []
    for size in windows:
        runner.cpu_s = 0.0
        flagged = {"shifted": 0, "unchanged": 0}
        for trial in range(trials):
            for kind, coherent in (("shifted", False), ("unchanged", True)):
                reference = topic_prompts(rng, True, size)
                live = topic_prompts(rng, coherent, size)
                flagged[kind] += runner.flagged(reference, live, trial)
        power, false_alarms = _rate(flagged["shifted"], trials), _rate(flagged["unchanged"], trials)
        reports.append(
            {
                "window": size,
                "trials": trials,
                "permutations": permutations,
                "alpha": alpha,
                "power": power["rate"],
                "power_interval_95": power["interval_95"],
                "false_alarm_rate": false_alarms["rate"],
                "false_alarm_interval_95": false_alarms["interval_95"],
                "test_cpu_ms": round(runner.cpu_s / (2 * trials) * 1e3, 2),
            }
        )
    return reports


def measure_sliding_power(
    embed: Embed,
    window: int = 500,
    shifted: Sequence[int] = SLIDING_SHIFTS,
    trials: int = 200,
    permutations: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per count k: the share of live windows of `window` prompts whose last k are shifted
    (a shift k answers old, as the gateway's sliding window holds it) that are flagged."""
    rng = random.Random(seed)
    runner = _Trials(embed, permutations, alpha, seed)
    reports = []
    for count in shifted:
        if not 0 < count <= window:
            raise ValueError(f"{count} shifted prompts do not fit a window of {window}")
        flagged = 0
        for trial in range(trials):
            reference = topic_prompts(rng, True, window)
            live = topic_prompts(rng, True, window - count) + topic_prompts(rng, False, count)
            flagged += runner.flagged(reference, live, trial)
        power = _rate(flagged, trials)
        reports.append(
            {
                "window": window,
                "shifted_in_window": count,
                "trials": trials,
                "power": power["rate"],
                "power_interval_95": power["interval_95"],
            }
        )
    return reports
