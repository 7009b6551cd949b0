"""Free-text answers: equal after case folding, punctuation and article removal, with small
number words read as digits ("three" is "3") and a plural "s"/"es" allowed on the last word only.
Irregular plurals, synonyms and partial answers do not match. Lists are compared in the order
written: "1, 2, 3" matches "1,2,3" but not "3, 2, 1", since order often matters."""

import re
import unicodedata

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


def text_tokens(text: str) -> tuple[str, ...]:
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


def same_text(first: str, second: str) -> bool:
    """Text equality after normalisation, allowing a plural ending on the last word only."""
    a, b = text_tokens(first), text_tokens(second)
    if a == b:
        return True
    return bool(a) and len(a) == len(b) and a[:-1] == b[:-1] and _plural_pair(a[-1], b[-1])
