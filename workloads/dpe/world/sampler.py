"""Turning (capability type, seed, index) into a sample record, and checking records afterwards.

Each sample draws from its own random stream, keyed by generator, type, seed and index, so a
record can be rebuilt alone, in any order, and a dataset of N samples is a prefix of one of N+1.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence

from dpe.records import OPTION_LETTERS, SampleRecord, png_bytes
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world.registry import TEMPLATES, find_template
from dpe.world.template import LEVELS, Template, choose_options, compose_question

GENERATOR = "dpe.world"
"""The generator name recorded in every world sample's provenance."""

WORLD_SOURCE = "world"
"""The `source` of every world sample."""

MIN_IMAGE_SIZE = 32
"""Smallest image side drawn: below it shapes collapse to single pixels and answers vanish."""

Choice = tuple[Template, int, QuestionFormat]


def sample_id(capability_type: CapabilityType, seed: int, index: int) -> str:
    """The stable id of the index-th sample of a type for a seed."""
    return f"world-{capability_type.value}-{seed}-{index}"


def _levels(difficulties: Sequence[int] | None) -> tuple[int, ...]:
    if difficulties is None:
        return LEVELS
    levels = tuple(dict.fromkeys(difficulties))
    unknown = [d for d in levels if d not in LEVELS]
    if unknown or not levels:
        raise ValueError(
            f"difficulties must be a non-empty subset of {list(LEVELS)}, got {list(difficulties)}"
        )
    return levels


def _formats(formats: Sequence[QuestionFormat] | None) -> tuple[QuestionFormat, ...]:
    if formats is None:
        return tuple(QuestionFormat)
    chosen = tuple(dict.fromkeys(QuestionFormat(f) for f in formats))
    if not chosen:
        raise ValueError("formats must not be empty")
    return chosen


def _choices(
    capability_type: CapabilityType, levels: tuple[int, ...], formats: tuple[QuestionFormat, ...]
) -> list[Choice]:
    """Every (template, level, format) of a type that the filters allow, in registry order."""
    choices = [
        (template, level, fmt)
        for template in TEMPLATES[capability_type]
        for level in template.levels
        if level in levels
        for fmt in template.formats
        if fmt in formats
    ]
    if not choices:
        raise ValueError(
            f"no {capability_type.value} template offers difficulty in {list(levels)} "
            f"with format in {[f.value for f in formats]}"
        )
    return choices


def _check_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")


def _build(
    capability_type: CapabilityType, seed: int, index: int, image_size: int, choices: list[Choice]
) -> SampleRecord:
    """Draw level, then template and format, then parameters, all from the sample's own stream.

    Parameters pass through JSON before use, so the answer and the picture come from exactly the
    values the record keeps (lists, not tuples), and `verify` sees what the generator saw.
    """
    rng = random.Random(f"{GENERATOR}/{capability_type.value}/{seed}/{index}")
    level = rng.choice(sorted({level for _, level, _ in choices}))
    template, _, question_format = rng.choice([c for c in choices if c[1] == level])
    params = json.loads(json.dumps(template.sample(rng, level)))
    answer = template.solve(params)
    options: list[str] = []
    if question_format is QuestionFormat.multiple_choice:
        options = choose_options(rng, answer, template.distractors(params), level)
        answer = OPTION_LETTERS[options.index(answer)]
    return SampleRecord(
        id=sample_id(capability_type, seed, index),
        image=png_bytes(template.draw(params, image_size)),
        question=compose_question(template.question(params), question_format, options),
        answer=answer,
        capability_type=capability_type,
        question_format=question_format,
        options=options,
        difficulty=level,
        source=WORLD_SOURCE,
        provenance={
            "generator": GENERATOR,
            "template": template.name,
            "params": params,
            "seed": seed,
            "index": index,
            "image_size": image_size,
        },
    )


def sample_at(
    capability_type: CapabilityType,
    seed: int,
    index: int,
    image_size: int = 448,
    difficulties: Sequence[int] | None = None,
    formats: Sequence[QuestionFormat] | None = None,
) -> SampleRecord:
    """The index-th sample of a type for a seed, without generating any other.

    The filters narrow what is drawn, so the same id under different filters names a different
    sample: keep the filters with the seed when a dataset must be rebuilt.
    """
    _check_size(image_size)
    capability_type = CapabilityType(capability_type)
    choices = _choices(capability_type, _levels(difficulties), _formats(formats))
    return _build(capability_type, seed, index, image_size, choices)


def sample_from_template(
    capability_type: CapabilityType,
    template: Template,
    level: int,
    question_format: QuestionFormat,
    seed: int,
    index: int,
    image_size: int = 448,
) -> SampleRecord:
    """A sample from one given template, level and format: for exhaustive checks and previews."""
    _check_size(image_size)
    if level not in template.levels or question_format not in template.formats:
        raise ValueError(
            f"{template.name} offers levels {template.levels} and formats {template.formats}"
        )
    return _build(
        CapabilityType(capability_type),
        seed,
        index,
        image_size,
        [(template, level, question_format)],
    )


def split_evenly(count: int, parts: int) -> list[int]:
    """`count` split into `parts` shares differing by at most one, the larger shares first."""
    if count < 0 or parts < 1:
        raise ValueError(f"cannot split {count} into {parts} parts")
    base, extra = divmod(count, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _canonical(types: Sequence[CapabilityType] | None) -> list[CapabilityType]:
    """Requested types in the taxonomy's canonical order, so caller order never changes the data."""
    if types is None:
        return list(CapabilityType)
    wanted = {CapabilityType(t) for t in types}
    if not wanted:
        raise ValueError("types must not be empty; pass None for all types")
    return [t for t in CapabilityType if t in wanted]


def _interleaved(
    quotas: Mapping[CapabilityType, int],
    seed: int,
    image_size: int,
    choices: Mapping[CapabilityType, list[Choice]],
) -> Iterator[SampleRecord]:
    """Samples type by type within each index, so any prefix of the stream stays balanced."""
    for index in range(max(quotas.values(), default=0)):
        for capability_type, quota in quotas.items():
            if index < quota:
                yield _build(capability_type, seed, index, image_size, choices[capability_type])


def generate_stream(
    types: Sequence[CapabilityType] | None,
    count: int,
    seed: int,
    image_size: int = 448,
    difficulties: Sequence[int] | None = None,
    formats: Sequence[QuestionFormat] | None = None,
) -> Iterator[SampleRecord]:
    """The samples of `generate`, lazily, for writing large datasets in bounded memory.

    Arguments are checked before the first sample is drawn, so bad ones fail at the call.
    """
    _check_size(image_size)
    order = _canonical(types)
    levels, chosen_formats = _levels(difficulties), _formats(formats)
    quotas = dict(zip(order, split_evenly(count, len(order)), strict=True))
    choices = {t: _choices(t, levels, chosen_formats) for t in order}
    return _interleaved(quotas, seed, image_size, choices)


def generate(
    types: Sequence[CapabilityType] | None,
    count: int,
    seed: int,
    image_size: int = 448,
    difficulties: Sequence[int] | None = None,
    formats: Sequence[QuestionFormat] | None = None,
) -> list[SampleRecord]:
    """`count` samples spread evenly over the types (all 12 when None); deterministic per arguments.

    Types are taken in the taxonomy's canonical order whatever order the caller gives, and the
    first types get one more sample when `count` does not divide evenly.
    """
    return list(generate_stream(types, count, seed, image_size, difficulties, formats))


def generate_for_quota(
    quotas: Mapping[CapabilityType, int],
    seed: int,
    image_size: int = 448,
    difficulty: int | None = None,
    formats: Sequence[QuestionFormat] | None = None,
) -> Iterator[SampleRecord]:
    """Exactly `quotas[t]` samples of each type t, lazily; one difficulty level or all of them.

    Arguments are checked before the first sample is drawn, so a bad quota fails at the call.
    """
    _check_size(image_size)
    wanted = {CapabilityType(t): q for t, q in quotas.items()}
    bad = {t.value: q for t, q in wanted.items() if q < 0}
    if bad:
        raise ValueError(f"quotas must not be negative: {bad}")
    levels = _levels(None if difficulty is None else [difficulty])
    chosen_formats = _formats(formats)
    ordered = {t: wanted[t] for t in CapabilityType if wanted.get(t, 0) > 0}
    choices = {t: _choices(t, levels, chosen_formats) for t in ordered}
    return _interleaved(ordered, seed, image_size, choices)


def verify(record: SampleRecord) -> bool:
    """Whether the record's question and answer follow from its recorded parameters.

    The answer is recomputed by the template's solver from `provenance.params` alone; no drawing
    code runs. Records from other sources, unknown templates and malformed parameters fail.
    """
    provenance = record.provenance
    if provenance.get("generator") != GENERATOR or not isinstance(provenance.get("params"), dict):
        return False
    template = find_template(record.capability_type, str(provenance.get("template")))
    if template is None or record.difficulty not in template.levels:
        return False
    if record.question_format not in template.formats:
        return False
    params = provenance["params"]
    try:
        expected = template.solve(params)
        stem = template.question(params)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return False
    if record.question != compose_question(stem, record.question_format, record.options):
        return False
    if record.question_format is QuestionFormat.multiple_choice:
        return len(set(record.options)) == len(record.options) and record.answer_text == expected
    return record.answer == expected
