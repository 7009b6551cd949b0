"""Mixture control: per-type probe accuracy -> mixture weights -> per-type generation quotas.

Weak capability types get more of the next iteration's data. Everything here is a pure function
of its arguments, so a diagnosis always yields the same mixture and the same quotas.
"""

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from dpe.taxonomy import CapabilityType

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.70, 0.75, 0.85, 0.90)
"""Accuracy cut points of the paper's step function; each bucket includes its lower bound."""

DEFAULT_RAW_WEIGHTS: tuple[float, ...] = (2.0, 1.5, 1.0, 0.8, 0.5)
"""Raw weight per accuracy bucket, from the weakest bucket to the strongest."""

DEFAULT_MIN_COUNT = 5
"""Smoothed policy: fewer probe items than this and a type counts as unobserved."""

DEFAULT_PRIOR_STRENGTH = 10.0
"""Smoothed policy: the pooled accuracy counts as this many extra probe items per type."""

_CANONICAL_ORDER: dict[CapabilityType, int] = {t: i for i, t in enumerate(CapabilityType)}


class MixturePolicy(StrEnum):
    """How per-type accuracy becomes mixture weights."""

    step = "step"
    smoothed = "smoothed"


@dataclass(frozen=True)
class TypeStats:
    """Probe results for one capability type: how many items it had and how many were correct."""

    correct: int
    total: int

    def __post_init__(self) -> None:
        if self.correct < 0 or self.total < 0:
            raise ValueError(f"probe counts must be non-negative, got {self.correct}/{self.total}")
        if self.correct > self.total:
            raise ValueError(f"correct ({self.correct}) exceeds total ({self.total})")

    @property
    def accuracy(self) -> float:
        """Pass rate on the probe; a type with no items has none, so asking for it is an error."""
        if self.total == 0:
            raise ValueError("accuracy is undefined for a type with no probe items")
        return self.correct / self.total


def _check_step(thresholds: Sequence[float], raw_weights: Sequence[float]) -> None:
    """Reject step functions with overlapping buckets or a weight that cannot be normalised."""
    if any(not lo < hi for lo, hi in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds must be strictly ascending, got {list(thresholds)}")
    if len(raw_weights) != len(thresholds) + 1:
        raise ValueError(
            f"need len(thresholds) + 1 = {len(thresholds) + 1} raw weights, got {len(raw_weights)}"
        )
    if any(not (math.isfinite(w) and w > 0) for w in raw_weights):
        raise ValueError(
            f"raw weights must be positive and finite, got {list(raw_weights)}; "
            "a zero would silently drop an observed type from the mixture"
        )


def step_weight(
    accuracy: float,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    raw_weights: Sequence[float] = DEFAULT_RAW_WEIGHTS,
) -> float:
    """Raw (unnormalised) weight of a type with this accuracy under the step function.

    An accuracy equal to a threshold falls in the bucket above it, as in the paper.
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    _check_step(thresholds, raw_weights)
    return raw_weights[bisect_right(thresholds, accuracy)]


def mixture_weights(
    stats: Mapping[CapabilityType, TypeStats],
    policy: MixturePolicy = MixturePolicy.step,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    raw_weights: Sequence[float] = DEFAULT_RAW_WEIGHTS,
    min_count: int = DEFAULT_MIN_COUNT,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> dict[CapabilityType, float]:
    """Mixture weights (summing to 1) over the observed capability types.

    `step` is the paper's rule: each type's raw accuracy goes through the step function, whatever
    its sample size; types with no probe items are left out. `min_count` and `prior_strength` are
    ignored.

    `smoothed` exists because under `step` a type seen once and failed gets the top weight. Two
    guards fix that:
    - types with fewer than `min_count` probe items count as unobserved (they then compete for the
      exploration share of the quotas instead);
    - each remaining type's accuracy is shrunk towards the pooled accuracy of the whole probe,
      the posterior mean of a Beta prior centred there with `prior_strength` pseudo-items:
      (correct + s * pooled) / (total + s).
    Shrinkage was chosen over a Wilson bound because it moves small samples towards what the model
    usually scores rather than towards pessimism or optimism, and it leaves well-sampled types
    almost untouched. The shrunk accuracy then goes through the same step function, so both
    policies share one set of knobs.
    """
    policy = MixturePolicy(policy)
    _check_step(thresholds, raw_weights)
    observed = {t: s for t, s in stats.items() if s.total > 0}
    if policy is MixturePolicy.step:
        accuracies = {t: s.accuracy for t, s in observed.items()}
    else:
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        if not (math.isfinite(prior_strength) and prior_strength >= 0):
            raise ValueError(f"prior_strength must be finite and >= 0, got {prior_strength}")
        items = sum(s.total for s in observed.values())
        pooled = sum(s.correct for s in observed.values()) / items if items else 0.0
        accuracies = {
            t: (s.correct + prior_strength * pooled) / (s.total + prior_strength)
            for t, s in observed.items()
            if s.total >= min_count
        }
    if not accuracies:
        raise ValueError(
            f"no capability type has enough probe items to weigh under the {policy} policy"
        )
    raw = {
        t: step_weight(accuracies[t], thresholds=thresholds, raw_weights=raw_weights)
        for t in CapabilityType
        if t in accuracies
    }
    norm = sum(raw.values())
    return {t: w / norm for t, w in raw.items()}


def _positive_weights(weights: Mapping[CapabilityType, float]) -> dict[CapabilityType, Fraction]:
    """Validate quota weights and keep the positive ones as exact fractions."""
    for t, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weight for {t} must be finite and >= 0, got {w}")
    positive = {t: Fraction(w) for t, w in weights.items() if w > 0}
    if not positive:
        raise ValueError(f"at least one weight must be positive, got {dict(weights)}")
    return positive


def _largest_remainder(
    weights: Mapping[CapabilityType, Fraction], total: int
) -> dict[CapabilityType, int]:
    """Split `total` in proportion to `weights`: floors first, then one each by largest remainder.

    Ties go to the larger weight, then to the earlier type in canonical order. Exact rational
    arithmetic keeps float noise from flipping a quota.
    """
    norm = sum(weights.values())
    exact = {t: total * w / norm for t, w in weights.items()}
    quotas = {t: math.floor(q) for t, q in exact.items()}
    left = total - sum(quotas.values())
    ranked = sorted(exact, key=lambda t: (quotas[t] - exact[t], -weights[t], _CANONICAL_ORDER[t]))
    for t in ranked[:left]:
        quotas[t] += 1
    return quotas


def allocate_quotas(
    weights: Mapping[CapabilityType, float],
    total: int,
    *,
    exploration_share: float = 0.0,
    explore_types: Iterable[CapabilityType] | None = None,
) -> dict[CapabilityType, int]:
    """Per-type generation quotas that sum exactly to `total`.

    The paper floors each share and pools the few leftover units for every type without a quota,
    so types the probe never saw get next to nothing. Here:
    - `exploration_share` of `total` (rounded half up) is reserved for the types with no weight and
      split evenly among them by largest remainder; `explore_types` narrows that set (by default,
      every type without a positive weight). With no such type the share goes back to the rest.
    - the observed types (positive weight) share the remainder in proportion to their weights by
      largest remainder: a larger remainder wins the next unit, then a larger weight, then the
      earlier type in canonical order.
    Among observed types a larger weight never gets a smaller quota. The result lists every type of
    `weights` and every exploration type (when the share is positive), in canonical order.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not 0.0 <= exploration_share < 1.0:
        raise ValueError(f"exploration_share must lie in [0, 1), got {exploration_share}")
    observed = _positive_weights(weights)
    if explore_types is None:
        candidates = set(CapabilityType) - observed.keys()
    else:
        candidates = set(explore_types)
    clash = [str(t) for t in CapabilityType if t in candidates and t in observed]
    if clash:
        raise ValueError(f"explore types already have a positive weight: {clash}")
    explore = candidates if exploration_share > 0 else set()
    explore_total = 0
    if explore:
        explore_total = math.floor(total * Fraction(exploration_share) + Fraction(1, 2))
    quotas = dict.fromkeys(weights.keys() | explore, 0)
    quotas.update(_largest_remainder(observed, total - explore_total))
    if explore:
        quotas.update(_largest_remainder(dict.fromkeys(explore, Fraction(1)), explore_total))
    return {t: quotas[t] for t in CapabilityType if t in quotas}


def floor_quotas(
    weights: Mapping[CapabilityType, float], total: int
) -> tuple[dict[CapabilityType, int], int]:
    """The paper's quotas: floor(total * w) per type, keeping only types whose quota is positive.

    Returns the quotas and the crumbs (total minus their sum) that the paper leaves to a shared
    flexible pool. Kept to compare against `allocate_quotas` and to reproduce the paper's runs.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    positive = _positive_weights(weights)
    norm = sum(positive.values())
    floors = {t: math.floor(total * w / norm) for t, w in positive.items()}
    quotas = {t: floors[t] for t in CapabilityType if floors.get(t, 0) > 0}
    return quotas, total - sum(quotas.values())
