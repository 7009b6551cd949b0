"""A small parser that reads math text into sympy objects directly, never evaluating model text.

Limits on length, nesting, power towers and magnitude keep every answer (``9^{9^{9}}``, thousands
of nested braces) cheap to read, so that no answer can stall a pass-rate computation that grades
thousands of answers.
"""

import cmath
import math
import re
from fractions import Fraction

import sympy

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

_EVAL_DIGITS = 30


def evaluate(expression: sympy.Expr, point: dict[sympy.Symbol, float]) -> complex | None:
    """Numeric value of an expression at a point; None when undefined, infinite or too large."""
    try:
        value = complex(expression.evalf(_EVAL_DIGITS, subs=point))
    except (TypeError, ValueError, ArithmeticError):
        return None
    return value if cmath.isfinite(value) else None


_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<command>\\[A-Za-z]+)"
    r"|(?P<name>[A-Za-z]+)|(?P<op>[-+*/^()\[\]{}]))"
)
_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}

_Token = tuple[str, str]


class _NotMath(Exception):
    """Raised inside the math parser when the text is not an expression it accepts."""


def parse_expression(text: str) -> sympy.Expr | None:
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
    value = evaluate(expression, {})
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
