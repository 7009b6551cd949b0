"""Weakness brief tiers, ordering and text; weakness table deltas and flags across iterations."""

import pytest

from dpe.mixture import TypeStats
from dpe.taxonomy import CapabilityType, ErrorType
from dpe.weakness import (
    BRIEF_HEADER,
    Tier,
    TypeDiagnosis,
    WeaknessBrief,
    WeaknessTable,
    build_brief,
    fallback_direction,
    render_text,
    rows,
    tier_for,
    update,
)

C = CapabilityType
E = ErrorType


def diagnosis(correct: int, total: int, **errors: int) -> TypeDiagnosis:
    return TypeDiagnosis(
        stats=TypeStats(correct=correct, total=total),
        errors={E(name): n for name, n in errors.items()},
        examples={E(name): [f"{name} example {i}" for i in range(7)] for name in errors},
    )


# --- tiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accuracy", "tier"),
    [
        (0.0, Tier.high),
        (0.6999, Tier.high),
        (0.70, Tier.moderate),
        (0.8499, Tier.moderate),
        (0.85, Tier.low),
        (1.0, Tier.low),
    ],
)
def test_tier_boundaries(accuracy: float, tier: Tier) -> None:
    assert tier_for(accuracy) is tier


def test_tier_thresholds_are_parameters() -> None:
    assert tier_for(0.75, high_below=0.8, low_from=0.9) is Tier.high
    with pytest.raises(ValueError, match=r"high_below \(0\.9\) must not exceed low_from \(0\.8\)"):
        tier_for(0.5, high_below=0.9, low_from=0.8)


# --- type diagnosis ----------------------------------------------------------------------------


def test_type_diagnosis_rejects_negative_error_counts() -> None:
    with pytest.raises(ValueError, match="reasoning_error.*-1"):
        TypeDiagnosis(TypeStats(1, 5), {E.reasoning_error: -1})


def test_type_diagnosis_rejects_more_errors_than_failures() -> None:
    with pytest.raises(ValueError, match="5 attributed errors exceed the 4 failures"):
        TypeDiagnosis(TypeStats(1, 5), {E.reasoning_error: 3, E.other: 2})


# --- brief -------------------------------------------------------------------------------------


def test_high_tier_focuses_on_every_error_type_by_count() -> None:
    errors = {"reasoning_error": 3, "calculation_error": 7, "other": 0}
    brief = build_brief(
        {C.chart_graph: diagnosis(10, 25, **errors, visual_recognition_error=3)}
    )
    (entry,) = brief.entries
    assert entry.tier is Tier.high
    assert entry.accuracy == 0.4 and entry.count == 25
    assert [f.error_type for f in entry.focus] == [
        E.calculation_error,
        E.visual_recognition_error,
        E.reasoning_error,
    ]
    assert [f.count for f in entry.focus] == [7, 3, 3]
    assert entry.focus[0].share == pytest.approx(7 / 13)
    assert all(f.direction is None for f in entry.focus)


def test_moderate_tier_focuses_on_the_most_frequent_error_type_only() -> None:
    brief = build_brief({C.map: diagnosis(8, 10, other=1, misunderstanding=1)})
    (entry,) = brief.entries
    assert entry.tier is Tier.moderate
    assert [f.error_type for f in entry.focus] == [E.misunderstanding]
    assert entry.focus[0].share == 0.5


def test_low_tier_has_no_focus() -> None:
    (entry,) = build_brief({C.map: diagnosis(17, 20, reasoning_error=3)}).entries
    assert entry.tier is Tier.low
    assert entry.focus == []


def test_examples_are_capped() -> None:
    (entry,) = build_brief({C.map: diagnosis(0, 2, other=2)}, max_examples=2).entries
    assert entry.focus[0].examples == ["other example 0", "other example 1"]
    (entry,) = build_brief({C.map: diagnosis(0, 2, other=2)}).entries
    assert len(entry.focus[0].examples) == 5


def test_brief_order_is_tier_then_accuracy_then_canonical() -> None:
    brief = build_brief(
        {
            C.mixed: diagnosis(19, 20),
            C.map: diagnosis(8, 10),
            C.medical: diagnosis(1, 2),
            C.geometric: diagnosis(6, 10),
            C.diagram: diagnosis(5, 10),
            C.artistic: diagnosis(15, 20),
            C.text_dense: diagnosis(9, 10),
            C.math_formula: diagnosis(0, 0),
        }
    )
    assert [e.capability_type for e in brief.entries] == [
        C.medical,
        C.diagram,
        C.geometric,
        C.artistic,
        C.map,
        C.text_dense,
        C.mixed,
    ]
    assert [e.tier for e in brief.entries] == [Tier.high] * 3 + [Tier.moderate] * 2 + [Tier.low] * 2


def test_brief_round_trips_through_json() -> None:
    brief = build_brief({C.map: diagnosis(1, 10, other=4, reasoning_error=5)})
    brief.entries[0].focus[0].direction = "Ask multi-step route questions."
    assert WeaknessBrief.model_validate_json(brief.model_dump_json()) == brief


def test_max_examples_is_validated() -> None:
    with pytest.raises(ValueError, match="max_examples must be >= 0, got -1"):
        build_brief({}, max_examples=-1)


def test_fallback_direction_is_deterministic_and_specific() -> None:
    text = fallback_direction(C.chart_graph, E.calculation_error)
    assert text == fallback_direction(C.chart_graph, E.calculation_error)
    assert "chart_graph" in text
    assert E.calculation_error.description in text
    assert text != fallback_direction(C.chart_graph, E.reasoning_error)


def test_render_text_sections_and_lines() -> None:
    brief = build_brief(
        {
            C.chart_graph: diagnosis(10, 25, calculation_error=7, visual_recognition_error=8),
            C.geometric: diagnosis(8, 10, reasoning_error=1),
            C.natural_scene: diagnosis(19, 20, other=1),
        }
    )
    brief.entries[0].focus[0].direction = "Ask for exact values read off dense bar charts."
    text = render_text(brief)
    lines = text.splitlines()
    assert lines[0] == BRIEF_HEADER
    assert lines.index("HIGH PRIORITY") < lines.index("MODERATE PRIORITY")
    assert lines.index("MODERATE PRIORITY") < lines.index("LOW PRIORITY")
    assert "[chart_graph] accuracy 40.0% (n=25)" in lines
    assert (
        "  - visual_recognition_error: 8 cases (53%) -> "
        "Ask for exact values read off dense bar charts."
    ) in lines
    fallback = fallback_direction(C.chart_graph, E.calculation_error)
    assert f"  - calculation_error: 7 cases (47%) -> {fallback}" in lines
    assert "[geometric] accuracy 80.0% (n=10)" in lines
    assert any(line.startswith("  - reasoning_error: 1 case (100%) -> ") for line in lines)
    low = lines.index("[natural_scene] accuracy 95.0% (n=20)")
    assert lines[low + 1].startswith("  - already strong")
    assert len(lines) == low + 2


def test_render_text_omits_empty_sections() -> None:
    text = render_text(build_brief({C.map: diagnosis(9, 10)}))
    assert "LOW PRIORITY" in text
    assert "HIGH PRIORITY" not in text and "MODERATE PRIORITY" not in text


def test_render_text_high_tier_without_judged_errors() -> None:
    text = render_text(build_brief({C.map: diagnosis(0, 4)}))
    assert "[map] accuracy 0.0% (n=4)" in text
    assert "no judged error type" in text


def test_render_text_of_an_empty_brief() -> None:
    text = render_text(WeaknessBrief())
    assert text.startswith(BRIEF_HEADER)
    assert "PRIORITY" not in text


# --- weakness table ----------------------------------------------------------------------------


def test_first_iteration_has_no_delta() -> None:
    table = update(WeaknessTable(), 0, {C.map: TypeStats(6, 10)})
    (row,) = rows(table)
    assert row.capability_type is C.map
    assert (row.iteration, row.accuracy, row.count) == (0, 0.6, 10)
    assert row.previous_iteration is None and row.delta is None
    assert not row.fixed and not row.regressed


@pytest.mark.parametrize(
    ("before", "after", "fixed", "regressed"),
    [
        (TypeStats(6, 10), TypeStats(7, 10), True, False),
        (TypeStats(69, 100), TypeStats(70, 100), True, False),
        (TypeStats(6, 10), TypeStats(69, 100), False, False),
        (TypeStats(7, 10), TypeStats(8, 10), False, False),
        (TypeStats(9, 10), TypeStats(85, 100), False, True),
        (TypeStats(35, 100), TypeStats(30, 100), False, True),
        (TypeStats(9, 10), TypeStats(86, 100), False, False),
        (TypeStats(8, 10), TypeStats(6, 10), False, True),
    ],
)
def test_fixed_and_regressed_flags(
    before: TypeStats, after: TypeStats, fixed: bool, regressed: bool
) -> None:
    table = update(update(WeaknessTable(), 1, {C.map: before}), 2, {C.map: after})
    (row,) = rows(table)
    assert row.delta == pytest.approx(after.accuracy - before.accuracy)
    assert (row.fixed, row.regressed) == (fixed, regressed)


def test_regression_tolerance_is_a_parameter() -> None:
    table = update(WeaknessTable(), 0, {C.map: TypeStats(9, 10)})
    table = update(table, 1, {C.map: TypeStats(88, 100)})
    assert not rows(table)[0].regressed
    assert rows(table, regression_tolerance=0.02)[0].regressed
    with pytest.raises(ValueError, match="regression_tolerance must be > 0, got 0"):
        rows(table, regression_tolerance=0)


def test_delta_skips_iterations_that_lack_the_type() -> None:
    table = WeaknessTable()
    table = update(table, 0, {C.map: TypeStats(5, 10), C.mixed: TypeStats(9, 10)})
    table = update(table, 1, {C.mixed: TypeStats(8, 10)})
    table = update(table, 2, {C.map: TypeStats(9, 10), C.mixed: TypeStats(0, 0)})
    by_type = {r.capability_type: r for r in rows(table)}
    assert by_type[C.map].previous_iteration == 0
    assert by_type[C.map].delta == pytest.approx(0.4)
    assert by_type[C.map].fixed
    assert by_type[C.mixed].iteration == 1
    assert by_type[C.mixed].previous_iteration == 0
    assert by_type[C.mixed].regressed
    assert C.mixed not in table.iterations[2]


def test_update_is_pure_and_idempotent() -> None:
    empty = WeaknessTable()
    once = update(empty, 3, {C.map: TypeStats(5, 10)})
    assert empty.iterations == {}
    assert update(once, 3, {C.map: TypeStats(5, 10)}) == once
    replaced = update(once, 3, {C.geometric: TypeStats(1, 2)})
    assert replaced.iterations == {3: {C.geometric: TypeStats(1, 2)}}


def test_iterations_are_kept_in_order_whatever_the_update_order() -> None:
    table = WeaknessTable()
    for k in (2, 0, 1):
        table = update(table, k, {C.map: TypeStats(k, 4)})
    assert list(table.iterations) == [0, 1, 2]
    assert rows(table)[0].previous_iteration == 1


def test_rows_are_in_canonical_order() -> None:
    table = update(WeaknessTable(), 0, {t: TypeStats(1, 2) for t in reversed(list(C))})
    assert [r.capability_type for r in rows(table)] == list(C)
    assert list(table.iterations[0]) == list(C)


def test_table_round_trips_through_json() -> None:
    table = WeaknessTable()
    table = update(table, 0, {C.map: TypeStats(5, 10), C.chart_graph: TypeStats(3, 4)})
    table = update(table, 1, {C.map: TypeStats(8, 10)})
    restored = WeaknessTable.model_validate_json(table.model_dump_json())
    assert restored == table
    assert rows(restored) == rows(table)


def test_update_rejects_negative_iteration() -> None:
    with pytest.raises(ValueError, match="iteration must be >= 0, got -1"):
        update(WeaknessTable(), -1, {})


def test_table_json_with_impossible_counts_is_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds total"):
        WeaknessTable.model_validate_json(
            '{"iterations": {"0": {"map": {"correct": 3, "total": 2}}}}'
        )
