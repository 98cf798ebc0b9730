"""Semantic drift: MMD between a reference and a live window of prompt embeddings.

Term and length histograms (`monitoring.drift`) miss a change of meaning that keeps the words
and the lengths. This compares embedding distributions instead: the unbiased squared maximum
mean discrepancy (MMD²) with a Gaussian kernel, whose bandwidth is a tenth of the median
squared pairwise distance of the pooled sample (sentence embeddings crowd together: at the
plain median heuristic a same-vocabulary topic shift of 100 prompts went unseen, at a tenth it
stood at three times the threshold), and a permutation test for its threshold: the windows
are pooled and reshuffled `permutations` times, and the live window drifts when at most
`floor(alpha * (permutations + 1)) - 1` shuffled MMD² reach its own, that is when its
permutation p-value is at most alpha. When both windows come from one distribution every
ordering of the pooled sample is equally likely, so a window that did not drift is flagged
with probability at most alpha. The threshold published beside MMD² is the shuffled value it
must exceed. The shuffles are one matrix product: each is a 0/1 column of which pooled rows
it puts in the reference window, and the kernel sums follow from K times those columns. All of
it is numpy work for a thread or a process off the request path; embeddings come from the
`signals` extra's encoder.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - the base install has no numpy
    raise ImportError(
        "semantic drift needs the signals extra: pip install 'turnout[signals]'"
    ) from error

from monitoring import metrics

Array = np.ndarray[Any, Any]


def _squared_distances(x: Array) -> Array:
    norms = (x * x).sum(axis=1)
    return np.asarray(np.maximum(norms[:, None] + norms[None, :] - 2.0 * x @ x.T, 0.0))


def mmd2_of_splits(kernel: Array, members: Array) -> Array:
    """Unbiased MMD² of each split of the pooled sample: column j of `members` (0/1, one row
    per pooled row) marks the rows of split j's first window, the rest are its second. All
    splits in one product: with x a column and r the kernel's row sums, x'Kx is the first
    window's sum, r.x - x'Kx the cross sum and the total - 2 r.x + x'Kx the second window's."""
    x = members.astype(np.float64)
    m = x.sum(axis=0)
    n = len(kernel) - m
    diagonal = np.diag(kernel)
    rows = kernel.sum(axis=1)
    total = rows.sum()
    within_x = (x * (kernel @ x)).sum(axis=0)
    rows_x = rows @ x
    diagonal_x = diagonal @ x
    xx = (within_x - diagonal_x) / (m * (m - 1))
    yy = (total - 2.0 * rows_x + within_x - (diagonal.sum() - diagonal_x)) / (n * (n - 1))
    xy = (rows_x - within_x) / (m * n)
    return np.asarray(xx + yy - 2.0 * xy)


def exceedances_allowed(permutations: int, alpha: float) -> int:
    """How many shuffled MMD² may reach the observed one for the window to count as drifted:
    then its p-value, (1 + count) / (permutations + 1), is at most alpha."""
    allowed = math.floor(alpha * (permutations + 1) + 1e-9) - 1
    if allowed < 0:
        raise ValueError(
            f"{permutations} permutations cannot show a p-value of {alpha}: "
            f"use at least {math.ceil(1 / alpha) - 1}"
        )
    return allowed


@dataclass(frozen=True, slots=True)
class DriftTest:
    """One comparison: the MMD², the permutation threshold at `alpha`, and the p-value."""

    mmd2: float
    threshold: float
    p_value: float

    @property
    def drifted(self) -> bool:
        return self.mmd2 > self.threshold


BANDWIDTH_SCALE = 0.1


def mmd_permutation_test(
    reference: Array,
    live: Array,
    permutations: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
    bandwidth_scale: float = BANDWIDTH_SCALE,
) -> DriftTest:
    """MMD² of `live` against `reference` and its permutation threshold (both need ≥ 2 rows);
    `permutations` must be at least 1 / alpha - 1."""
    allowed = exceedances_allowed(permutations, alpha)
    pooled = np.vstack([reference, live]).astype(np.float64)
    distances = _squared_distances(pooled)
    off_diagonal = distances[~np.eye(len(pooled), dtype=bool)]
    bandwidth = float(np.median(off_diagonal)) * bandwidth_scale or 1.0
    kernel = np.exp(-distances / bandwidth)
    size = len(reference)
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((permutations, len(pooled))), axis=1)[:, :size]
    # Column 0 is the observed split (the reference rows first), the others the shuffles.
    members = np.zeros((len(pooled), permutations + 1))
    members[:size, 0] = 1.0
    members[chosen, 1 + np.arange(permutations)[:, None]] = 1.0
    splits = mmd2_of_splits(kernel, members)
    observed = float(splits[0])
    shuffled = np.sort(splits[1:])[::-1]
    # Drifted when at most `allowed` shuffled values reach the observed one, i.e. when it
    # exceeds the (allowed + 1)-th largest.
    threshold = float(shuffled[allowed])
    p_value = (1 + int((shuffled >= observed).sum())) / (permutations + 1)
    return DriftTest(observed, threshold, p_value)


class SemanticDriftMonitor:
    """Per (route, version): a reference window (given, or the first `window` embeddings seen)
    and a live window (the last `window`), compared on demand, off the request path."""

    def __init__(self, window: int = 500, permutations: int = 200, alpha: float = 0.01) -> None:
        exceedances_allowed(permutations, alpha)  # too few permutations: refused here, not later
        self._window = window
        self._permutations = permutations
        self._alpha = alpha
        self._reference: dict[tuple[str, str], list[Array]] = {}
        self._given: set[tuple[str, str]] = set()  # references set, not filled from traffic
        self._live: dict[tuple[str, str], deque[Array]] = {}

    def set_reference(self, route: str, version: str, embeddings: Array) -> None:
        """The reference window, e.g. the embeddings of the adapter's training prompts (kept
        as given even when smaller than `window`: live prompts never top it up)."""
        self._reference[(route, version)] = list(embeddings[-self._window :])
        self._given.add((route, version))

    def observe(self, route: str, version: str, embedding: Array) -> None:
        key = (route, version)
        reference = self._reference.setdefault(key, [])
        if key not in self._given and len(reference) < self._window:
            reference.append(embedding)
            return
        live = self._live.setdefault(key, deque(maxlen=self._window))
        live.append(embedding)

    def full(self, route: str, version: str) -> bool:
        """Whether both windows are full (a test can run)."""
        key = (route, version)
        reference = self._reference.get(key, [])
        ready = len(reference) >= 2 if key in self._given else len(reference) == self._window
        return ready and len(self._live.get(key, ())) >= self._window

    def test(self, route: str, version: str) -> DriftTest | None:
        """The comparison once both windows are full; None before."""
        if not self.full(route, version):
            return None
        key = (route, version)
        return mmd_permutation_test(
            np.vstack(self._reference[key]),
            np.vstack(list(self._live[key])),
            self._permutations,
            self._alpha,
        )

    def refresh_gauges(
        self, keys: Iterable[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str], DriftTest]:
        """Tests every full profile (or those of `keys`) and publishes MMD² and its threshold
        as gauges."""
        results: dict[tuple[str, str], DriftTest] = {}
        for route, version in list(self._reference if keys is None else keys):
            result = self.test(route, version)
            if result is None:
                continue
            results[(route, version)] = result
            metrics.SEMANTIC_DRIFT_MMD.labels(route, version, "mmd2").set(result.mmd2)
            metrics.SEMANTIC_DRIFT_MMD.labels(route, version, "threshold").set(result.threshold)
        return results
