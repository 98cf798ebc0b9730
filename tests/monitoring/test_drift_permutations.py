"""The semantic drift test's permutation rule, on small synthetic samples (no encoder): the
one-product MMD² of every shuffle equals the direct one, a window counts as drifted exactly
when its p-value is at most alpha, and windows from one distribution are flagged at most alpha
of the time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")

from monitoring.semantic_drift import (  # noqa: E402
    SemanticDriftMonitor,
    _squared_distances,
    exceedances_allowed,
    mmd2_of_splits,
    mmd_permutation_test,
)


def mmd2_direct(kernel: Any, size_x: int) -> float:
    """Unbiased MMD² of the kernel's first `size_x` rows against the rest, summed directly."""
    kxx, kyy, kxy = kernel[:size_x, :size_x], kernel[size_x:, size_x:], kernel[:size_x, size_x:]
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    pooled=st.integers(4, 40),
    first=st.integers(2, 20),
    splits=st.integers(1, 12),
)
def test_every_split_in_one_product_equals_the_direct_mmd2(
    seed: int, pooled: int, first: int, splits: int
) -> None:
    first = min(first, pooled - 2)
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((pooled, 3))
    kernel = np.exp(-_squared_distances(sample) / 2.0)
    orders = [rng.permutation(pooled) for _ in range(splits)]
    members = np.zeros((pooled, splits))
    for column, order in enumerate(orders):
        members[order[:first], column] = 1.0
    direct = [mmd2_direct(kernel[np.ix_(order, order)], first) for order in orders]
    assert mmd2_of_splits(kernel, members) == pytest.approx(direct, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(3, 8),
    shift=st.sampled_from([0.0, 0.5, 1.5]),
    plan=st.sampled_from([(19, 0.1), (39, 0.05), (99, 0.05), (200, 0.01)]),
)
def test_a_window_is_drifted_exactly_when_its_p_value_is_at_most_alpha(
    seed: int, size: int, shift: float, plan: tuple[int, float]
) -> None:
    permutations, alpha = plan
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal((size, 2))
    live = rng.standard_normal((size, 2)) + shift
    result = mmd_permutation_test(reference, live, permutations, alpha, seed=seed)
    assert result.drifted == (result.p_value <= alpha)


def test_too_few_permutations_for_alpha_is_refused() -> None:
    assert exceedances_allowed(99, 0.01) == 0
    assert exceedances_allowed(200, 0.01) == 1
    with pytest.raises(ValueError, match="at least 99"):
        exceedances_allowed(98, 0.01)
    with pytest.raises(ValueError, match="at least 19"):
        SemanticDriftMonitor(window=50, permutations=10, alpha=0.05)


def test_windows_from_one_distribution_are_flagged_at_most_alpha_of_the_time() -> None:
    """4,000 pairs of 8-row windows, 19 shuffles, alpha 0.1: the rule flags 2 in 20 orderings,
    so about 10%. Reading the threshold as the shuffles' 0.9 quantile instead flagged about
    15% (three in 20), which this bound (10% plus four standard errors) refuses."""
    rng = np.random.default_rng(7)
    trials, alpha = 4000, 0.1
    flagged = sum(
        mmd_permutation_test(
            rng.standard_normal((8, 2)), rng.standard_normal((8, 2)), 19, alpha, seed=trial
        ).drifted
        for trial in range(trials)
    )
    bound = alpha + 4 * (alpha * (1 - alpha) / trials) ** 0.5
    assert flagged / trials <= bound
    assert flagged / trials >= alpha - 4 * (alpha * (1 - alpha) / trials) ** 0.5
