"""Statistics of judgements: the share judged bad and its Wilson score interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Share:
    """`bad` of `reviewed`, the share, and its 95 % Wilson interval (None when nothing reviewed)."""

    reviewed: int
    bad: int
    share: float | None
    low: float | None
    high: float | None


def wilson(bad: int, reviewed: int, z: float = Z_95) -> Share:
    """The Wilson score interval of a binomial share; sound for small counts and for 0 or n."""
    if reviewed <= 0:
        return Share(0, 0, None, None, None)
    p = bad / reviewed
    denominator = 1 + z * z / reviewed
    centre = (p + z * z / (2 * reviewed)) / denominator
    half = z * math.sqrt(p * (1 - p) / reviewed + z * z / (4 * reviewed * reviewed)) / denominator
    return Share(reviewed, bad, p, max(0.0, centre - half), min(1.0, centre + half))
