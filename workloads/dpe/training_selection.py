"""Choosing the training set from pass rates: the window, the mixture, and the fill. Pure functions.

A sample's pass rate is correct answers over answers that gave a readable final answer (answers
with none are left out of the denominator; a sample where no answer was readable has no pass rate).
Samples inside the window [low, high] (inclusive) are what the current model solves only
sometimes. The kept set is balanced back to the generation mixture: each type gets its share of the
target size, taking in-window samples nearest the window's centre first. A type short of in-window
samples is filled from its own samples with the nearest pass rates outside the window (not at random
from anywhere); slots a type cannot fill at all go to the other types in proportion to the mixture.
Every filled sample is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from dpe.mixture import allocate_quotas
from dpe.taxonomy import CapabilityType


class Reason(StrEnum):
    """Why a sample is in the training set."""

    window = "window"
    filled = "filled"
    """Outside the window, taken to reach the type's share: nearest pass rate first."""
    redistributed = "redistributed"
    """Taken beyond its type's share, for a slot another type could not fill (in or out of the window)."""


@dataclass(frozen=True)
class Scored:
    id: str
    capability_type: CapabilityType
    correct: int
    readable: int
    answers: int

    @property
    def pass_rate(self) -> float | None:
        return self.correct / self.readable if self.readable else None


def window_distance(rate: float | None, low: float, high: float) -> float:
    """0 inside the window, else how far outside; infinite without a pass rate."""
    if rate is None:
        return float("inf")
    if rate < low:
        return low - rate
    return rate - high if rate > high else 0.0


@dataclass
class Selection:
    chosen: dict[str, Reason] = field(default_factory=dict)
    shares: dict[CapabilityType, int] = field(default_factory=dict)
    in_window: int = 0

    def by_type(self, samples: Sequence[Scored]) -> dict[str, dict[str, int]]:
        types = {s.id: s.capability_type for s in samples}
        table: dict[str, dict[str, int]] = {}
        for sample_id, reason in self.chosen.items():
            row = table.setdefault(types[sample_id].value, {r.value: 0 for r in Reason})
            row[reason.value] += 1
        return dict(sorted(table.items()))


def _ranked(samples: Sequence[Scored], low: float, high: float) -> tuple[list[Scored], list[Scored]]:
    """In-window samples (nearest the centre first) and out-of-window ones with a pass rate (nearest first)."""
    centre = (low + high) / 2
    inside = sorted(
        (s for s in samples if window_distance(s.pass_rate, low, high) == 0.0),
        key=lambda s: (abs((s.pass_rate or 0.0) - centre), s.id),
    )
    outside = sorted(
        (s for s in samples if 0.0 < window_distance(s.pass_rate, low, high) < float("inf")),
        key=lambda s: (window_distance(s.pass_rate, low, high), s.id),
    )
    return inside, outside


def select(
    samples: Sequence[Scored], mixture: Mapping[CapabilityType, float], target: int, low: float, high: float
) -> Selection:
    """The training set: `target` samples (or all there are), balanced to `mixture`."""
    selection = Selection()
    groups: dict[CapabilityType, tuple[list[Scored], list[Scored]]] = {}
    for capability in CapabilityType:
        members = [s for s in samples if s.capability_type is capability]
        if members:
            groups[capability] = _ranked(members, low, high)
    selection.in_window = sum(len(inside) for inside, _ in groups.values())
    weights = {t: mixture.get(t, 0.0) for t in groups}
    if not groups or target == 0:
        return selection
    if sum(weights.values()) <= 0:
        weights = {t: 1.0 for t in groups}
    selection.shares = allocate_quotas({t: w for t, w in weights.items() if w > 0}, target)
    spare: dict[CapabilityType, list[tuple[Scored, Reason]]] = {}
    missing = 0
    for capability, (inside, outside) in groups.items():
        share = selection.shares.get(capability, 0)
        queue = [(s, Reason.window) for s in inside] + [(s, Reason.filled) for s in outside]
        for sample, reason in queue[:share]:
            selection.chosen[sample.id] = reason
        missing += max(share - len(queue), 0)
        spare[capability] = queue[share:]
    while missing > 0:
        open_types = {t: weights[t] or 1e-9 for t, rest in spare.items() if rest}
        if not open_types:
            break
        extra = allocate_quotas(open_types, missing)
        taken = 0
        for capability, count in extra.items():
            for sample, _ in spare[capability][:count]:
                selection.chosen[sample.id] = Reason.redistributed
                taken += 1
            spare[capability] = spare[capability][count:]
        if taken == 0:
            break
        missing -= taken
    return selection
