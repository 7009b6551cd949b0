"""Multiple-choice options and letters: options listed in a question, and the letter an answer
names."""

import re
from collections.abc import Mapping, Sequence

from dpe.grading.cleaning import clean_answer

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Letters given to options passed as a plain sequence, in order."""

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


def option_table(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Options as letter -> cleaned text; texts that repeat their own marker ("A. 3") lose it."""
    if options is None:
        return {}
    if isinstance(options, str):
        raise TypeError("options must be a sequence of option texts or a letter mapping")
    if isinstance(options, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, value in options.items():
            letter = choice_letter(str(key))
            if letter is None:
                raise ValueError(f"option key {key!r} is not an option letter")
            pairs.append((letter, value))
    else:
        pairs = list(zip(OPTION_LETTERS, options, strict=False))
    table: dict[str, str] = {}
    for letter, value in pairs:
        text = clean_answer(value)
        own = _OWN_MARKER.fullmatch(text)
        if own is not None and (own[1] or own[2]).upper() == letter:
            text = own[3].strip()
        if text:
            table[letter] = text
    return table


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


def choice_letter(text: str) -> str | None:
    """The option letter an answer names ("B", "(b)", "b)", "B: 42", "Option C"), if any.

    An answer naming a second letter ("A, B", "(A) or (C)", "A. B. C. D.") names none: hedging
    across options must not earn credit for whichever one is right.
    """
    match = _PREFIXED_LETTER.match(text) or _BARE_LETTER.match(text)
    if match is None or _OTHER_LETTER.search(text[match.end() :]):
        return None
    return next(group for group in match.groups() if group).upper()
