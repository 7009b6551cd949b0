"""Units and count labels written after a number ("12 cm", "5 apples"), in one canonical form."""

import re

from dpe.grading.text import text_tokens

_UNIT_WORD = r"(?:°[A-Za-z]?|[A-Za-zµμΩ]+)(?:\^\{?-?\d\}?)?"
_UNIT_SPLIT = re.compile(
    rf"(?P<value>.*?[\d)\]}}])(?P<space>\s?)(?P<unit>{_UNIT_WORD}(?:\s?(?:/|\s)\s?{_UNIT_WORD})*)"
)
_UNIT_PIECE = re.compile(r"(?P<word>°[a-z]?|[a-zµμω]+)(?:\^\{?(?P<power>-?\d)\}?)?")

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


def split_unit(text: str) -> tuple[str, str | None]:
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
        return split["value"], " ".join(text_tokens(tail))
    return text, None
