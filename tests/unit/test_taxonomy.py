"""The taxonomy's values are stored in records, so they are pinned exactly here."""

import pytest

from dpe.taxonomy import (
    CapabilityType,
    ErrorType,
    QuestionFormat,
    parse_capability_type,
    parse_error_type,
)


def test_capability_types_are_the_twelve_image_types_in_canonical_order() -> None:
    assert [t.value for t in CapabilityType] == [
        "geometric",
        "medical",
        "chart_graph",
        "text_dense",
        "diagram",
        "math_formula",
        "map",
        "natural_scene",
        "artistic",
        "everyday_object",
        "architectural",
        "mixed",
    ]


def test_error_types_exclude_judge_and_image_failures() -> None:
    assert [e.value for e in ErrorType] == [
        "visual_recognition_error",
        "calculation_error",
        "reasoning_error",
        "misunderstanding",
        "other",
    ]
    assert "evaluation_error" not in {e.value for e in ErrorType}
    assert "image_error" not in {e.value for e in ErrorType}


def test_question_formats() -> None:
    assert [f.value for f in QuestionFormat] == ["multiple_choice", "numerical", "free_text"]


@pytest.mark.parametrize("member", [*CapabilityType, *ErrorType])
def test_every_member_has_a_one_line_description(member: CapabilityType | ErrorType) -> None:
    assert member.description.strip()
    assert "\n" not in member.description


def test_descriptions_are_distinct() -> None:
    assert len({t.description for t in CapabilityType}) == len(CapabilityType)
    assert len({e.description for e in ErrorType}) == len(ErrorType)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("chart_graph", CapabilityType.chart_graph),
        ("Chart Graph", CapabilityType.chart_graph),
        ("chart-graph", CapabilityType.chart_graph),
        ("  CHART_GRAPH \n", CapabilityType.chart_graph),
        ("Everyday  Object", CapabilityType.everyday_object),
        ("map", CapabilityType.map),
    ],
)
def test_parse_capability_type_is_tolerant(raw: str, expected: CapabilityType) -> None:
    assert parse_capability_type(raw) is expected


@pytest.mark.parametrize("member", list(CapabilityType))
def test_parse_capability_type_round_trips(member: CapabilityType) -> None:
    assert parse_capability_type(member.value) is member


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Visual Recognition Error", ErrorType.visual_recognition_error),
        ("calculation-error", ErrorType.calculation_error),
        ("MISUNDERSTANDING", ErrorType.misunderstanding),
        ("other", ErrorType.other),
    ],
)
def test_parse_error_type_is_tolerant(raw: str, expected: ErrorType) -> None:
    assert parse_error_type(raw) is expected


@pytest.mark.parametrize("raw", ["chart", "", "chartgraph", "evaluation_error"])
def test_parse_capability_type_names_value_and_allowed_set(raw: str) -> None:
    with pytest.raises(ValueError, match="unknown capability type") as info:
        parse_capability_type(raw)
    assert repr(raw) in str(info.value)
    assert "geometric" in str(info.value) and "mixed" in str(info.value)


@pytest.mark.parametrize("raw", ["evaluation_error", "image_error", "format"])
def test_parse_error_type_rejects_non_model_errors(raw: str) -> None:
    with pytest.raises(ValueError, match="unknown error type") as info:
        parse_error_type(raw)
    assert repr(raw) in str(info.value)
    assert "visual_recognition_error" in str(info.value)
