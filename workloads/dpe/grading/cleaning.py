"""Reducing an answer to its content: balanced braces, the last box, text wrappers, markup."""

import re

_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox|"
    r"operatorname)\s*\{"
)
_MATH_DELIMITER = re.compile(r"\\?\$|\\[()\[\]]")
_QUOTES = "\"'`“”‘’"


def brace_pairs(text: str) -> dict[int, int]:
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


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{}` or `\\fbox{}` whose braces balance, if any."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    pairs = brace_pairs(text)
    for start in reversed(starts):
        close = pairs.get(start.end() - 1)
        if close is not None:
            return text[start.end() : close]
    return None


def _unwrap_text_commands(text: str) -> str:
    """Drop `\\text{...}`-like wrappers (keeping their content), nested ones included."""
    if "\\" not in text:
        return text
    pairs = brace_pairs(text)
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


def clean_answer(text: str) -> str:
    """Reduce an answer to its content: no boxing, math delimiters, text wrappers or markdown."""
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = _MATH_DELIMITER.sub("", text)
    text = _unwrap_text_commands(text)
    text = " ".join(text.replace("**", "").replace("__", "").split())
    return text.strip(_QUOTES).strip().rstrip(" .。")
