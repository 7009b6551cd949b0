"""The diagnosis taxonomy: capability types, error types and question formats.

Every probe failure is attributed to one capability type (what kind of image the question is
about) and one error type (what went wrong). Per-type accuracy drives the mixture; the error-type
histogram drives the weakness brief. Enum values are the exact strings stored in records and
artifacts, so they never change once written.
"""

from enum import StrEnum
from typing import TypeVar


class CapabilityType(StrEnum):
    """The 12 image types used as capability dimensions for mixture control.

    Declaration order is the canonical order: every tie in the mixture and the weakness brief is
    broken by it, so it must stay fixed.
    """

    geometric = "geometric"
    medical = "medical"
    chart_graph = "chart_graph"
    text_dense = "text_dense"
    diagram = "diagram"
    math_formula = "math_formula"
    map = "map"
    natural_scene = "natural_scene"
    artistic = "artistic"
    everyday_object = "everyday_object"
    architectural = "architectural"
    mixed = "mixed"

    @property
    def description(self) -> str:
        """One line telling classifiers and planners what belongs to this type."""
        return CAPABILITY_DESCRIPTIONS[self]


CAPABILITY_DESCRIPTIONS: dict[CapabilityType, str] = {
    CapabilityType.geometric: "geometry figures: shapes, angles, lengths, circles and polygons",
    CapabilityType.medical: "medical imagery such as radiographs, CT slices and anatomy drawings",
    CapabilityType.chart_graph: "plots and charts that encode data or statistics",
    CapabilityType.text_dense: "images dominated by text to read: documents, receipts, menus",
    CapabilityType.diagram: "schematics of structure or process: flowcharts, circuits, pipelines",
    CapabilityType.math_formula: "mathematical expressions and equations, typeset or handwritten",
    CapabilityType.map: "maps of places, regions and routes, including navigation views",
    CapabilityType.natural_scene: "photographs of landscapes, outdoor scenes and nature",
    CapabilityType.artistic: "paintings, illustrations and other creative or stylised work",
    CapabilityType.everyday_object: "common objects, products, furniture and household items",
    CapabilityType.architectural: "buildings, interiors and other built structures",
    CapabilityType.mixed: "several kinds of content at once, or content that fits no other type",
}


class ErrorType(StrEnum):
    """The 5 causes a judge may give for a wrong answer.

    Judge failures and undecodable images are not the model's errors; they are counted apart so
    they cannot bias the mixture.
    """

    visual_recognition_error = "visual_recognition_error"
    calculation_error = "calculation_error"
    reasoning_error = "reasoning_error"
    misunderstanding = "misunderstanding"
    other = "other"

    @property
    def description(self) -> str:
        """A noun phrase naming the failure, usable inside generated guidance sentences."""
        return ERROR_DESCRIPTIONS[self]


ERROR_DESCRIPTIONS: dict[ErrorType, str] = {
    ErrorType.visual_recognition_error: (
        "misreading or overlooking visual content such as values, labels, shapes or objects"
    ),
    ErrorType.calculation_error: "arithmetic or numeric slips after reading the image correctly",
    ErrorType.reasoning_error: "faulty inference or a broken chain of reasoning steps",
    ErrorType.misunderstanding: "misreading what the question actually asks for",
    ErrorType.other: "mistakes that fit none of the other error types",
}


class QuestionFormat(StrEnum):
    """How a question expects its answer, which decides how answers are compared."""

    multiple_choice = "multiple_choice"
    numerical = "numerical"
    free_text = "free_text"


_E = TypeVar("_E", bound=StrEnum)


def _parse(enum_type: type[_E], value: str, what: str) -> _E:
    """Map free-form labels from LLMs and configs ("Chart Graph", "chart-graph") onto an enum."""
    key = "_".join(value.strip().lower().replace("-", " ").replace("_", " ").split())
    try:
        return enum_type(key)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ValueError(f"unknown {what} {value!r}; expected one of: {allowed}") from None


def parse_capability_type(value: str) -> CapabilityType:
    """Parse a capability type, tolerant of case, spaces, hyphens and underscores."""
    return _parse(CapabilityType, value, "capability type")


def parse_error_type(value: str) -> ErrorType:
    """Parse an error type, tolerant of case, spaces, hyphens and underscores."""
    return _parse(ErrorType, value, "error type")
