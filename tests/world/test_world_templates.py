"""Every template, at every level and format it offers, draws valid images and provable answers."""

import io
import re

import numpy as np
import pytest
from PIL import Image

import dpe.world
from dpe.records import OPTION_LETTERS
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import LEVELS, TEMPLATES, Template, coarse_templates, sample_from_template, verify
from dpe.world.canvas import COLOURS

SIZES = (56, 448)

CASES = [
    pytest.param(kind, template, level, id=f"{kind.value}-{template.name}-L{level}")
    for kind, templates in TEMPLATES.items()
    for template in templates
    for level in template.levels
]


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int32)


@pytest.mark.parametrize(("kind", "template", "level"), CASES)
def test_template_draws_valid_verified_samples_at_small_and_large_sizes(
    kind: CapabilityType, template: Template, level: int
) -> None:
    for size in SIZES:
        for question_format in template.formats:
            for index in range(2):
                record = sample_from_template(
                    kind, template, level, question_format, 11, index, size
                )
                with Image.open(io.BytesIO(record.image)) as image:
                    assert image.size == (size, size)
                    assert image.mode == "RGB"
                assert _pixels(record.image).std() > 0, "a blank image shows nothing to ask about"
                assert record.capability_type is kind
                assert record.difficulty == level
                assert record.question_format is question_format
                assert record.provenance["template"] == template.name
                assert verify(record)


def test_every_type_offers_every_level_and_multiple_choice_everywhere() -> None:
    for kind in CapabilityType:
        templates = TEMPLATES[kind]
        assert {level for t in templates for level in t.levels} == set(LEVELS), kind
        assert all(QuestionFormat.multiple_choice in t.formats for t in templates), kind
        names = [t.name for t in templates]
        assert len(names) == len(set(names)), f"{kind}: template names must be unique"


def test_coarse_templates_are_level_one_with_few_short_answers() -> None:
    for kind, templates in TEMPLATES.items():
        for template in (t for t in templates if t.coarse):
            assert template.levels == (1,), template.name
            for index in range(20):
                record = sample_from_template(
                    kind, template, 1, QuestionFormat.multiple_choice, 5, index, 56
                )
                assert 2 <= len(record.options) <= 4
                assert all(len(option.split()) == 1 for option in record.options)


def test_package_docstring_lists_exactly_the_coarse_templates() -> None:
    doc = dpe.world.__doc__ or ""
    for kind, names in coarse_templates().items():
        line = next(line for line in doc.splitlines() if line.startswith(f"- {kind.value}:"))
        assert re.findall(r"`(\w+)`", line) == names, kind
    assert coarse_templates()[CapabilityType.text_dense] == []
    assert coarse_templates()[CapabilityType.math_formula] == []
    assert sum(bool(names) for names in coarse_templates().values()) == 10


def test_multiple_choice_answer_is_a_letter_whose_option_line_is_in_the_question() -> None:
    for kind, templates in TEMPLATES.items():
        for template in templates:
            level = template.levels[-1]
            record = sample_from_template(
                kind, template, level, QuestionFormat.multiple_choice, 2, 0, 56
            )
            assert record.answer in OPTION_LETTERS[: len(record.options)]
            lines = record.question.splitlines()
            for letter, option in zip(OPTION_LETTERS, record.options, strict=False):
                assert f"{letter}. {option}" in lines
            assert record.answer_text == record.options[OPTION_LETTERS.index(record.answer)]


def _sample(kind: CapabilityType, name: str, index: int) -> tuple[dict, np.ndarray]:
    template = next(t for t in TEMPLATES[kind] if t.name == name)
    record = sample_from_template(kind, template, 1, QuestionFormat.free_text, 9, index, 64)
    return {"answer": record.answer, "params": record.provenance["params"]}, _pixels(record.image)


def test_dominant_colour_drawing_matches_its_answer() -> None:
    for index in range(10):
        sample, pixels = _sample(CapabilityType.artistic, "dominant_colour", index)
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        assert tuple(colours[counts.argmax()]) == COLOURS[sample["answer"]]


def test_brighter_half_drawing_matches_its_answer() -> None:
    for index in range(10):
        sample, pixels = _sample(CapabilityType.mixed, "brighter_half", index)
        half = pixels.shape[0] // 2
        brightness = {
            "left": pixels[:, :half].mean(),
            "right": pixels[:, half:].mean(),
            "top": pixels[:half].mean(),
            "bottom": pixels[half:].mean(),
        }
        first, second = (
            ("left", "right") if sample["params"]["split"] == "vertical" else ("top", "bottom")
        )
        brighter = first if brightness[first] > brightness[second] else second
        assert brighter == sample["answer"]


def test_day_sky_is_brighter_than_night_sky() -> None:
    for index in range(10):
        sample, pixels = _sample(CapabilityType.natural_scene, "time_of_day", index)
        sky = pixels[: pixels.shape[0] // 2].mean()
        assert (sky > 100) == (sample["answer"] == "day")
