"""Typeset arithmetic: expressions to evaluate, linear equations to solve, values to compare.

Expressions are kept as token lists (numbers, operators, parentheses). The drawing joins them into
text; `solve` parses them with its own small precedence parser, so the answer never comes from the
string that was drawn. Multiplication is drawn as a middle dot: the built-in font has no times sign.
Nothing here is coarse.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image

from dpe.world.canvas import Canvas
from dpe.world.template import NUMBER_ANSWER, WORD_ANSWER, Params, Template, nearby_numbers, others

Token = int | str
SIDES: tuple[str, ...] = ("left", "right")
_SHOWN = {"*": "·"}
PAPER = (252, 252, 246)


def evaluate(tokens: Sequence[Token]) -> int:
    """The value of an integer expression with +, -, * and parentheses, by precedence climbing."""
    position = 0

    def peek() -> Token | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> Token:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"expression {list(tokens)} ends too early")
        position += 1
        return tokens[position - 1]

    def factor() -> int:
        token = take()
        if token == "(":
            value = expression()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {list(tokens)}")
            return value
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValueError(f"expected a number in {list(tokens)}, got {token!r}")
        return token

    def term() -> int:
        value = factor()
        while peek() == "*":
            take()
            value *= factor()
        return value

    def expression() -> int:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    result = expression()
    if position != len(tokens):
        raise ValueError(f"trailing tokens in {list(tokens)}")
    return result


def typeset(tokens: Sequence[Token]) -> str:
    """The expression as drawn: spaced operators, tight parentheses."""
    text = " ".join(_SHOWN.get(str(t), str(t)) for t in tokens)
    return text.replace("( ", "(").replace(" )", ")")


def _expression(rng: random.Random, level: int) -> list[Token]:
    a, b, c, d = (rng.randint(2, 9) for _ in range(4))
    if level == 1:
        return [max(a, b), rng.choice("+-"), min(a, b)]
    if level == 2:
        return rng.choice([[a, "*", b, "+", c], [a, "+", b, "*", c], [a, "*", b, "-", c]])
    return rng.choice(
        [["(", a, "+", b, ")", "*", c, "-", d], [a, "*", "(", b, "+", c, ")", "-", d]]
    )


class EvaluateExpression(Template):
    """An arithmetic expression; levels add operations and precedence traps."""

    name = "evaluate_expression"
    levels = (1, 2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        return {"tokens": _expression(rng, level)}

    def question(self, params: Params) -> str:
        return "What is the value of the expression in the image?"

    def solve(self, params: Params) -> str:
        return str(evaluate(params["tokens"]))

    def distractors(self, params: Params) -> list[str]:
        """Nearby values, plus the value read strictly left to right, ignoring precedence."""
        tokens = params["tokens"]
        numbers = [t for t in tokens if isinstance(t, int)]
        operators = [t for t in tokens if t in ("+", "-", "*")]
        left_to_right = numbers[0]
        for op, number in zip(operators, numbers[1:], strict=False):
            left_to_right = evaluate([left_to_right, op, number])
        return [str(left_to_right), *nearby_numbers(evaluate(tokens), lowest=0)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, PAPER)
        text = typeset(params["tokens"])
        canvas.text((0.5, 0.5), text, min(0.2, 1.8 / len(text)))
        return canvas.image


def _linear(coefficient: int, constant: int) -> str:
    """`ax + b` as a person writes it: no `1x`, no `+ -`, no `+ 0`."""
    if coefficient == 0:
        return str(constant)
    variable = "x" if coefficient == 1 else f"{coefficient}x"
    if constant == 0:
        return variable
    return f"{variable} {'+' if constant > 0 else '-'} {abs(constant)}"


class SolveEquation(Template):
    """A linear equation a·x + b = c·x + d with a whole-number solution."""

    name = "solve_equation"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        while True:
            x = rng.randint(1, 9)
            a = rng.randint(2, 5) if level == 2 else rng.randint(3, 7)
            c = 0 if level == 2 else rng.randint(1, a - 1)
            b = rng.randint(1, 9) * (1 if level == 2 else rng.choice([1, -1]))
            d = (a - c) * x + b
            if d != 0:
                return {"left": [a, b], "right": [c, d]}

    def question(self, params: Params) -> str:
        return "Solve the equation in the image. What is x?"

    def solve(self, params: Params) -> str:
        (a, b), (c, d) = params["left"], params["right"]
        if a == c or (d - b) % (a - c):
            raise ValueError(f"{_linear(a, b)} = {_linear(c, d)} has no whole-number solution")
        return str((d - b) // (a - c))

    def distractors(self, params: Params) -> list[str]:
        (_, b), (_, d) = params["left"], params["right"]
        return [str(d - b), str(d + b), *nearby_numbers(int(self.solve(params)), lowest=0)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, PAPER)
        text = f"{_linear(*params['left'])} = {_linear(*params['right'])}"
        canvas.text((0.5, 0.5), text, min(0.16, 1.8 / len(text)))
        return canvas.image


class CompareExpressions(Template):
    """Two expressions side by side; say which side is larger (never equal)."""

    name = "compare_expressions"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        while True:
            left, right = _expression(rng, level), _expression(rng, level)
            if evaluate(left) != evaluate(right):
                return {"left": left, "right": right}

    def question(self, params: Params) -> str:
        return "Which expression has the larger value, the left one or the right one?"

    def solve(self, params: Params) -> str:
        left, right = evaluate(params["left"]), evaluate(params["right"])
        if left == right:
            raise ValueError("both expressions have the same value")
        return "left" if left > right else "right"

    def distractors(self, params: Params) -> list[str]:
        return others(SIDES, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, PAPER)
        canvas.line([(0.5, 0.2), (0.5, 0.8)], "gray", 0.004)
        for x, tokens in ((0.26, params["left"]), (0.74, params["right"])):
            text = typeset(tokens)
            canvas.text((x, 0.5), text, min(0.1, 0.85 / len(text)))
        return canvas.image


TEMPLATES: tuple[Template, ...] = (EvaluateExpression(), SolveEquation(), CompareExpressions())
