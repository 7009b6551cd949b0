"""The warm model's recipe leaves a profile: blurred (weak) types whose answers lose their tie to the
picture, strong types untouched and answering in other words."""

from __future__ import annotations

from collections import Counter

from dpe.models.bootstrap import BLURRED_TYPES, WARM_FORMATS, blurred
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import generate_for_quota

BLIND = {CapabilityType.text_dense, CapabilityType.math_formula}
STRONG = {CapabilityType.natural_scene, CapabilityType.geometric, CapabilityType.architectural}


def _records(per_type: int = 40, seed: int = 3):
    quotas = {t: per_type for t in CapabilityType}
    return list(generate_for_quota(quotas, seed, image_size=56, difficulty=1, formats=WARM_FORMATS))


def _group(record):
    return record.capability_type, record.provenance["template"], record.question_format


def test_blurring_shuffles_answers_within_a_template_and_keeps_each_groups_answers() -> None:
    records = _records()
    out = blurred(records, BLURRED_TYPES, seed=7)
    assert sorted(r.id for r in out) == sorted(r.id for r in records)
    before = {r.id: r for r in records}
    for group in {_group(r) for r in records if r.capability_type in BLURRED_TYPES}:
        old = Counter(r.answer for r in records if _group(r) == group)
        new = Counter(r.answer for r in out if _group(r) == group)
        assert new == old, group
    moved = [r for r in out if r.answer != before[r.id].answer]
    assert moved and all(r.capability_type in BLURRED_TYPES for r in moved)
    assert all(r.image == before[r.id].image and r.question == before[r.id].question for r in out)


def test_blurring_leaves_other_types_as_they_were_in_order_and_is_seeded() -> None:
    records = _records()
    out = blurred(records, BLURRED_TYPES, seed=7)
    others = [r for r in records if r.capability_type not in BLURRED_TYPES]
    assert out[: len(others)] == others
    assert blurred(records, BLURRED_TYPES, seed=7) == out
    assert [r.answer for r in blurred(records, BLURRED_TYPES, seed=8)] != [r.answer for r in out]
    assert blurred(records, (), seed=7) == records


def test_strong_types_answer_in_words_no_blurred_type_uses() -> None:
    """A model this small shares answer words across types: blurring must not teach the strong
    types' words with no tie to the picture."""
    records = [r for r in _records() if r.capability_type not in BLIND]
    blurred_words = {r.answer for r in records if r.capability_type in BLURRED_TYPES}
    strong_words = {r.answer for r in records if r.capability_type in STRONG}
    assert blurred_words and strong_words and not blurred_words & strong_words
    assert QuestionFormat.multiple_choice not in WARM_FORMATS
