"""Answering many records with the current model, resumably.

Diagnosis (1 answer per probe item), scoring (n answers per new sample) and evaluation (1 greedy
answer per benchmark item) all do the same thing: answer a fixed, ordered list of records in
chunks, storing each chunk's answers as soon as it is done. A rerun after a crash finds the stored
chunks and answers only the rest, and gets the same chunks for the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

from dpe.grading import solver_prompt
from dpe.models.inference import Answerer, Prompt
from dpe.progress import progress
from dpe.records import SampleRecord
from dpe.spec import Sampling
from dpe.stages.context import StageContext

CHUNK = 32
"""Records answered per stored chunk (the resume granularity)."""


def answer_records(
    ctx: StageContext,
    records: Sequence[SampleRecord],
    answerer: Answerer,
    sampling: Sampling,
    *,
    n: int,
    folder: str,
    seed: int,
    what: str,
) -> dict[str, list[str]]:
    """`n` answers per record, keyed by record id, stored under `folder/chunk-NNNNN.json`."""
    answers: dict[str, list[str]] = {}
    chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
    with progress(len(records), what) as advance:
        for number, chunk in enumerate(chunks):
            key = ctx.key(folder, f"chunk-{number:05d}.json")
            if ctx.store.exists(key):
                stored = ctx.store.get_json(key)
                if set(stored) != {r.id for r in chunk}:
                    raise RuntimeError(f"{key} holds answers for other records: the record order changed")
            else:
                prompts = [Prompt(r.image, solver_prompt(r.question, r.question_format)) for r in chunk]
                replies = answerer.answer(prompts, n, sampling, seed=seed + number)
                stored = {r.id: list(reply) for r, reply in zip(chunk, replies, strict=True)}
                ctx.store.put_json(key, stored)
            answers.update(stored)
            advance(len(chunk))
    return answers


def merged_answers(ctx: StageContext, shards: int, folder: str) -> dict[str, list[str]]:
    """The answers every finished shard of this stage stored under `folder`."""
    from dpe import layout

    answers: dict[str, list[str]] = {}
    for index in range(shards):
        result_key = layout.shard_result_key(ctx.namespace, ctx.name, ctx.iteration, ctx.stage, index, shards)
        if not ctx.store.exists(result_key):
            raise RuntimeError(f"shard {index}/{shards} has not finished (no {result_key})")
        prefix = layout.shard_key(ctx.namespace, ctx.name, ctx.iteration, ctx.stage, index, shards, folder) + "/"
        for key in ctx.store.list(prefix):
            answers.update(ctx.store.get_json(key))
    return answers
