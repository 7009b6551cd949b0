"""The warm model's recipe leaves a profile: full-share types, light (weak) types, and answer words kept apart."""

from __future__ import annotations

from dpe.models.bootstrap import LIGHT_SHARE, LIGHT_TYPES, WARM_FORMATS, WARM_SAMPLES_PER_TYPE, warm_quotas
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import generate_for_quota


def test_light_types_get_a_tenth_of_a_full_share() -> None:
    quotas = warm_quotas()
    assert set(quotas) == set(CapabilityType)
    assert all(quotas[t] == round(WARM_SAMPLES_PER_TYPE * LIGHT_SHARE) for t in LIGHT_TYPES)
    assert all(quotas[t] == WARM_SAMPLES_PER_TYPE for t in CapabilityType if t not in LIGHT_TYPES)
    assert QuestionFormat.multiple_choice not in WARM_FORMATS


def test_weak_and_strong_types_answer_in_different_words() -> None:
    """A model this small shares answer words across types: training the light types must not
    rewrite what the full-share types answer (the blind reading types are left out: nothing to keep).
    The one overlap is a chart's line trend, up or down, which a diagram's arrow also answers."""
    blind = {CapabilityType.text_dense, CapabilityType.math_formula}
    quotas = {t: 40 for t in CapabilityType if t not in blind}
    records = list(generate_for_quota(quotas, 3, image_size=56, difficulty=1, formats=WARM_FORMATS))
    light = {r.answer for r in records if r.capability_type in LIGHT_TYPES}
    full = {r.answer for r in records if r.capability_type not in LIGHT_TYPES}
    assert light and full and light & full == {"up", "down"}
