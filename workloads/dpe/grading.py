"""Answer grading: the one place that decides whether a model's answer is right.

Diagnosis, pass-rate scoring, GRPO rewards and evaluation all grade through this module, so a
question cannot count as solved in one stage and as failed in another. It holds:

- the answer format contract: the solver instruction appended to every question, and the format
  reward, which checks exactly the format that instruction asks for (`<think>` reasoning, then a
  single trailing `\\boxed{}`), so the format term of the reward can actually be earned;
- final-answer extraction from a free-form response;
- comparison of an extracted answer with the gold answer.

Everything is a pure, deterministic function of its arguments. Model text is never evaluated:
math is read by a small parser here that builds sympy objects directly, with limits on length,
nesting, power towers and magnitude, so that no answer (``9^{9^{9}}``, thousands of nested
braces, a megabyte of output) can stall a pass-rate computation that grades thousands of answers.

Comparison rules. Multiple choice applies when declared, or, with no declared format, when
options are given or the gold is a lone letter; otherwise the gold's shape picks the rule.

- Multiple choice: letters are compared after normalisation ("(b)", "B.", "Option B", "B: 42").
  An answer given as an option's text is mapped to its letter through the options, and a gold
  given as option text is mapped the same way. An answer naming several letters names none.
- Yes/no: the answer must start with a yes/no word (yes, true, correct / no, false, incorrect)
  that stands alone or is followed by punctuation; "no idea" and "not sure" are not "no".
- Numbers and expressions: equal within a relative and an absolute tolerance; expressions with
  variables are compared by value at fixed sample points. A decimal written with at least
  `ROUNDING_MIN_DECIMALS` places also matches any value that rounds to it ("0.333" for 1/3).
  Percent: when exactly one side carries "%", the other side may give the same number or the
  fraction ("45%" matches "45" and "0.45"; a plain gold 0.45 accepts "45%"). Units: a unit or a
  count label ("12 cm", "5 apples") only matters when both sides have one, and then they must
  agree; units are never converted ("0.12 m" does not match "12 cm", "pi/6" does not match 30°).
- Free text: equal after case folding, punctuation and article removal, with small number words
  read as digits ("three" is "3") and a plural "s"/"es" allowed on the last word only. Irregular
  plurals, synonyms and partial answers do not match. Lists are compared in the order written:
  "1, 2, 3" matches "1,2,3" but not "3, 2, 1", since order often matters.
"""

import cmath
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

import sympy

from dpe.taxonomy import QuestionFormat

DEFAULT_REL_TOL = 1e-4
"""Relative tolerance for numeric answers."""

DEFAULT_ABS_TOL = 1e-6
"""Absolute tolerance for numeric answers, which decides comparisons near zero."""

ROUNDING_MIN_DECIMALS = 2
"""A decimal with at least this many places matches values that round to it; fewer would let
"3" accept 3.4."""

EXTRACTION_WINDOW_CHARS = 32_000
"""Only this many trailing characters of a response are searched for the final answer: the answer
sits at the end, and the bound keeps extraction linear on runaway generations."""

MAX_EXPRESSION_CHARS = 160
"""Longer texts are not read as math at all: a final answer is short, and the bound keeps the
parser's work small."""

MAX_EXPONENT = 1_000
"""Largest numeric exponent the math parser accepts."""

MAX_DIGITS = 300
"""Largest magnitude (decimal digits) a numeric power may reach, which keeps values finite."""

MAX_POWER_NESTING = 2
"""Deepest tower of powers accepted, e.g. e^{x^2}; deeper towers cannot be evaluated safely."""

MAX_GROUP_NESTING = 32
"""Deepest nesting of brackets accepted by the math parser."""

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Letters given to options passed as a plain sequence, in order."""

FORMAT_EXAMPLE = "<think> step-by-step reasoning </think> \\boxed{final answer}"
"""The shape every response must have; the solver instruction shows it to the model."""

SOLVER_INSTRUCTION = (
    "Reason through the question step by step inside <think> </think> tags. After the closing "
    "</think> tag, write only the final answer inside \\boxed{}, and write nothing after it. "
    f"Your response must look like: {FORMAT_EXAMPLE}"
)
"""Appended to every question: the only answer format that grading and the format reward accept
in full."""

ANSWER_HINTS: dict[QuestionFormat, str] = {
    QuestionFormat.multiple_choice: (
        "This is a multiple-choice question: put only the letter of the chosen option in "
        "\\boxed{}, for example \\boxed{B}."
    ),
    QuestionFormat.numerical: (
        "Put only the final number or expression in \\boxed{}, for example \\boxed{12.5}; "
        "units may be left out."
    ),
    QuestionFormat.free_text: (
        "Put only a short final answer, a word or a short phrase, in \\boxed{}."
    ),
}
"""What the boxed content should be, per question format."""


def solver_prompt(question: str, question_format: QuestionFormat | None = None) -> str:
    """The question followed by the solver instruction (and the format's hint when known).

    Every stage that asks the model to solve a question builds its text here, so diagnosis,
    scoring, training and evaluation all ask for the format that `format_score` rewards.
    """
    instruction = SOLVER_INSTRUCTION
    if question_format is not None:
        instruction = f"{instruction} {ANSWER_HINTS[question_format]}"
    return f"{question.rstrip()}\n\n{instruction}"


# --- braces and cleaning ---------------------------------------------------------------------

_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox|"
    r"operatorname)\s*\{"
)
_MATH_DELIMITER = re.compile(r"\\?\$|\\[()\[\]]")
_QUOTES = "\"'`“”‘’"


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of every opening brace mapped to its closing brace, in one linear pass.

    Escaped braces (`\\{`) are skipped, so set notation inside a boxed answer stays balanced.
    """
    pairs: dict[int, int] = {}
    open_braces: list[int] = []
    for match in _BRACE_OR_ESCAPE.finditer(text):
        if match[0] == "{":
            open_braces.append(match.start())
        elif match[0] == "}" and open_braces:
            pairs[open_braces.pop()] = match.start()
    return pairs


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{}` or `\\fbox{}` whose braces balance, if any."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    pairs = _brace_pairs(text)
    for start in reversed(starts):
        close = pairs.get(start.end() - 1)
        if close is not None:
            return text[start.end() : close]
    return None


def _unwrap_text_commands(text: str) -> str:
    """Drop `\\text{...}`-like wrappers (keeping their content), nested ones included."""
    if "\\" not in text:
        return text
    pairs = _brace_pairs(text)
    cuts: list[tuple[int, int]] = []
    for wrapper in _TEXT_WRAPPER.finditer(text):
        close = pairs.get(wrapper.end() - 1)
        if close is not None:
            cuts.extend([(wrapper.start(), wrapper.end()), (close, close + 1)])
    if not cuts:
        return text
    pieces: list[str] = []
    position = 0
    for start, end in sorted(cuts):
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _clean(text: str) -> str:
    """Reduce an answer to its content: no boxing, math delimiters, text wrappers or markdown."""
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed
    text = _MATH_DELIMITER.sub("", text)
    text = _unwrap_text_commands(text)
    text = " ".join(text.replace("**", "").replace("__", "").split())
    return text.strip(_QUOTES).strip().rstrip(" .。")


# --- format reward -----------------------------------------------------------------------------

_THINK_OPEN = re.compile(r"<\s*think\s*>")
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>")
_BOXED_AT_START = re.compile(r"\\boxed\s*\{")


def format_score(response: str) -> float:
    """1.0 when the response has exactly the format the solver instruction asks for, else 0.0.

    The format is: one `<think>...</think>` block at the start, then nothing but one non-empty
    `\\boxed{...}`, which ends the response. Whitespace around the parts and inside the tags is
    tolerated; anything else (text after the box, a second think block, an empty box) is not.
    """
    text = response.strip()
    opens = list(_THINK_OPEN.finditer(text))
    closes = list(_THINK_CLOSE.finditer(text))
    if len(opens) != 1 or len(closes) != 1 or opens[0].start() != 0:
        return 0.0
    if closes[0].start() < opens[0].end():
        return 0.0
    tail = text[closes[0].end() :].strip()
    box = _BOXED_AT_START.match(tail)
    if box is None:
        return 0.0
    close = _brace_pairs(tail).get(box.end() - 1)
    if close != len(tail) - 1 or not _clean(tail[box.end() : close]):
        return 0.0
    return 1.0


# --- extraction --------------------------------------------------------------------------------


class AnswerSource(StrEnum):
    """Where the final answer was found in a response."""

    boxed = "boxed"
    answer_line = "answer_line"
    option_letter = "option_letter"
    none = "none"


@dataclass(frozen=True)
class Extraction:
    """The final answer read from a response.

    `text` is None when there is nothing to grade: no answer anywhere, or a last box that is
    empty. `source` then says where the search stopped (`boxed` for an empty box).
    """

    text: str | None
    source: AnswerSource


_ANSWER_CUE = re.compile(
    r"\b(?:final\s+answer|correct\s+(?:answer|option|choice)|answer)\b[*_\s]*(?:is\b|[:：])"
    r"[*_\s:：]*",
    re.IGNORECASE,
)
_ANSWER_LINE_CHARS = 1_000
"""Longest answer read after an answer cue; a longer "answer" is prose, not a final answer."""
_SENTENCE_END = re.compile(r"\.\s|;\s")
_LONE_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?")
_TRAILING_LETTER = re.compile(
    r"(?:\b(?:option|choice)\s*\(?([A-J])\)?|\(([A-J])\))\s*\.?$", re.IGNORECASE
)
_TRAILING_LETTER_WINDOW = 64
"""Characters at the end of the last line searched for a trailing option letter."""


def _answer_line(text: str) -> str | None:
    """Answer from the last "Answer: ..." / "The answer is ..." cue, up to the sentence end."""
    for cue in reversed(list(_ANSWER_CUE.finditer(text))):
        line = text[cue.end() : cue.end() + _ANSWER_LINE_CHARS].split("\n", 1)[0]
        sentence_end = _SENTENCE_END.search(line)
        if sentence_end is not None:
            line = line[: sentence_end.start()]
        answer = _clean(line)
        if answer:
            return answer
    return None


def _trailing_letter(text: str) -> str | None:
    """An option letter ending the response: a last line "B" / "(B)" / "B.", or "... option C"."""
    last_line = text.rstrip().rsplit("\n", 1)[-1].strip().strip("*#> ").strip()
    lone = _LONE_LETTER.fullmatch(last_line)
    if lone is not None:
        return lone[1]
    trailing = _TRAILING_LETTER.search(last_line[-_TRAILING_LETTER_WINDOW:])
    if trailing is not None:
        return (trailing[1] or trailing[2]).upper()
    return None


def extract_answer(response: str) -> Extraction:
    """Find the final answer: the last balanced `\\boxed{}` (or `\\fbox{}`), else the last answer
    line, else an option letter ending the response.

    The last box is authoritative: boxes inside the reasoning are drafts, and an empty last box
    means the model gave no answer even if an earlier line looks like one.
    """
    text = response[-EXTRACTION_WINDOW_CHARS:]
    boxed = _last_boxed(text)
    if boxed is not None:
        return Extraction(_clean(boxed) or None, AnswerSource.boxed)
    line = _answer_line(text)
    if line is not None:
        return Extraction(line, AnswerSource.answer_line)
    letter = _trailing_letter(text)
    if letter is not None:
        return Extraction(letter, AnswerSource.option_letter)
    return Extraction(None, AnswerSource.none)


# --- options -----------------------------------------------------------------------------------

_OPTION_MARKER = re.compile(r"(?:^|(?<=\s))(?:\(([A-J])\)|([A-J])[.):：](?=\s))", re.MULTILINE)
_OWN_MARKER = re.compile(r"(?:\(([A-Za-z])\)|([A-Za-z])[.):])\s*(.+)", re.DOTALL)


def parse_options(question: str) -> dict[str, str]:
    """Options listed in a question, letter -> text, or {} when there are none.

    Recognises markers "A. ", "A) ", "A: " and "(A) ", one option per line or inline. Markers
    must run A, B, C... in order, at least two of them; the last such run in the question wins,
    since options follow the question text. Each option ends at the next marker or line end.
    """
    runs: list[list[re.Match[str]]] = []
    for marker in _OPTION_MARKER.finditer(question):
        letter = _marker_letter(marker)
        if letter == "A":
            runs.append([marker])
        elif runs and letter == chr(ord(_marker_letter(runs[-1][-1])) + 1):
            runs[-1].append(marker)
    complete = [run for run in runs if len(run) >= 2]
    if not complete:
        return {}
    run = complete[-1]
    options: dict[str, str] = {}
    for index, marker in enumerate(run):
        end = run[index + 1].start() if index + 1 < len(run) else len(question)
        text = question[marker.end() : end].strip().split("\n", 1)[0].strip().rstrip(",;").strip()
        if text:
            options[_marker_letter(marker)] = text
    return options


def _marker_letter(marker: re.Match[str]) -> str:
    """The letter of an option marker match, whichever form it had."""
    return marker[1] or marker[2]


def _option_table(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Options as letter -> cleaned text; texts that repeat their own marker ("A. 3") lose it."""
    if options is None:
        return {}
    if isinstance(options, str):
        raise TypeError("options must be a sequence of option texts or a letter mapping")
    if isinstance(options, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, value in options.items():
            letter = _choice_letter(str(key))
            if letter is None:
                raise ValueError(f"option key {key!r} is not an option letter")
            pairs.append((letter, value))
    else:
        pairs = list(zip(OPTION_LETTERS, options, strict=False))
    table: dict[str, str] = {}
    for letter, value in pairs:
        text = _clean(value)
        own = _OWN_MARKER.fullmatch(text)
        if own is not None and (own[1] or own[2]).upper() == letter:
            text = own[3].strip()
        if text:
            table[letter] = text
    return table


# --- grades ------------------------------------------------------------------------------------


class GradeStatus(StrEnum):
    """Whether a grade is a real verdict.

    - graded: the answer was compared with the gold;
    - no_answer: nothing to grade; not a wrong answer, so pass rates leave it out of the
      denominator;
    - unparseable: an answer was given but cannot be compared with the gold (garbage where a
      number was due); it counts as wrong and is reported apart.
    """

    graded = "graded"
    no_answer = "no_answer"
    unparseable = "unparseable"


class GradeMethod(StrEnum):
    """The rule that decided a grade."""

    no_answer = "no_answer"
    choice_letter = "choice_letter"
    choice_text = "choice_text"
    choice_unmapped = "choice_unmapped"
    yes_no = "yes_no"
    numeric = "numeric"
    symbolic = "symbolic"
    unit_mismatch = "unit_mismatch"
    text = "text"


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer; `extracted` is the cleaned answer that was compared."""

    correct: bool
    status: GradeStatus
    extracted: str | None
    method: GradeMethod


class _Verdict(NamedTuple):
    """A grade before the extracted text is attached."""

    correct: bool
    status: GradeStatus
    method: GradeMethod


@dataclass(frozen=True)
class _Tolerance:
    """Numeric tolerances of one grading call."""

    rel: float
    abs: float


def grade(
    response: str,
    gold: str,
    question_format: QuestionFormat | None = None,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade a full model response against the gold answer (see `grade_extracted`)."""
    return grade_extracted(
        extract_answer(response).text,
        gold,
        question_format,
        options,
        rel_tol=rel_tol,
        abs_tol=abs_tol,
    )


def grade_extracted(
    answer: str | None,
    gold: str,
    question_format: QuestionFormat | None = None,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade an answer that is already extracted (a judge's reading, an evaluation file).

    `options` are the multiple-choice options, as texts in letter order or as letter -> text
    (see `parse_options`); they let an answer or a gold given as option text count as its letter.
    Without a question format, a gold that is a lone letter, or given options, means multiple
    choice; otherwise the gold's shape (yes/no, number, text) picks the comparison.

    Raises ValueError when the gold is empty: an item without a gold cannot be scored.
    """
    gold_text = _clean(gold)
    if not gold_text:
        raise ValueError(f"gold answer {gold!r} is empty")
    answer_text = _clean(answer) if answer is not None else ""
    if not answer_text:
        return Grade(False, GradeStatus.no_answer, None, GradeMethod.no_answer)
    tolerance = _Tolerance(rel_tol, abs_tol)
    choices = _option_table(options)
    if _is_choice_question(gold_text, question_format, choices):
        verdict = _grade_choice(answer_text, gold_text, choices, tolerance)
    else:
        verdict = _grade_open(answer_text, gold_text, tolerance)
    return Grade(verdict.correct, verdict.status, answer_text, verdict.method)


# --- multiple choice ---------------------------------------------------------------------------

_PREFIXED_LETTER = re.compile(
    r"(?:the\s+)?(?:option|choice)"
    r"(?:\s*\(([A-Za-z])\)|\s*\[([A-Za-z])\]|\s+([A-Za-z])(?![A-Za-z0-9]))",
    re.IGNORECASE,
)
_BARE_LETTER = re.compile(r"\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])(?:[).:,]|$)")
_OTHER_LETTER = re.compile(
    r"\([A-Za-z]\)"
    r"|(?<![\w'])[A-Z][.):](?=\s|$)"
    r"|(?:\bor|\band|[,/&])\s*\(?[A-Z]\)?(?!\w)"
    r"|^\s*[A-Z]\s*(?:$|[,.;/)&]|or\b|and\b)"
)
_GOLD_LETTER = re.compile(r"\(?([A-Z])\)?")


def _choice_letter(text: str) -> str | None:
    """The option letter an answer names ("B", "(b)", "b)", "B: 42", "Option C"), if any.

    An answer naming a second letter ("A, B", "(A) or (C)", "A. B. C. D.") names none: hedging
    across options must not earn credit for whichever one is right.
    """
    match = _PREFIXED_LETTER.match(text) or _BARE_LETTER.match(text)
    if match is None or _OTHER_LETTER.search(text[match.end() :]):
        return None
    return next(group for group in match.groups() if group).upper()


def _is_choice_question(
    gold: str, question_format: QuestionFormat | None, choices: dict[str, str]
) -> bool:
    """Multiple choice when declared, or, undeclared, when options exist or the gold is a letter."""
    if question_format is not None:
        return question_format is QuestionFormat.multiple_choice
    return bool(choices) or _GOLD_LETTER.fullmatch(gold) is not None


def _matching_option(text: str, choices: dict[str, str], tolerance: _Tolerance) -> str | None:
    """The one option whose text is equivalent to `text`; None when none or several match."""
    letters = [
        letter
        for letter, option in choices.items()
        if _grade_open(text, option, tolerance).correct
    ]
    return letters[0] if len(letters) == 1 else None


def _grade_choice(
    answer: str, gold: str, choices: dict[str, str], tolerance: _Tolerance
) -> _Verdict:
    """Compare letters, mapping option texts to letters on either side through the options."""
    gold_letter = _choice_letter(gold) or _matching_option(gold, choices, tolerance)
    answer_letter = _choice_letter(answer)
    method = GradeMethod.choice_letter
    if answer_letter is None and choices:
        answer_letter = _matching_option(answer, choices, tolerance)
        method = GradeMethod.choice_text
    if answer_letter is not None and gold_letter is not None:
        return _Verdict(answer_letter == gold_letter, GradeStatus.graded, method)
    if gold_letter is None:
        if answer_letter is None:
            return _grade_open(answer, gold, tolerance)
        if answer_letter in choices:
            return _grade_open(choices[answer_letter], gold, tolerance)
    return _Verdict(False, GradeStatus.unparseable, GradeMethod.choice_unmapped)


# --- open answers: yes/no, quantities, text ----------------------------------------------------

_YES_WORDS = frozenset({"yes", "true", "correct"})
_NO_WORDS = frozenset({"no", "false", "incorrect"})
_LEADING_WORD = re.compile(r"([a-z]+)\s*(?:[.,;:!]\s*([a-z]*)|$)")


def _yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the text does not start with a standalone yes/no.

    The word must end the text or be followed by punctuation ("No, it is not"), so "no idea" is
    not "no"; and a hedge that goes straight on to the opposite word ("Yes. No.") is neither.
    """
    match = _LEADING_WORD.match(text.strip().casefold())
    if match is None:
        return None
    first, following = match[1], match[2] or ""
    if first in _YES_WORDS and following not in _NO_WORDS:
        return True
    if first in _NO_WORDS and following not in _YES_WORDS:
        return False
    return None


def _grade_open(answer: str, gold: str, tolerance: _Tolerance) -> _Verdict:
    """Grade an answer that is not a choice letter, by the shape of the gold."""
    gold_yes = _yes_no(gold)
    if gold_yes is not None:
        answer_yes = _yes_no(answer)
        if answer_yes is None:
            return _Verdict(False, GradeStatus.unparseable, GradeMethod.yes_no)
        return _Verdict(answer_yes == gold_yes, GradeStatus.graded, GradeMethod.yes_no)
    gold_quantity = _parse_quantity(gold)
    if gold_quantity is not None:
        answer_quantity = _parse_quantity(answer)
        if answer_quantity is None:
            return _Verdict(False, GradeStatus.unparseable, GradeMethod.numeric)
        return _compare_quantities(answer_quantity, gold_quantity, tolerance)
    if not _text_tokens(answer):
        return _Verdict(False, GradeStatus.unparseable, GradeMethod.text)
    return _Verdict(_same_text(answer, gold), GradeStatus.graded, GradeMethod.text)


# --- free text ---------------------------------------------------------------------------------

_UNITS_AND_TEENS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_TENS = "thirty forty fifty sixty seventy eighty ninety".split()

NUMBER_WORDS: dict[str, str] = {word: str(value) for value, word in enumerate(_UNITS_AND_TEENS)} | {
    word: str(30 + 10 * index) for index, word in enumerate(_TENS)
}
"""Number words read as digits in answers."""

_PROSE_PUNCTUATION = re.compile(r"[.,;!?\"'`“”‘’]")
_HYPHEN_IN_WORD = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
_TEXT_TOKEN = re.compile(r"\w+|[^\w\s]")
_ARTICLES = frozenset({"the", "an"})
_MIN_PLURAL_STEM = 3
"""Shortest word that may differ from another by a plural ending ("bus" is not "bu" + "s")."""


def _text_tokens(text: str) -> tuple[str, ...]:
    """Words and symbols of a text, case-folded, without prose punctuation or articles.

    "a" is dropped only as the first word, because elsewhere it is often a label (vitamin A).
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PROSE_PUNCTUATION.sub(" ", _HYPHEN_IN_WORD.sub(" ", text))
    tokens = [NUMBER_WORDS.get(token, token) for token in _TEXT_TOKEN.findall(text)]
    if tokens and tokens[0] == "a":
        tokens = tokens[1:]
    return tuple(token for token in tokens if token not in _ARTICLES)


def _plural_pair(first: str, second: str) -> bool:
    """Whether two words are one word in singular and plural ("car"/"cars", "box"/"boxes")."""
    short, long = sorted((first, second), key=len)
    return len(short) >= _MIN_PLURAL_STEM and long in (short + "s", short + "es")


def _same_text(first: str, second: str) -> bool:
    """Text equality after normalisation, allowing a plural ending on the last word only."""
    a, b = _text_tokens(first), _text_tokens(second)
    if a == b:
        return True
    return bool(a) and len(a) == len(b) and a[:-1] == b[:-1] and _plural_pair(a[-1], b[-1])


# --- quantities --------------------------------------------------------------------------------

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
_UNIT_WORD = r"(?:°[A-Za-z]?|[A-Za-zµμΩ]+)(?:\^\{?-?\d\}?)?"
_UNIT_SPLIT = re.compile(
    rf"(?P<value>.*?[\d)\]}}])(?P<space>\s?)(?P<unit>{_UNIT_WORD}(?:\s?(?:/|\s)\s?{_UNIT_WORD})*)"
)
_UNIT_PIECE = re.compile(r"(?P<word>°[a-z]?|[a-zµμω]+)(?:\^\{?(?P<power>-?\d)\}?)?")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_PLAIN_DECIMAL = re.compile(r"[+-]?\d*\.(\d+)")

_UNIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "°": ("°", "degree", "deg"),
    "°c": ("°c", "celsius"),
    "°f": ("°f", "fahrenheit"),
    "rad": ("rad", "radian"),
    "mm": ("mm", "millimeter", "millimetre"),
    "cm": ("cm", "centimeter", "centimetre"),
    "m": ("m", "meter", "metre"),
    "km": ("km", "kilometer", "kilometre"),
    "in": ("in", "inch"),
    "ft": ("ft", "foot", "feet"),
    "yd": ("yd", "yard"),
    "mi": ("mi", "mile"),
    "mg": ("mg", "milligram"),
    "g": ("g", "gram"),
    "kg": ("kg", "kilogram"),
    "lb": ("lb", "lbs", "pound"),
    "oz": ("oz", "ounce"),
    "ml": ("ml", "milliliter", "millilitre"),
    "l": ("l", "liter", "litre"),
    "s": ("s", "sec", "second"),
    "min": ("min", "minute"),
    "h": ("h", "hr", "hour"),
    "day": ("day",),
    "week": ("week",),
    "month": ("month",),
    "year": ("year", "yr"),
    "v": ("v", "volt"),
    "w": ("w", "watt"),
    "kw": ("kw", "kilowatt"),
    "j": ("j", "joule"),
    "n": ("n", "newton"),
    "hz": ("hz", "hertz"),
    "pa": ("pa", "pascal"),
    "kpa": ("kpa", "kilopascal"),
    "ω": ("ω", "ohm"),
    "mi/h": ("mph",),
    "km/h": ("kph", "kmh"),
}

UNIT_NAMES: dict[str, str] = {
    spelling: canonical
    for canonical, spellings in _UNIT_SPELLINGS.items()
    for spelling in spellings
}
"""Recognised physical units, by every accepted spelling (singular), to one canonical name."""

SINGLE_LETTER_UNITS = frozenset("mgsLVWJN")
"""Letters read as units when written right after a number ("5m"); other attached letters stay
variables ("2x", "3h"). After a space, every recognised unit counts ("1.5 h")."""

_NON_LETTERS = re.compile(r"[^A-Za-zµμΩ]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_POWER_WORDS: dict[str, str] = {"square": "2", "sq": "2", "cubic": "3"}
_RESERVED_NAMES = frozenset({"pi", "sqrt", "e"})
_MIN_LABEL_LETTERS = 3
"""Shortest word read as a count label ("5 apples"); shorter ones may be variables ("2 xy")."""


def _normalise_math(text: str) -> str:
    """One spelling for math notation: LaTeX spacing, operators, degree and percent signs."""
    text = unicodedata.normalize("NFKC", text.translate(_SUPERSCRIPTS))
    for old, new in _MATH_REPLACEMENTS:
        text = text.replace(old, new)
    text = _DEGREE_POWER.sub("°", text)
    text = _PERCENT_WORD.sub("%", text)
    return " ".join(text.split())


def _unit_name(word: str) -> str | None:
    """Canonical name of a unit word, tolerating a plural ending; None if not a unit."""
    for candidate in (word, word.removesuffix("s"), word.removesuffix("es")):
        if candidate in UNIT_NAMES:
            return UNIT_NAMES[candidate]
    return None


def _canonical_unit(tail: str) -> str | None:
    """Canonical form of a unit expression ("square meters" -> "m^2", "km per hour" ->
    "km/h"), or None when any part is not a recognised unit."""
    parts: list[str] = []
    for part in re.sub(r"\bper\b", "/", tail.casefold()).split("/"):
        words = part.split()
        power = ""
        if len(words) == 2 and words[0] in _POWER_WORDS:
            power = _POWER_WORDS[words[0]]
            words = words[1:]
        if len(words) != 1:
            return None
        piece = _UNIT_PIECE.fullmatch(words[0])
        if piece is None:
            return None
        name = _unit_name(piece["word"])
        if name is None:
            return None
        power = piece["power"] or power
        parts.append(f"{name}^{power}" if power else name)
    return "/".join(parts)


def _split_unit(text: str) -> tuple[str, str | None]:
    """Split "12 cm" into ("12", "cm") and "5 apples" into ("5", "apples").

    A trailing word is a unit when it is a recognised unit (a single letter written right after
    the number only if it is in `SINGLE_LETTER_UNITS`), or a count label when it follows a space
    and every word has at least `_MIN_LABEL_LETTERS` letters. Anything else stays part of the
    expression ("2x", "3\\pi").
    """
    split = _UNIT_SPLIT.fullmatch(text)
    if split is None:
        return text, None
    tail = split["unit"]
    letters = _NON_LETTERS.sub("", tail)
    attached = not split["space"]
    if attached and len(letters) == 1 and letters not in SINGLE_LETTER_UNITS and "°" not in tail:
        return text, None
    canonical = _canonical_unit(tail)
    if canonical is not None:
        return split["value"], canonical
    words = _LATIN_WORD.findall(tail)
    if (
        not attached
        and words
        and all(len(word) >= _MIN_LABEL_LETTERS for word in words)
        and not any(word.casefold() in _RESERVED_NAMES for word in words)
    ):
        return split["value"], " ".join(_text_tokens(tail))
    return text, None


@dataclass(frozen=True)
class _Quantity:
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
def _parse_quantity(text: str) -> _Quantity | None:
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
    value_text, unit = _split_unit(text)
    value_text = _THOUSANDS.sub(lambda match: match[0].replace(",", ""), value_text).strip()
    value = _parse_expression(value_text)
    if value is None:
        return None
    decimals = _PLAIN_DECIMAL.fullmatch(value_text)
    places = len(decimals[1]) if decimals is not None else 0
    slack = 0.5 * 10.0**-places if places >= ROUNDING_MIN_DECIMALS else 0.0
    number = None if value.free_symbols else _evaluate(value, {})
    return _Quantity(value, number, unit, percent, slack, subject)


_SAMPLE_VALUES = (0.5772, 1.3247, 2.2361, 0.8415, 1.6180, 2.7183, 0.3679, 1.4142)
"""Values given to variables when expressions are compared; chosen to avoid special points."""

_SAMPLE_POINT_COUNT = 3
_EVAL_DIGITS = 30


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


def _evaluate(expression: sympy.Expr, point: dict[sympy.Symbol, float]) -> complex | None:
    """Numeric value of an expression at a point; None when undefined, infinite or too large."""
    try:
        value = complex(expression.evalf(_EVAL_DIGITS, subs=point))
    except (TypeError, ValueError, ArithmeticError):
        return None
    return value if cmath.isfinite(value) else None


def _percent_scales(percent: bool, other_percent: bool) -> tuple[float, ...]:
    """A percent facing a plain number may be read as written or as a fraction of one."""
    return (1.0, 0.01) if percent and not other_percent else (1.0,)


def _close(first: complex, second: complex, slack: float, tolerance: _Tolerance) -> bool:
    """Equal within tolerance, or within rounding slack of a decimal written with few places."""
    difference = abs(first - second)
    allowed = max(tolerance.rel * max(abs(first), abs(second)), tolerance.abs)
    return difference <= allowed or difference < slack


def _values_agree(answer: _Quantity, gold: _Quantity, tolerance: _Tolerance) -> bool | None:
    """Whether two quantities have the same value at every sample point where both are defined;
    None when no point defines both (1/0), so there is nothing to compare."""
    symbols = sorted(answer.value.free_symbols | gold.value.free_symbols, key=str)
    if symbols:
        pairs = [
            (_evaluate(answer.value, point), _evaluate(gold.value, point))
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


def _compare_quantities(answer: _Quantity, gold: _Quantity, tolerance: _Tolerance) -> _Verdict:
    """Compare values; units, labels and equation subjects must agree where both sides have one."""
    if answer.unit and gold.unit and not _same_text(answer.unit, gold.unit):
        return _Verdict(False, GradeStatus.graded, GradeMethod.unit_mismatch)
    has_variables = bool(answer.value.free_symbols or gold.value.free_symbols)
    method = GradeMethod.symbolic if has_variables else GradeMethod.numeric
    if answer.subject and gold.subject and answer.subject != gold.subject:
        return _Verdict(False, GradeStatus.graded, method)
    agree = _values_agree(answer, gold, tolerance)
    if agree is None:
        return _Verdict(False, GradeStatus.unparseable, method)
    return _Verdict(agree, GradeStatus.graded, method)


# --- the math parser ---------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<command>\\[A-Za-z]+)"
    r"|(?P<name>[A-Za-z]+)|(?P<op>[-+*/^()\[\]{}]))"
)
_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}

_Token = tuple[str, str]


class _NotMath(Exception):
    """Raised inside the math parser when the text is not an expression it accepts."""


def _parse_expression(text: str) -> sympy.Expr | None:
    """Parse math text into a sympy expression without evaluating any code, or None."""
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        return _ExpressionParser(_tokenise(text)).parse()
    except _NotMath:
        return None


def _tokenise(text: str) -> list[_Token]:
    """Split math text into (kind, text) tokens; any other character makes it not math."""
    tokens: list[_Token] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise _NotMath
        tokens.append((match.lastgroup, match[match.lastgroup]))
        position = match.end()
    return tokens


def _number(text: str) -> sympy.Rational:
    """An exact rational for a decimal literal, refusing exponents that would blow up."""
    exponent = text.lower().partition("e")[2]
    if exponent and abs(int(exponent)) > MAX_DIGITS:
        raise _NotMath
    value = Fraction(text)
    return sympy.Rational(value.numerator, value.denominator)


def _magnitude(expression: sympy.Expr) -> float | None:
    """Absolute numeric value of a variable-free expression; None when it has none."""
    value = _evaluate(expression, {})
    return None if value is None else abs(value)


def _bounded_power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """base^exponent, refusing numeric powers whose result or exponent would be huge."""
    if not exponent.free_symbols:
        size = _magnitude(exponent)
        if size is None or size > MAX_EXPONENT:
            raise _NotMath
        if not base.free_symbols:
            base_size = _magnitude(base)
            if base_size is None:
                raise _NotMath
            if base_size > 0 and size * abs(math.log10(base_size)) > MAX_DIGITS:
                raise _NotMath
    return sympy.Pow(base, exponent)


class _ExpressionParser:
    """Recursive-descent parser for the arithmetic found in final answers.

    Grammar: sums of products of signed powers of atoms. Atoms are numbers, single-letter
    variables, pi, e, sqrt, \\frac, \\sqrt[n]{}, and bracketed groups ((), [], {}). Implicit
    multiplication is allowed before letters, commands and brackets ("2x", "2\\pi", "3(x+1)"),
    but not between two numbers, so "1 234" is not 234.
    """

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._position = 0
        self._groups = 0
        self._powers = 0

    def parse(self) -> sympy.Expr:
        value = self._sum()
        if self._position != len(self._tokens):
            raise _NotMath
        return value

    def _peek(self) -> _Token | None:
        return self._tokens[self._position] if self._position < len(self._tokens) else None

    def _take(self) -> _Token:
        token = self._peek()
        if token is None:
            raise _NotMath
        self._position += 1
        return token

    def _sum(self) -> sympy.Expr:
        value = self._product()
        while self._peek() in (("op", "+"), ("op", "-")):
            operator = self._take()[1]
            right = self._product()
            value = value + right if operator == "+" else value - right
        return value

    def _product(self) -> sympy.Expr:
        value = self._signed()
        while (token := self._peek()) is not None:
            if token in (("op", "*"), ("op", "/")):
                self._take()
                right = self._signed()
                value = value * right if token[1] == "*" else value / right
            elif token[0] in ("name", "command") or token[1] in _CLOSER_OF:
                value = value * self._power()
            else:
                break
        return value

    def _signed(self) -> sympy.Expr:
        """Leading signs are folded in a loop, so a long run of them costs no recursion."""
        negative = False
        while self._peek() in (("op", "+"), ("op", "-")):
            negative ^= self._take()[1] == "-"
        value = self._power()
        return -value if negative else value

    def _power(self) -> sympy.Expr:
        """Right-associative powers, with the tower height capped before the exponent is read."""
        base = self._atom()
        if self._peek() != ("op", "^"):
            return base
        self._take()
        if self._powers >= MAX_POWER_NESTING:
            raise _NotMath
        self._powers += 1
        exponent = self._signed()
        self._powers -= 1
        return _bounded_power(base, exponent)

    def _atom(self) -> sympy.Expr:
        kind, text = self._take()
        if kind == "number":
            return _number(text)
        if kind == "name":
            return self._name(text)
        if kind == "command":
            return self._command(text)
        if text in _CLOSER_OF:
            return self._group(_CLOSER_OF[text])
        raise _NotMath

    def _group(self, closing: str) -> sympy.Expr:
        if self._groups >= MAX_GROUP_NESTING:
            raise _NotMath
        self._groups += 1
        value = self._sum()
        self._groups -= 1
        if self._take() != ("op", closing):
            raise _NotMath
        return value

    def _name(self, text: str) -> sympy.Expr:
        """Plain names: pi, e (Euler's number), sqrt, or a one-letter variable; a longer word
        is prose, not math."""
        if text == "pi":
            return sympy.pi
        if text == "e":
            return sympy.E
        if text == "sqrt":
            return _bounded_power(self._atom(), sympy.Rational(1, 2))
        if len(text) == 1:
            return sympy.Symbol(text)
        raise _NotMath

    def _command(self, text: str) -> sympy.Expr:
        """LaTeX commands: \\pi, \\frac (including the \\frac12 shorthand) and \\sqrt[n]{}."""
        if text == "\\pi":
            return sympy.pi
        if text == "\\frac":
            token = self._peek()
            if token is not None and token[0] == "number" and len(token[1]) == 2:
                if not token[1].isdigit():
                    raise _NotMath
                self._take()
                return sympy.Integer(int(token[1][0])) / sympy.Integer(int(token[1][1]))
            numerator = self._atom()
            return numerator / self._atom()
        if text == "\\sqrt":
            if self._peek() == ("op", "["):
                self._take()
                index = self._group("]")
                return _bounded_power(self._atom(), 1 / index)
            return _bounded_power(self._atom(), sympy.Rational(1, 2))
        raise _NotMath
