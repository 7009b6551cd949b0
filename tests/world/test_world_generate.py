"""The world's public API: determinism, even spread, quotas, filters and answer verification."""

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpe.records import OPTION_LETTERS, SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import (
    GENERATOR,
    WORLD_SOURCE,
    generate,
    generate_for_quota,
    generate_stream,
    sample_at,
    sample_id,
    verify,
)
from dpe.world.sampler import split_evenly

SMALL = 56


@pytest.fixture(scope="module")
def batch() -> list[SampleRecord]:
    """A few hundred small samples over all types, shared by the read-only tests below."""
    return generate(None, 300, seed=4, image_size=SMALL)


def test_verify_holds_for_every_sample_of_a_few_hundred(batch: list[SampleRecord]) -> None:
    assert len(batch) == 300
    assert all(verify(record) for record in batch)


def test_samples_carry_their_recipe(batch: list[SampleRecord]) -> None:
    for record in batch:
        provenance = record.provenance
        assert record.source == WORLD_SOURCE
        assert provenance["generator"] == GENERATOR
        assert {"template", "params", "seed", "index", "image_size"} <= provenance.keys()
        assert record.id == sample_id(record.capability_type, 4, provenance["index"])
    assert len({record.id for record in batch}) == len(batch)


def test_count_is_spread_evenly_over_types(batch: list[SampleRecord]) -> None:
    counts = Counter(record.capability_type for record in batch)
    assert set(counts) == set(CapabilityType)
    assert set(counts.values()) == {25}
    uneven = Counter(r.capability_type for r in generate(None, 14, seed=1, image_size=SMALL))
    assert sorted(uneven.values()) == [1] * 10 + [2] * 2
    assert uneven[CapabilityType.geometric] == uneven[CapabilityType.medical] == 2


def test_split_evenly_gives_larger_shares_first() -> None:
    assert split_evenly(14, 4) == [4, 4, 3, 3]
    assert split_evenly(0, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        split_evenly(-1, 2)


def test_every_prefix_of_the_stream_stays_balanced(batch: list[SampleRecord]) -> None:
    first = Counter(record.capability_type for record in batch[:24])
    assert set(first.values()) == {2}
    assert generate(None, 30, seed=4, image_size=SMALL) == batch[:30]


def test_levels_and_formats_are_all_drawn(batch: list[SampleRecord]) -> None:
    assert {record.difficulty for record in batch} == {1, 2, 3}
    assert {record.question_format for record in batch} == set(QuestionFormat)


def test_same_arguments_give_byte_identical_records() -> None:
    types = [CapabilityType.map, CapabilityType.chart_graph, CapabilityType.medical]
    first = generate(types, 30, seed=7, image_size=SMALL)
    again = generate(list(reversed(types)), 30, seed=7, image_size=SMALL)
    assert [r.model_dump() for r in first] == [r.model_dump() for r in again]
    other = generate(types, 30, seed=8, image_size=SMALL)
    assert [r.image for r in other] != [r.image for r in first]


def test_a_sample_can_be_rebuilt_alone() -> None:
    records = generate([CapabilityType.diagram, CapabilityType.mixed], 10, seed=3, image_size=SMALL)
    for record in records:
        alone = sample_at(record.capability_type, 3, record.provenance["index"], image_size=SMALL)
        assert alone == record


def test_stream_matches_list() -> None:
    streamed = list(generate_stream([CapabilityType.artistic], 5, seed=2, image_size=SMALL))
    assert streamed == generate([CapabilityType.artistic], 5, seed=2, image_size=SMALL)


def test_multiple_choice_answers_are_letters_with_their_options_in_the_text(
    batch: list[SampleRecord],
) -> None:
    chosen = [r for r in batch if r.question_format is QuestionFormat.multiple_choice]
    assert chosen
    for record in chosen:
        assert record.answer in OPTION_LETTERS[: len(record.options)]
        for letter, option in zip(OPTION_LETTERS, record.options, strict=False):
            assert f"\n{letter}. {option}\n" in record.question
    others = [r for r in batch if r.question_format is not QuestionFormat.multiple_choice]
    assert all(not record.options for record in others)


def test_quota_generation_yields_exactly_the_requested_types() -> None:
    quotas = {CapabilityType.text_dense: 3, CapabilityType.geometric: 5, CapabilityType.map: 0}
    records = list(generate_for_quota(quotas, seed=5, image_size=SMALL))
    counts = Counter(record.capability_type for record in records)
    assert counts == Counter({CapabilityType.geometric: 5, CapabilityType.text_dense: 3})
    assert all(verify(record) for record in records)
    assert list(generate_for_quota({}, seed=5, image_size=SMALL)) == []


def test_quota_generation_honours_a_single_difficulty() -> None:
    quotas = dict.fromkeys(CapabilityType, 2)
    records = list(generate_for_quota(quotas, seed=6, image_size=SMALL, difficulty=1))
    assert len(records) == 24
    assert {record.difficulty for record in records} == {1}


def test_bad_quotas_and_filters_fail_at_the_call() -> None:
    with pytest.raises(ValueError, match="negative"):
        generate_for_quota({CapabilityType.map: -1}, seed=0)
    with pytest.raises(ValueError, match="difficulties"):
        generate_for_quota({CapabilityType.map: 1}, seed=0, difficulty=4)
    with pytest.raises(ValueError, match="text_dense"):
        generate([CapabilityType.text_dense], 2, 0, SMALL, [1], [QuestionFormat.numerical])
    with pytest.raises(ValueError, match="image_size"):
        generate(None, 1, 0, image_size=8)
    with pytest.raises(ValueError, match="types"):
        generate([], 1, 0)


def test_filters_narrow_levels_and_formats() -> None:
    records = generate(
        None, 24, seed=9, image_size=SMALL, difficulties=[1], formats=["multiple_choice"]
    )
    assert {record.difficulty for record in records} == {1}
    assert {record.question_format for record in records} == {QuestionFormat.multiple_choice}


def test_verify_rejects_tampered_and_foreign_records(batch: list[SampleRecord]) -> None:
    record = next(r for r in batch if r.question_format is QuestionFormat.numerical)
    wrong = record.model_copy(update={"answer": str(int(record.answer) + 1)})
    assert not verify(wrong)
    params = dict(record.provenance["params"])
    tampered = {**record.provenance, "params": {k: None for k in params}}
    assert not verify(record.model_copy(update={"provenance": tampered}))
    unknown = {**record.provenance, "template": "no_such_template"}
    assert not verify(record.model_copy(update={"provenance": unknown}))
    assert not verify(record.model_copy(update={"provenance": {"generator": "agents"}}))
    assert not verify(record.model_copy(update={"question": record.question + " Really?"}))

    choice = next(r for r in batch if r.question_format is QuestionFormat.multiple_choice)
    other = next(x for x in OPTION_LETTERS[: len(choice.options)] if x != choice.answer)
    assert not verify(choice.model_copy(update={"answer": other}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(list(CapabilityType)),
    seed=st.integers(min_value=-(2**31), max_value=2**31),
    index=st.integers(min_value=0, max_value=10**6),
)
def test_any_seed_and_index_give_a_verified_sample(
    kind: CapabilityType, seed: int, index: int
) -> None:
    record = sample_at(kind, seed, index, image_size=SMALL)
    assert verify(record)
    assert record.id == f"world-{kind.value}-{seed}-{index}"


@pytest.mark.slow
def test_records_are_identical_across_processes_and_hash_seeds() -> None:
    program = (
        "import hashlib; from dpe.world import generate; "
        "print(hashlib.sha256(b''.join(r.image + r.question.encode() "
        "for r in generate(None, 24, 5, image_size=56))).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in ("0", "1")
    }
    local = generate(None, 24, 5, image_size=SMALL)
    expected = hashlib.sha256(b"".join(r.image + r.question.encode() for r in local)).hexdigest()
    assert digests == {expected}
