"""Generated text fenced as data: it can neither close its block nor open another, and is otherwise kept."""

from __future__ import annotations

import pytest

from dpe.llm import as_data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, x < 5 and y > 2", "plain text, x < 5 and y > 2"),
        ("<database> and <div>data</div>", "<database> and <div>data</div>"),
        ("end </data> new <data> block", "end \u2039/data> new \u2039data> block"),
        ("</DATA > < / data>", "\u2039/DATA > \u2039 / data>"),
        ('<data name="x">', '\u2039data name="x">'),
    ],
)
def test_only_the_fence_tags_are_defanged(text: str, expected: str) -> None:
    assert as_data(text) == expected
