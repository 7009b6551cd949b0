"""The diagnose and evaluate stages on CPU: a real tiny model, and a ground-truth test double."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dpe_testkit.runs import WEAK, GroundTruthAnswerer, context, write_run
from PIL import Image

from dpe import sources
from dpe.models.inference import Prompt, TransformersAnswerer
from dpe.models.loading import resolve_model
from dpe.spec import Sampling, StageName
from dpe.stages import diagnose, evaluate
from dpe.stages.context import Shard
from dpe.taxonomy import CapabilityType

pytestmark = pytest.mark.slow

def test_mixture_concentrates_on_the_types_the_model_gets_wrong(tmp_path: Path) -> None:
    ctx = context(write_run(tmp_path), StageName.diagnose, 1)
    probe = diagnose.load_probe(ctx)
    answerer = GroundTruthAnswerer(probe, WEAK)
    result = diagnose.run(ctx, lambda: answerer)
    weights = result["mixture_weights"]
    assert sum(weights[t.value] for t in WEAK) >= 0.8
    for capability in CapabilityType:
        expected = 0.0 if capability in WEAK else 1.0
        assert result["capability_accuracy"][capability.value] == expected
    assert sum(result["quotas"].values()) == 1000
    assert ctx.store.exists(ctx.key("judged.parquet")) and ctx.store.exists(ctx.key("accuracy.png"))
    table = ctx.store.get_json(ctx.run_key("weakness_table.json"))
    assert "1" in {str(k) for k in table["iterations"]}
    brief = ctx.store.get_bytes(ctx.key("brief.txt")).decode()
    assert "HIGH PRIORITY" in brief and "chart_graph" in brief


def test_diagnose_resumes_without_answering_again(tmp_path: Path) -> None:
    run_file = write_run(tmp_path)
    ctx = context(run_file, StageName.diagnose, 1)
    probe = diagnose.load_probe(ctx)

    class Crashing(GroundTruthAnswerer):
        def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().answer(prompts, n, sampling, seed)

    with pytest.raises(KeyboardInterrupt):
        diagnose.run(ctx, lambda: Crashing(probe, WEAK))
    assert not ctx.complete()
    assert len(ctx.store.list(ctx.key("answers") + "/")) == 3
    again = GroundTruthAnswerer(probe, WEAK)
    first = diagnose.run(ctx, lambda: again)
    assert again.calls == len(range(0, len(probe), 32)) - 3
    third = GroundTruthAnswerer(probe, WEAK)
    assert diagnose.run(ctx, lambda: third) == first and third.calls == 0


def test_probe_set_is_identical_every_iteration(tmp_path: Path) -> None:
    run_file = write_run(tmp_path)
    one = [r.id for r in diagnose.load_probe(context(run_file, StageName.diagnose, 1))]
    two = [r.id for r in diagnose.load_probe(context(run_file, StageName.diagnose, 2))]
    assert one == two and len(one) == 200


def test_sharded_evaluation_merges_to_the_unsharded_score(tmp_path: Path) -> None:
    sharded = write_run(tmp_path / "a", evaluate={"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 90}], "shards": 3})
    whole = write_run(tmp_path / "b", evaluate={"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 90}]})
    records = evaluate.load_benchmark(context(whole, StageName.evaluate, 0), parse_run_benchmark(whole))
    answerer = GroundTruthAnswerer(records.records, WEAK)
    expected = evaluate.run(context(whole, StageName.evaluate, 0), lambda: answerer)
    for index in range(3):
        evaluate.run(context(sharded, StageName.evaluate, 0, Shard(index, 3)), lambda: answerer)
    merged = evaluate.run(context(sharded, StageName.evaluate, 0), lambda: answerer, merge=True)
    assert merged["scores"] == expected["scores"]
    known = {t.value for t in CapabilityType} - {t.value for t in WEAK}
    assert all(v == 1.0 for t, v in merged["benchmarks"]["world"]["by_capability_type"].items() if t in known)


def parse_run_benchmark(run_file: Path) -> Any:
    from dpe.manifest import load_run

    return load_run(run_file).spec.evaluate.benchmarks[0]


def test_merge_refuses_missing_shards(tmp_path: Path) -> None:
    run_file = write_run(tmp_path, evaluate={"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 20}], "shards": 2})
    ctx = context(run_file, StageName.evaluate, 0)
    answerer = GroundTruthAnswerer(evaluate.load_benchmark(ctx, parse_run_benchmark(run_file)).records, WEAK)
    evaluate.run(context(run_file, StageName.evaluate, 0, Shard(0, 2)), lambda: answerer)
    with pytest.raises(RuntimeError, match="shard 1/2 has not finished"):
        evaluate.run(ctx, lambda: answerer, merge=True)


def test_tiny_model_diagnosis_and_evaluation_on_cpu(tmp_path: Path) -> None:
    """The whole diagnosis and evaluation of the tiny model on CPU (how long it takes is the
    quickstart benchmark's business: `python -m benchmarks.local_executor`)."""
    run_file = write_run(tmp_path)
    diagnosis_ctx = context(run_file, StageName.diagnose, 1)
    model_dir = resolve_model("builtin:tiny-qwen2.5-vl", diagnosis_ctx.storage, diagnosis_ctx.store, tmp_path / "cache")
    result = diagnose.run(diagnosis_ctx, lambda: TransformersAnswerer(model_dir, min_image_side=56))
    assert result["counts"]["items"] == 200
    evaluation = evaluate.run(context(run_file, StageName.evaluate, 0), lambda: TransformersAnswerer(model_dir, min_image_side=56))
    assert evaluation["benchmarks"]["world"]["items"] == 300
    assert 0.0 <= evaluation["scores"]["overall"] <= 1.0


def _picture(size: tuple[int, int], shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 40, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_bad_benchmark_rows_are_set_aside_and_counted_in_every_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image over the pixel limit, a corrupt one and a deeply nested option column are set aside with
    their reasons; the rest is evaluated, and the merged result of a sharded run counts them too."""
    monkeypatch.setattr(sources, "MAX_IMAGE_PIXELS", 100 * 100)
    rows = [(f"How many dots? ({i})", str(i), _picture((40, 30), 10 * i), None) for i in range(4)]
    rows += [
        ("Too big", "1", _picture((200, 200), 1), None),
        ("Corrupt", "2", _picture((40, 30), 2)[:120], None),
        ("Nested", "A", _picture((40, 30), 3), "[" * 40_000 + "]" * 40_000),
    ]
    bench = tmp_path / "bench.parquet"
    pq.write_table(pa.table({
        "question": [r[0] for r in rows],
        "answer": [r[1] for r in rows],
        "image": [{"bytes": r[2], "path": None} for r in rows],
        "options": [r[3] for r in rows],
    }), bench)
    suite = {"benchmarks": [{"name": "mini", "uri": str(bench)}]}
    whole = write_run(tmp_path / "whole", evaluate=suite)
    sharded = write_run(tmp_path / "sharded", evaluate={**suite, "shards": 2})

    ctx = context(whole, StageName.evaluate, 0)
    items = evaluate.load_benchmark(ctx, parse_run_benchmark(whole))
    assert len(items.records) == 4 and items.rejected == 3
    reasons = [r["reason"] for r in ctx.store.get_json(ctx.run_key("benchmarks", "mini.rejected.json"))]
    assert "over the limit of 10000" in reasons[0] and "does not decode" in reasons[1] and "nest too deeply" in reasons[2]
    answerer = GroundTruthAnswerer(items.records, WEAK)
    result = evaluate.run(ctx, lambda: answerer)
    assert (result["benchmarks"]["mini"]["items"], result["benchmarks"]["mini"]["rejected_rows"]) == (4, 3)

    for index in range(2):
        evaluate.run(context(sharded, StageName.evaluate, 0, Shard(index, 2)), lambda: answerer)
    merged = evaluate.run(context(sharded, StageName.evaluate, 0), lambda: answerer, merge=True)
    assert (merged["benchmarks"]["mini"]["items"], merged["benchmarks"]["mini"]["rejected_rows"]) == (4, 3)
