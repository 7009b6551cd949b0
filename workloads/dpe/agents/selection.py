"""Which image a sample uses: candidates, their ratings, and the rules that choose among them.

A rating counts only when the selector calls the image usable AND its score reaches the type's
threshold, compared in code: a threshold that only the selector's prompt states is a hint, not a
rule. The seed image is a candidate (the edit planner may build on it) but is never used unedited,
whatever the number of candidates, since a sample on its seed's own picture brings no new image; so
it is not rated either, and always has a place on the edit shortlist.
Search results that are near-copies of the seed image are the seed image by another route and are
dropped for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dpe.agents.replies import Rating
from dpe.image_quality import DUPLICATE_DISTANCE, hamming
from dpe.taxonomy import CapabilityType
from dpe.tools.search import Candidate

USABLE_SCORE: dict[CapabilityType, float] = {
    CapabilityType.geometric: 7.5,
    CapabilityType.medical: 7.0,
    CapabilityType.chart_graph: 7.0,
    CapabilityType.text_dense: 7.0,
    CapabilityType.diagram: 7.0,
    CapabilityType.math_formula: 7.5,
    CapabilityType.map: 7.0,
    CapabilityType.natural_scene: 6.5,
    CapabilityType.artistic: 6.0,
    CapabilityType.everyday_object: 6.5,
    CapabilityType.architectural: 6.8,
    CapabilityType.mixed: 6.5,
}
"""Lowest selector score (1-10) at which an image of each type is used."""

MAX_EDIT_CANDIDATES = 6
"""Images the edit planner looks at, best rated first."""


class Origin(StrEnum):
    """Where a candidate image came from."""

    related = "related"
    """The planner's related-image search."""
    new_element = "new_element"
    """The planner's new-element search."""
    seed = "seed"
    """The seed item's own image."""
    edit = "edit"
    """An output of the editor."""


@dataclass(frozen=True)
class ImageOption:
    """A candidate image with a key unique within its sample, for ratings and provenance."""

    key: str
    origin: Origin
    data: bytes
    phash: int | None = None
    """Perceptual hash, where known, to recognise near-copies."""
    details: dict[str, Any] = field(default_factory=dict)
    """Where it came from (URL, query, title, hash), never the bytes."""


@dataclass(frozen=True)
class Rated:
    """A candidate with the selector's rating, or the reason it could not be rated."""

    option: ImageOption
    rating: Rating | None
    error: str | None = None

    @property
    def score(self) -> float:
        """The rating's score; 0 for an image that could not be rated."""
        return self.rating.score if self.rating is not None else 0.0

    def passes(self, threshold: float) -> bool:
        """Usable by the selector's word and by the score the type requires."""
        return self.rating is not None and self.rating.usable and self.rating.score >= threshold

    def provenance(self, threshold: float) -> dict[str, Any]:
        """The candidate, its rating and the decision, without the bytes."""
        return {
            "key": self.option.key,
            "origin": self.option.origin.value,
            **self.option.details,
            "usable": None if self.rating is None else self.rating.usable,
            "score": None if self.rating is None else self.rating.score,
            "reason": self.error if self.rating is None else self.rating.reason,
            "passes": self.passes(threshold),
        }


def search_options(origin: Origin, found: Sequence[Candidate]) -> list[ImageOption]:
    """Search results as candidates, keyed by origin and rank."""
    return [
        ImageOption(f"{origin.value}-{rank}", origin, candidate.data, candidate.phash, candidate.provenance())
        for rank, candidate in enumerate(found, start=1)
    ]


def distinct(options: Sequence[ImageOption], seed_hash: int | None) -> list[ImageOption]:
    """Options without repeats: the same location twice, near-copies of each other or of the seed."""
    kept: list[ImageOption] = []
    seen_locations: set[str] = set()
    seen_hashes: list[int] = [] if seed_hash is None else [seed_hash]
    for option in options:
        location = option.details.get("location")
        value = option.phash
        if location in seen_locations:
            continue
        if value is not None and any(hamming(value, other) <= DUPLICATE_DISTANCE for other in seen_hashes):
            continue
        if location is not None:
            seen_locations.add(location)
        if value is not None:
            seen_hashes.append(value)
        kept.append(option)
    return kept


def _ranked(rated: Sequence[Rated]) -> list[Rated]:
    """Best score first; ties keep the candidates' order (search rank)."""
    return sorted(rated, key=lambda item: -item.score)


def best_usable(rated: Sequence[Rated], threshold: float) -> Rated | None:
    """The best-scoring candidate that passes the threshold and is not the unedited seed image."""
    passing = [item for item in _ranked(rated) if item.option.origin is not Origin.seed and item.passes(threshold)]
    return passing[0] if passing else None


def edit_shortlist(rated: Sequence[Rated]) -> list[Rated]:
    """The candidates the edit planner sees: the best rated first, unrated ones after them, and the
    seed picture last, whatever the others' number."""
    seeds = [item for item in rated if item.option.origin is Origin.seed]
    found = _ranked([item for item in rated if item.option.origin is not Origin.seed])
    return [*found[: MAX_EDIT_CANDIDATES - len(seeds)], *seeds]
