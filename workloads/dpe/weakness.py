"""The weakness brief and the weakness table, both built from a diagnosis.

The weakness brief is the soft steering channel: text injected into the planner and question
generator prompts saying which capability types and error types to target. The quotas in
`dpe.mixture` are the hard channel. The weakness table is the memory the paper lacks: per-type
accuracy across iterations, so a run can tell which weaknesses were fixed and which regressed.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, NonNegativeInt

from dpe.mixture import TypeStats
from dpe.taxonomy import CapabilityType, ErrorType

DEFAULT_HIGH_TIER_BELOW = 0.70
"""Accuracy below this puts a type in the high tier; reaching it again counts as fixed."""

DEFAULT_LOW_TIER_FROM = 0.85
"""Accuracy from this up puts a type in the low tier."""

DEFAULT_EXAMPLES_PER_FOCUS = 5
"""Error descriptions kept per focus error type, as evidence for whoever writes the direction."""

DEFAULT_REGRESSION_TOLERANCE = 0.05
"""An accuracy drop of at least this much since the previous iteration flags a regression."""

_DELTA_DIGITS = 9
"""Deltas are rounded to this many digits so that float noise cannot flip a regression flag."""

BRIEF_HEADER = "[Weakness brief: where the model failed the diagnosis, and what to generate]"


class Tier(StrEnum):
    """Priority of a capability type in the weakness brief, decided by its probe accuracy.

    - high: every error type seen is a focus, most frequent first;
    - moderate: only the most frequent error type is a focus;
    - low: the type is already strong, so generation for it should shrink.
    """

    high = "high"
    moderate = "moderate"
    low = "low"


_SECTION_TITLES: dict[Tier, str] = {
    Tier.high: "HIGH PRIORITY",
    Tier.moderate: "MODERATE PRIORITY",
    Tier.low: "LOW PRIORITY",
}


def tier_for(
    accuracy: float,
    *,
    high_below: float = DEFAULT_HIGH_TIER_BELOW,
    low_from: float = DEFAULT_LOW_TIER_FROM,
) -> Tier:
    """The tier of a type with this accuracy; each threshold belongs to the tier above it."""
    if not high_below <= low_from:
        raise ValueError(f"high_below ({high_below}) must not exceed low_from ({low_from})")
    if accuracy < high_below:
        return Tier.high
    if accuracy < low_from:
        return Tier.moderate
    return Tier.low


@dataclass(frozen=True)
class TypeDiagnosis:
    """What the diagnosis found for one capability type.

    `errors` counts judged failures by error type; judge and image failures are not the model's
    errors and are left out, so the histogram may sum to fewer than the failures. `examples`
    holds the judge's error descriptions per error type, most representative first.
    """

    stats: TypeStats
    errors: Mapping[ErrorType, int] = field(default_factory=dict)
    examples: Mapping[ErrorType, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {str(e): n for e, n in self.errors.items() if n < 0}
        if bad:
            raise ValueError(f"error counts must be non-negative, got {bad}")
        failures = self.stats.total - self.stats.correct
        if sum(self.errors.values()) > failures:
            raise ValueError(
                f"{sum(self.errors.values())} attributed errors exceed the {failures} failures"
            )


class FocusError(BaseModel):
    """One error type the brief asks generation to target for a capability type."""

    error_type: ErrorType
    count: NonNegativeInt
    share: float
    """Fraction of the type's attributed errors that have this error type."""
    examples: list[str] = []
    direction: str | None = None
    """Generation guidance written by an LLM; None until written, then the fallback is used."""


class BriefEntry(BaseModel):
    """One capability type's line in the weakness brief."""

    capability_type: CapabilityType
    tier: Tier
    accuracy: float
    count: NonNegativeInt
    focus: list[FocusError] = []


class WeaknessBrief(BaseModel):
    """Entries ordered high tier first, ascending accuracy within a tier, then canonical order."""

    entries: list[BriefEntry] = []


_TIER_ORDER: dict[Tier, int] = {t: i for i, t in enumerate(Tier)}
_CAPABILITY_ORDER: dict[CapabilityType, int] = {t: i for i, t in enumerate(CapabilityType)}
_ERROR_ORDER: dict[ErrorType, int] = {e: i for i, e in enumerate(ErrorType)}


def _focus(diagnosis: TypeDiagnosis, tier: Tier, max_examples: int) -> list[FocusError]:
    seen = sorted(
        (e for e, n in diagnosis.errors.items() if n > 0),
        key=lambda e: (-diagnosis.errors[e], _ERROR_ORDER[e]),
    )
    chosen = {Tier.high: seen, Tier.moderate: seen[:1], Tier.low: []}[tier]
    attributed = sum(diagnosis.errors.values())
    return [
        FocusError(
            error_type=e,
            count=diagnosis.errors[e],
            share=diagnosis.errors[e] / attributed,
            examples=list(diagnosis.examples.get(e, ()))[:max_examples],
        )
        for e in chosen
    ]


def build_brief(
    per_type: Mapping[CapabilityType, TypeDiagnosis],
    *,
    high_below: float = DEFAULT_HIGH_TIER_BELOW,
    low_from: float = DEFAULT_LOW_TIER_FROM,
    max_examples: int = DEFAULT_EXAMPLES_PER_FOCUS,
) -> WeaknessBrief:
    """Tier every observed capability type and pick the error types generation should target.

    Types with no probe items are left out: there is nothing to say about them. Directions are
    left empty for a later LLM pass; `render_text` falls back to `fallback_direction`.
    """
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    entries = []
    for capability_type, diagnosis in per_type.items():
        if diagnosis.stats.total == 0:
            continue
        accuracy = diagnosis.stats.accuracy
        tier = tier_for(accuracy, high_below=high_below, low_from=low_from)
        entries.append(
            BriefEntry(
                capability_type=capability_type,
                tier=tier,
                accuracy=accuracy,
                count=diagnosis.stats.total,
                focus=_focus(diagnosis, tier, max_examples),
            )
        )
    entries.sort(
        key=lambda b: (_TIER_ORDER[b.tier], b.accuracy, _CAPABILITY_ORDER[b.capability_type])
    )
    return WeaknessBrief(entries=entries)


def fallback_direction(capability_type: CapabilityType, error_type: ErrorType) -> str:
    """A fixed generation direction for when no LLM writes one, so the brief is never empty."""
    return (
        f"Write new {capability_type} questions, from easy to hard, whose correct answer "
        f"depends on avoiding {error_type.description}."
    )


def render_text(brief: WeaknessBrief) -> str:
    """The guidance text injected into the planner and question generator prompts."""
    lines = [BRIEF_HEADER]
    if not brief.entries:
        lines.append("No capability type was diagnosed; generate a balanced mix.")
    for tier in Tier:
        entries = [b for b in brief.entries if b.tier is tier]
        if not entries:
            continue
        lines.append(_SECTION_TITLES[tier])
        for entry in entries:
            lines.append(
                f"[{entry.capability_type}] accuracy {entry.accuracy:.1%} (n={entry.count})"
            )
            if tier is Tier.low:
                lines.append("  - already strong: generate less of this type, favour weaker ones")
            elif not entry.focus:
                lines.append("  - no judged error type recorded: vary difficulty and sub-skills")
            for f in entry.focus:
                direction = f.direction or fallback_direction(entry.capability_type, f.error_type)
                cases = "case" if f.count == 1 else "cases"
                lines.append(
                    f"  - {f.error_type}: {f.count} {cases} ({f.share:.0%}) -> {direction}"
                )
    return "\n".join(lines)


class WeaknessTable(BaseModel):
    """Per-type probe results for every diagnosed iteration, keyed by iteration index."""

    model_config = ConfigDict(frozen=True)

    iterations: dict[NonNegativeInt, dict[CapabilityType, TypeStats]] = {}


class TableRow(BaseModel):
    """One capability type's standing: its latest accuracy and how it moved since before."""

    capability_type: CapabilityType
    iteration: int
    accuracy: float
    count: int
    previous_iteration: int | None
    delta: float | None
    fixed: bool
    """Was in the high tier at its previous iteration and has now left it."""
    regressed: bool
    """Dropped by at least the regression tolerance since its previous iteration."""


def update(
    table: WeaknessTable, iteration: int, stats: Mapping[CapabilityType, TypeStats]
) -> WeaknessTable:
    """A new table with this iteration's results; updating an iteration again replaces it.

    Types without probe items are not recorded, so they never count as a previous observation.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    recorded = {t: stats[t] for t in CapabilityType if t in stats and stats[t].total > 0}
    iterations = {**table.iterations, iteration: recorded}
    return WeaknessTable(iterations={k: iterations[k] for k in sorted(iterations)})


def rows(
    table: WeaknessTable,
    *,
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE,
    high_below: float = DEFAULT_HIGH_TIER_BELOW,
) -> list[TableRow]:
    """One row per capability type ever diagnosed, in canonical order.

    A type's latest result comes from the last iteration that diagnosed it; its delta compares
    with the iteration before that which also diagnosed it.
    """
    if not regression_tolerance > 0:
        raise ValueError(f"regression_tolerance must be > 0, got {regression_tolerance}")
    result = []
    for capability_type in CapabilityType:
        seen = [k for k in sorted(table.iterations) if capability_type in table.iterations[k]]
        if not seen:
            continue
        latest = table.iterations[seen[-1]][capability_type]
        previous_iteration = seen[-2] if len(seen) > 1 else None
        delta = None
        fixed = regressed = False
        if previous_iteration is not None:
            previous = table.iterations[previous_iteration][capability_type]
            delta = round(latest.accuracy - previous.accuracy, _DELTA_DIGITS)
            fixed = previous.accuracy < high_below <= latest.accuracy
            regressed = delta <= -regression_tolerance
        result.append(
            TableRow(
                capability_type=capability_type,
                iteration=seen[-1],
                accuracy=latest.accuracy,
                count=latest.total,
                previous_iteration=previous_iteration,
                delta=delta,
                fixed=fixed,
                regressed=regressed,
            )
        )
    return result
