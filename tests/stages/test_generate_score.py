"""Generation and scoring on CPU with the offline provider: exact quotas, resume, shards, budget, QC."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from dpe_testkit.runs import WEAK, GroundTruthAnswerer, context, write_run

from dpe.results import DiagnoseResult
from dpe.generation import EXACT, Failed, Produced, SampleTask, parse_task_id, report_at_risk, task_id
from dpe.models.inference import Prompt
from dpe.offline import WorldProvider
from dpe.records import read_records
from dpe.spec import Sampling, StageName
from dpe.taxonomy import CapabilityType
from dpe.stages import diagnose, generate, score
from dpe.stages.context import Shard

pytestmark = pytest.mark.slow


def diagnosed(tmp_path: Path, **spec: Any) -> Path:
    run_file = write_run(tmp_path, **spec)
    ctx = context(run_file, StageName.diagnose, 1)
    probe = diagnose.load_probe(ctx)
    diagnose.run(ctx, lambda: GroundTruthAnswerer(probe, WEAK))
    return run_file


def accepted_ids(run_file: Path) -> list[str]:
    ctx = context(run_file, StageName.generate, 1)
    return [r.id for r in read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records]


class Interrupting(WorldProvider):
    """Offline provider that dies (like a killed Job) after a number of samples."""

    def __init__(self, run: str, limit: int):
        super().__init__(run, 56)
        self.limit = limit
        self.calls = 0

    async def produce(self, task: SampleTask) -> Produced | Failed:
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt
        return await super().produce(task)


def test_offline_generation_meets_every_quota(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 120})
    ctx = context(run_file, StageName.generate, 1)
    result = generate.run(ctx)
    quotas = ctx.result_of(DiagnoseResult).quotas
    assert result["accepted"] == 120 and result["shortfall"] == {}
    assert result["accepted_by_type"] == {t: q for t, q in quotas.items() if q}
    records = read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records
    assert all(r.provenance["provider"] == "world" and r.provenance["task_id"] == r.id for r in records)


def test_killed_generation_resumes_to_exactly_the_target(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 100})
    ctx = context(run_file, StageName.generate, 1)
    with pytest.raises(KeyboardInterrupt):
        generate.run(ctx, lambda: (Interrupting(ctx.name, 37), 4, EXACT))
    stored = ctx.store.list(ctx.key("accepted") + "/")
    assert 0 < len(stored) <= 37 and not ctx.complete()
    before = {key.rsplit("/", 1)[-1].removesuffix(".parquet") for key in stored}
    generate.run(ctx, lambda: (WorldProvider(ctx.name, 56), 4, EXACT))
    ids = accepted_ids(run_file)
    assert len(ids) == 100 and len(set(ids)) == 100
    assert before <= set(ids)


def test_sharded_generation_merges_to_the_target(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 90, "shards": 3})
    for index in range(3):
        generate.run(context(run_file, StageName.generate, 1, Shard(index, 3)))
    result = generate.run(context(run_file, StageName.generate, 1), merge=True)
    ids = accepted_ids(run_file)
    assert result["accepted"] == 90 and len(set(ids)) == 90
    assert result["gap_filled"] == result["cross_shard_duplicates"]


class Costly(WorldProvider):
    """Offline provider that reports an agent cost per sample, to exercise the budget."""

    async def produce(self, task: SampleTask) -> Produced | Failed:
        produced = await super().produce(task)
        assert isinstance(produced, Produced)
        return Produced(produced.record, cost_usd=0.5)


def test_budget_stops_generation_cleanly(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 100, "budgetUsd": 10.0})
    ctx = context(run_file, StageName.generate, 1)
    result = generate.run(ctx, lambda: (Costly(ctx.name, 56), 4, EXACT))
    assert result["stopped"] == "budget"
    assert 20 <= result["accepted"] < 24 and result["spent_usd"] >= 10.0
    assert result["cost_per_accepted_usd"] == 0.5


class Sloppy(WorldProvider):
    """Every third sample repeats an earlier image or breaks the multiple-choice format."""

    def __init__(self, run: str):
        super().__init__(run, 56)
        self.first: Any = None
        self.count = 0

    async def produce(self, task: SampleTask) -> Produced | Failed:
        produced = await super().produce(task)
        assert isinstance(produced, Produced)
        self.count += 1
        if self.first is None:
            self.first = produced.record
        if self.count % 3 == 0:
            return Produced(produced.record.model_copy(update={"image": self.first.image}))
        if self.count % 5 == 0:
            return Failed("validator rejected the question", "validator", 0.01)
        return produced


def test_rejected_samples_are_replaced_and_counted(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 60})
    ctx = context(run_file, StageName.generate, 1)
    result = generate.run(ctx, lambda: (Sloppy(ctx.name), 1, EXACT))
    assert result["accepted"] == 60
    assert result["rejected"]["duplicate"] > 0 and result["rejected"]["validator"] > 0
    rejected = ctx.store.list(ctx.key("rejected") + "/")
    assert len(rejected) == sum(result["rejected"].values())


def test_samples_and_failures_are_written_off_the_event_loop(tmp_path: Path) -> None:
    """A store write (fsyncs locally, a request on S3) on the loop's thread would stop every other
    sample's replies from being read while it lasts."""
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 30})
    ctx = context(run_file, StageName.generate, 1)
    writers: dict[str, int] = {}
    put_bytes = ctx.store.put_bytes

    def recording(key: str, data: bytes) -> str:
        writers[key] = threading.get_ident()
        return put_bytes(key, data)

    ctx.store.put_bytes = recording  # type: ignore[method-assign]
    result = generate.run(ctx, lambda: (Sloppy(ctx.name), 1, EXACT))
    assert result["accepted"] == 30 and sum(result["rejected"].values()) > 0
    per_sample = {key: thread for key, thread in writers.items() if "/accepted/" in key or "/rejected/" in key}
    assert len(per_sample) == 30 + sum(result["rejected"].values())
    assert threading.get_ident() not in per_sample.values()


SPARE_SECONDS = 30.0


class SlowSpares(WorldProvider):
    """Tasks past each type's first round (spares) would take far longer than the others; a
    cancelled one reports what it had spent."""

    def __init__(self, run: str, quotas: dict[str, int]):
        super().__init__(run, 56)
        self.quotas = quotas

    async def produce(self, task: SampleTask) -> Produced | Failed:
        _, _, capability, number = parse_task_id(task.task_id)
        await asyncio.sleep(SPARE_SECONDS if number >= self.quotas[capability.value] else 0.01)
        return await super().produce(task)

    def cancelled_cost(self, task_id: str) -> float:
        return 0.25


def test_spares_are_cancelled_unfinished_once_their_quota_fills(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 20})
    ctx = context(run_file, StageName.generate, 1)
    quotas = ctx.result_of(DiagnoseResult).quotas
    started = time.monotonic()
    result = generate.run(ctx, lambda: (SlowSpares(ctx.name, quotas), 64, EXACT))
    assert time.monotonic() - started < SPARE_SECONDS / 2, "the stage did not wait for its spares"
    assert result["accepted"] == 20 and result["rejected"] == {}
    events = [ctx.store.get_json(key) for key in ctx.store.list(ctx.key("rejected") + "/")]
    assert result["cancelled_spares"] == len(events) >= sum(1 for q in quotas.values() if q)
    assert all(e["reason_kind"] == "cancelled" and e["cost_usd"] == 0.25 for e in events)
    assert result["spent_usd"] == 0.25 * len(events)


class AllAtOnce(WorldProvider):
    """Every task, spares included, finishes at the same moment."""

    async def produce(self, task: SampleTask) -> Produced | Failed:
        await asyncio.sleep(0.05)
        return await super().produce(task)


def test_samples_finishing_together_are_all_stored_and_only_spares_cancelled(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 20})
    ctx = context(run_file, StageName.generate, 1)
    result = generate.run(ctx, lambda: (AllAtOnce(ctx.name, 56), 64, EXACT))
    assert result["accepted"] == 20 and result["rejected"] == {}
    assert len(accepted_ids(run_file)) == 20, "a sample counted as accepted was cancelled before it was stored"
    stored = ctx.store.list(ctx.key("accepted") + "/")
    events = [ctx.store.get_json(key) for key in ctx.store.list(ctx.key("rejected") + "/")]
    assert len(stored) == 20 and result["cancelled_spares"] == len(events) > 0
    assert all(e["reason_kind"] == "cancelled" for e in events)


class FailingAtRisk(WorldProvider):
    """The first task of the largest type reports itself at risk once the first round has started,
    then waits briefly for another task to start before it fails; the others succeed later."""

    def __init__(self, run: str, first: str):
        super().__init__(run, 56)
        self.first = first
        self.started = 0
        self.spare_started_while_at_risk = False

    async def produce(self, task: SampleTask) -> Produced | Failed:
        self.started += 1
        if task.task_id == self.first:
            await asyncio.sleep(0.05)
            seen = self.started
            report_at_risk()
            deadline = time.monotonic() + 0.1
            while self.started == seen and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.spare_started_while_at_risk = self.started > seen
            return Failed("the validator rejected 3 questions", "validator")
        await asyncio.sleep(0.5)
        return await super().produce(task)


def test_a_task_at_risk_gets_a_spare_before_it_fails(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 20})
    ctx = context(run_file, StageName.generate, 1)
    quotas = ctx.result_of(DiagnoseResult).quotas
    largest = max(quotas, key=lambda name: quotas[name])
    provider = FailingAtRisk(ctx.name, task_id(1, 0, CapabilityType(largest), 0))

    result = generate.run(ctx, lambda: (provider, 64, EXACT))

    assert provider.spare_started_while_at_risk, "the spare started while the task at risk still ran"
    assert result["accepted"] == 20 and result["rejected"] == {"validator": 1}


class PassRates:
    """Test double for the scoring model: answers sample i correctly on a varying share of its n tries."""

    def __init__(self, records: Sequence[Any]):
        self.by_key = {(r.image, i): r for i, r in enumerate(records)}
        self.records = {r.image: (i, r) for i, r in enumerate(records)}

    def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
        replies = []
        for prompt in prompts:
            index, record = self.records[prompt.image]
            right = index % (n + 1)
            wrong = "Z" if record.options else record.answer + "9"
            replies.append([f"<think>.</think>\\boxed{{{record.answer if j < right else wrong}}}" for j in range(n)])
        return replies


def test_offline_generation_then_scoring_gives_a_training_parquet(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 120}, score={"targetSize": 48})
    generate.run(context(run_file, StageName.generate, 1))
    ctx = context(run_file, StageName.score, 1)
    records = read_records(ctx.store.get_bytes(ctx.stage_key(StageName.generate, "samples.parquet"))).records
    result = score.run(ctx, lambda: PassRates(records))
    assert result["kept"] == 48 and result["samples"] == 120
    training = read_records(ctx.store.get_bytes(ctx.key("train.parquet")))
    assert not training.rejected and len(training.records) == 48
    rates = [r.provenance["pass_rate"] for r in training.records if r.provenance["selected"] == "window"]
    assert rates and all(0.3 <= rate <= 0.8 for rate in rates)
    assert set(result["selected"]) <= {"window", "filled", "redistributed"}
    assert score.run(ctx, lambda: PassRates(records)) == result


class ShardBlind(WorldProvider):
    """Ignores the shard when drawing, so two shards produce the same samples (cross-shard copies)."""

    async def produce(self, task: SampleTask) -> Produced | Failed:
        from dpe.generation import parse_task_id
        from dpe.world import sample_at

        _, _, capability, number = parse_task_id(task.task_id)
        record = sample_at(capability, 5, number, image_size=56)
        return Produced(record.model_copy(update={"id": task.task_id, "provenance": {**record.provenance, "provider": "world", "task_id": task.task_id}}))


def test_merge_drops_cross_shard_copies_and_fills_the_gaps(tmp_path: Path) -> None:
    run_file = diagnosed(tmp_path, generate={"samplesPerIteration": 48, "shards": 2})
    for index in range(2):
        ctx = context(run_file, StageName.generate, 1, Shard(index, 2))
        generate.run(ctx, lambda: (ShardBlind(ctx.name, 56), 4, EXACT))
    ctx = context(run_file, StageName.generate, 1)
    result = generate.run(ctx, lambda: (ShardBlind(ctx.name, 56), 4, EXACT), merge=True)
    assert result["cross_shard_duplicates"] > 0
    assert result["gap_filled"] == result["cross_shard_duplicates"]
    assert result["accepted"] == 48 and result["shortfall"] == {}
    records = read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records
    assert len({(r.image, r.question) for r in records}) == 48


def _named_run(tmp_path: Path, name: str, **spec: Any) -> Path:
    import yaml

    run_file = diagnosed(tmp_path / name, **spec)
    document = yaml.safe_load(run_file.read_text())
    document["metadata"]["name"] = name
    run_file.write_text(yaml.safe_dump(document))
    ctx = context(run_file, StageName.diagnose, 1)
    diagnose.run(ctx, lambda: GroundTruthAnswerer(diagnose.load_probe(ctx), WEAK))
    return run_file


def _generated(run_file: Path) -> list[tuple[str, str, bytes]]:
    ctx = context(run_file, StageName.generate, 1)
    generate.run(ctx)
    records = read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records
    return sorted((r.question, r.answer, r.image) for r in records)


def test_a_generation_seed_pairs_two_runs_and_the_world_formats_hold_everywhere(tmp_path: Path) -> None:
    """Runs named differently draw the same samples under the same `generate.seed` (an ablation's
    arms), and other samples without it; probes and samples keep to `data.worldFormats`."""
    spec = {"data": {"worldImageSize": 56, "worldFormats": ["free_text", "numerical"]}, "generate": {"samplesPerIteration": 24, "seed": 5}}
    first, second = (_named_run(tmp_path, name, **spec) for name in ("arm-a", "arm-b"))
    unseeded = _named_run(tmp_path, "arm-c", data=spec["data"], generate={"samplesPerIteration": 24})
    samples = [_generated(run_file) for run_file in (first, second, unseeded)]
    assert samples[0] == samples[1] != samples[2]
    ctx = context(first, StageName.generate, 1)
    records = read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records + diagnose.load_probe(ctx)
    assert {r.question_format.value for r in records} <= {"free_text", "numerical"}
    assert not any(r.options for r in records)
