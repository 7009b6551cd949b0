"""95% intervals for the report and the ablation plot: Wilson for a proportion, Newcombe's hybrid
score interval for a change between two proportions, Student t for a mean across seeds.

A per-type benchmark accuracy rests on a few dozen items and an ablation on a handful of seeds, so a
change means little without its interval. Pure functions of counts and values, so the report and the
plots show intervals without doing statistics themselves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""

_BISECTION_STEPS = 100
"""Halvings of the search for a t quantile: far more than a float's precision needs."""


def wilson(p: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` observed on `n` items.

    Chosen over the normal approximation because it stays inside [0, 1] and keeps a width at
    p = 0 or 1, which per-type accuracies on a few items often reach.
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one item, got n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion lies in [0, 1], got {p}")
    shrink = 1.0 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / shrink
    half = Z95 * math.sqrt(p * (1.0 - p) / n + Z95**2 / (4 * n * n)) / shrink
    # At p = 0 or 1 the bound is exactly 0 or 1; floating point would leave it a hair inside.
    return 0.0 if p == 0.0 else max(centre - half, 0.0), 1.0 if p == 1.0 else min(centre + half, 1.0)


def proportion_change(p_after: float, n_after: float, p_before: float, n_before: float) -> tuple[float, float]:
    """95% interval of `p_after - p_before` (Newcombe's hybrid score method, from two Wilson intervals).

    The two proportions count as independent samples. Two models evaluated on the same items tend to
    get the same items right, so the interval is then wider than a paired one: it errs towards
    calling a change noise.
    """
    low_after, high_after = wilson(p_after, n_after)
    low_before, high_before = wilson(p_before, n_before)
    change = p_after - p_before
    return (
        change - math.hypot(p_after - low_after, high_before - p_before),
        change + math.hypot(high_after - p_after, p_before - low_before),
    )


def _two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with `df` degrees of freedom (Abramowitz and Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        first = 2
    else:
        term = math.cos(theta)
        total = 0.0 if df == 1 else term
        first = 3
    for j in range(first, df - 1, 2):
        term *= cos2 * (j - 1) / j
        total += term
    if df % 2 == 0:
        return math.sin(theta) * total
    return 2.0 / math.pi * (theta + math.sin(theta) * total)


def t_quantile(df: int) -> float:
    """Two-sided 95% Student t quantile for `df` degrees of freedom, exact for any df (no table to run out)."""
    if df < 1:
        raise ValueError(f"the t distribution needs at least one degree of freedom, got {df}")
    low, high = Z95, 20.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _two_sided_mass(middle, df) < 0.95:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean of `values` and its 95% t-interval (low, high); a single value has none, so it is refused."""
    if len(values) < 2:
        raise ValueError(f"a t-interval needs at least two values, got {len(values)}")
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half
