"""Numbers and expressions as answers, and how two of them compare.

Values are equal within a relative and an absolute tolerance; expressions with variables are
compared by value at fixed sample points. A decimal written with at least `ROUNDING_MIN_DECIMALS`
places also matches any value that rounds to it ("0.333" for 1/3). Percent: when exactly one side
carries "%", the other side may give the same number or the fraction ("45%" matches "45" and
"0.45"; a plain gold 0.45 accepts "45%"). Units: a unit or a count label ("12 cm", "5 apples")
only matters when both sides have one, and then they must agree; units are never converted
("0.12 m" does not match "12 cm", "pi/6" does not match 30°).
"""

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import sympy

from dpe.grading.expressions import MAX_EXPRESSION_CHARS, evaluate, parse_expression
from dpe.grading.grades import GradeMethod, GradeStatus, Tolerance, RuleVerdict
from dpe.grading.text import NUMBER_WORDS, same_text
from dpe.grading.units import split_unit

ROUNDING_MIN_DECIMALS = 2
"""A decimal with at least this many places matches values that round to it; fewer would let
"3" accept 3.4."""

_MATH_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("\\left", ""),
    ("\\right", ""),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\cdot", "*"),
    ("\\times", "*"),
    ("\\div", "/"),
    ("\\%", "%"),
    ("\\degree", "°"),
    ("\\circ", "°"),
    ("\\,", " "),
    ("\\;", " "),
    ("\\:", " "),
    ("\\!", ""),
    ("\\ ", " "),
    ("\\quad", " "),
    ("{,}", ","),
    ("~", " "),
    ("−", "-"),
    ("–", "-"),
    ("×", "*"),
    ("·", "*"),
    ("÷", "/"),
    ("⁄", "/"),
    ("π", "\\pi "),
    ("√", "\\sqrt "),
    ("**", "^"),
)
_SUPERSCRIPTS = str.maketrans({"²": "^2", "³": "^3"})
_DEGREE_POWER = re.compile(r"\^\s*\{?\s*°\s*\}?")
_PERCENT_WORD = re.compile(r"\s*\bper\s*cent\b", re.IGNORECASE)
_SUBJECT = re.compile(
    r"(?P<subject>[A-Za-z][A-Za-z0-9_{}']{0,11})\s*(?:=|≈|\\approx)\s*(?P<rest>.+)"
)
_APPROXIMATELY = re.compile(
    r"^(?:≈|\\approx|approximately|approx\.?|about|around|roughly|nearly)\s*", re.IGNORECASE
)
_CURRENCY = re.compile(r"^([+-]?)\s*(?:US\$|[$€£¥]|USD|EUR|GBP|RMB)\s*")
_LEADING_NUMBER_WORD = re.compile(r"([A-Za-z]+)(?=\s|$)")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_PLAIN_DECIMAL = re.compile(r"[+-]?\d*\.(\d+)")


def _normalise_math(text: str) -> str:
    """One spelling for math notation: LaTeX spacing, operators, degree and percent signs."""
    text = unicodedata.normalize("NFKC", text.translate(_SUPERSCRIPTS))
    for old, new in _MATH_REPLACEMENTS:
        text = text.replace(old, new)
    text = _DEGREE_POWER.sub("°", text)
    text = _PERCENT_WORD.sub("%", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class Quantity:
    """A number or expression read from an answer, with what was written around it.

    `number` is the value when there are no variables; `slack` is half a unit in the last place
    of a decimal written with enough places (0 otherwise); `subject` is the left side of
    "x = 5".
    """

    value: sympy.Expr
    number: complex | None
    unit: str | None
    percent: bool
    slack: float
    subject: str | None


@lru_cache(maxsize=4096)
def parse_quantity(text: str) -> Quantity | None:
    """Read an answer as a quantity, or None when it is not one.

    Cached because pass-rate scoring grades many samples against the same gold.
    """
    text = _normalise_math(text)
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    subject = None
    equation = _SUBJECT.fullmatch(text)
    if equation is not None:
        subject, text = equation["subject"], equation["rest"]
    text = _CURRENCY.sub(r"\1", _APPROXIMATELY.sub("", text, count=1), count=1)
    word = _LEADING_NUMBER_WORD.match(text)
    if word is not None and word[1].casefold() in NUMBER_WORDS:
        text = NUMBER_WORDS[word[1].casefold()] + text[word.end() :]
    percent = text.endswith("%")
    text = text.removesuffix("%").strip()
    value_text, unit = split_unit(text)
    value_text = _THOUSANDS.sub(lambda match: match[0].replace(",", ""), value_text).strip()
    value = parse_expression(value_text)
    if value is None:
        return None
    decimals = _PLAIN_DECIMAL.fullmatch(value_text)
    places = len(decimals[1]) if decimals is not None else 0
    slack = 0.5 * 10.0**-places if places >= ROUNDING_MIN_DECIMALS else 0.0
    number = None if value.free_symbols else evaluate(value, {})
    return Quantity(value, number, unit, percent, slack, subject)


_SAMPLE_VALUES = (0.5772, 1.3247, 2.2361, 0.8415, 1.6180, 2.7183, 0.3679, 1.4142)
"""Values given to variables when expressions are compared; chosen to avoid special points."""

_SAMPLE_POINT_COUNT = 3


def _sample_points(symbols: Sequence[sympy.Symbol]) -> list[dict[sympy.Symbol, float]]:
    """Fixed points at which expressions with variables are compared; each variable gets a
    different value at each point."""
    return [
        {
            symbol: _SAMPLE_VALUES[(point + 3 * index) % len(_SAMPLE_VALUES)]
            for index, symbol in enumerate(symbols)
        }
        for point in range(_SAMPLE_POINT_COUNT)
    ]


def _percent_scales(percent: bool, other_percent: bool) -> tuple[float, ...]:
    """A percent facing a plain number may be read as written or as a fraction of one."""
    return (1.0, 0.01) if percent and not other_percent else (1.0,)


def _close(first: complex, second: complex, slack: float, tolerance: Tolerance) -> bool:
    """Equal within tolerance, or within rounding slack of a decimal written with few places."""
    difference = abs(first - second)
    allowed = max(tolerance.rel * max(abs(first), abs(second)), tolerance.abs)
    return difference <= allowed or difference < slack


def _values_agree(answer: Quantity, gold: Quantity, tolerance: Tolerance) -> bool | None:
    """Whether two quantities have the same value at every sample point where both are defined;
    None when no point defines both (1/0), so there is nothing to compare."""
    symbols = sorted(answer.value.free_symbols | gold.value.free_symbols, key=str)
    if symbols:
        pairs = [
            (evaluate(answer.value, point), evaluate(gold.value, point))
            for point in _sample_points(symbols)
        ]
    else:
        pairs = [(answer.number, gold.number)]
    defined = [(a, g) for a, g in pairs if a is not None and g is not None]
    if not defined:
        return None
    for a_scale in _percent_scales(answer.percent, gold.percent):
        for g_scale in _percent_scales(gold.percent, answer.percent):
            slack = max(answer.slack * a_scale, gold.slack * g_scale)
            if all(_close(a * a_scale, g * g_scale, slack, tolerance) for a, g in defined):
                return True
    return False


def compare_quantities(answer: Quantity, gold: Quantity, tolerance: Tolerance) -> RuleVerdict:
    """Compare values; units, labels and equation subjects must agree where both sides have one."""
    if answer.unit and gold.unit and not same_text(answer.unit, gold.unit):
        return RuleVerdict(False, GradeStatus.graded, GradeMethod.unit_mismatch)
    has_variables = bool(answer.value.free_symbols or gold.value.free_symbols)
    method = GradeMethod.symbolic if has_variables else GradeMethod.numeric
    if answer.subject and gold.subject and answer.subject != gold.subject:
        return RuleVerdict(False, GradeStatus.graded, method)
    agree = _values_agree(answer, gold, tolerance)
    if agree is None:
        return RuleVerdict(False, GradeStatus.unparseable, method)
    return RuleVerdict(agree, GradeStatus.graded, method)
