"""Small statistics helpers shared by the benchmarks (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy's default.

    Returns NaN for an empty sequence.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError("q: must be between 0 and 100")
    if not values:
        return math.nan
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or either is NaN."""
    if not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b
