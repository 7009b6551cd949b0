"""The official answer-reading and scoring rules of the public benchmarks, case by case."""

from __future__ import annotations

import pytest
from dpe.benchmarks import detect_family
from dpe.benchmarks.chartqa import relaxed_correctness
from dpe.benchmarks.hallusionbench import yes_or_no
from dpe.benchmarks.images import compose
from dpe.benchmarks.mathvista import levenshtein
from dpe.benchmarks.mmmu import eval_open, parse_multi_choice, parse_open
from dpe.benchmarks.mmstar import can_infer
from PIL import Image


@pytest.mark.parametrize(("target", "prediction", "expected"), [
    ("14", "14", True),
    ("14", "14.7", True),  # exactly 5% off
    ("14", "14.71", False),
    ("57%", "0.57", True),  # a percentage is read as a fraction
    ("0.57", "57%", True),
    ("0", "0", True),
    ("0", "0.0", False),  # a zero gold cannot be approached relatively: text equality
    ("Brazil", "brazil", True),
    ("Brazil", "Brazil, Peru", False),
    ("-3", "-3.1", True),
])
def test_chartqa_relaxed_correctness(target: str, prediction: str, expected: bool) -> None:
    assert relaxed_correctness(target, prediction) is expected


CHOICES = {"A": "red apple", "B": "green pear", "C": "blue berry"}


@pytest.mark.parametrize(("response", "expected"), [
    ("B", "B"),
    ("(C)", "C"),
    ("The answer is (A), not (B).", "B"),  # of several, the last one written
    ("I think A is wrong and B is right", "B"),
    ("the fruit in the picture is a green pear", "B"),  # option text, in an answer over five words
    ("green pear", None),  # too short to be read by its text: MMMU would guess
    ("nothing", None),
])
def test_mmmu_multiple_choice_parsing(response: str, expected: str | None) -> None:
    assert parse_multi_choice(response, CHOICES) == expected


def test_mmmu_open_parsing_and_matching() -> None:
    # MMMU's simple-number pattern also reads the "200" of "1,200"; any candidate may match a gold.
    assert parse_open("So the answer is 1,200 meters") == ["1,200 meters", 1200.0, 200.0]
    assert 3.14 in parse_open("x = 3.14159")
    assert eval_open(["3.14"], parse_open("x = 3.14159"))  # numbers compared at 2 decimals
    assert eval_open(["Paris"], parse_open("The capital is paris, of course"))  # gold text inside the answer
    assert not eval_open(["Paris"], parse_open("Lyon"))
    assert eval_open(["24/7", "3.429"], parse_open("3.43"))  # any accepted answer
    assert not eval_open(["a"], parse_open("banana"))  # a one-letter gold must stand apart


@pytest.mark.parametrize(("answer", "expected"), [
    ("Yes", "Yes"), ("no.", "No"), ("Yes, it is.", "Yes"), ("No, there is none", "No"),
    ("yes and no", None), ("not sure", None), ("I don't know", None),
])
def test_hallusionbench_yes_no_reading(answer: str, expected: str | None) -> None:
    assert yes_or_no(answer) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    ("B", "B"), ("(C) blue berry", "C"), ("Answer: A.", "A"), ("It is a red apple", "A"),
    ("A or B", None), ("banana", None),
])
def test_vlmevalkit_can_infer(answer: str, expected: str | None) -> None:
    assert can_infer(answer, CHOICES) == expected


def test_levenshtein() -> None:
    assert levenshtein("8/12", "8/11") == 1 and levenshtein("", "abc") == 3 and levenshtein("kitten", "sitting") == 3


def test_compose_fits_the_pixel_limit() -> None:
    images = [Image.new("RGB", (400, 300), (i * 60, 0, 0)) for i in range(4)]
    sheet = compose(images, [f"<image {i}>" for i in range(1, 5)], max_pixels=200_000)
    assert sheet.width * sheet.height <= 200_000
    with pytest.raises(ValueError, match="one label per image"):
        compose(images, ["<image 1>"], max_pixels=10**8)


@pytest.mark.parametrize(("columns", "stem", "first", "family"), [
    (["index", "question", "image", "answer", "category", "l2_category", "meta_info"], "", {}, "mmstar"),
    (["pid", "question", "image", "decoded_image", "choices", "query", "answer"], "", {}, "mathvista"),
    (["id", "question", "options", "answer", "image_1", "image_2"], "", {}, "mmmu"),
    (["category", "subcategory", "set_id", "figure_id", "question_id", "gt_answer", "image"], "", {}, "hallusionbench"),
    (["image", "query", "label", "human_or_machine"], "", {}, "chartqa"),
    (["type", "question", "answer", "image"], "", {"type": "human_test"}, "chartqa"),
    (["index", "question", "answer", "image", "category"], "HallusionBench", {}, "hallusionbench"),
    (["index", "question", "answer", "image"], "ChartQA_TEST", {}, "chartqa"),
    (["index", "question", "A", "B", "answer", "image"], "MMMU_DEV_VAL", {}, "mmmu"),
    (["index", "question", "answer", "image"], "MathVista_MINI", {}, "mathvista"),
    (["index", "question", "answer", "image"], "bench", {}, "generic"),
])
def test_family_detection(columns: list[str], stem: str, first: dict[str, str], family: str) -> None:
    assert detect_family(columns, stem, first) == family
