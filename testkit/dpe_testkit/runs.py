"""Shared helpers for stage tests: a run file on a local store, and a ground-truth answer source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpe.grading import solver_prompt
from dpe.manifest import parse_run
from dpe.models.inference import Prompt
from dpe.spec import Sampling, StageName
from dpe.stages.context import Shard, StageContext, open_context
from dpe.taxonomy import CapabilityType

WEAK = {
    CapabilityType.chart_graph, CapabilityType.geometric, CapabilityType.text_dense, CapabilityType.diagram,
    CapabilityType.math_formula, CapabilityType.map, CapabilityType.medical, CapabilityType.mixed,
}


def write_run(tmp_path: Path, **spec: Any) -> Path:
    import yaml

    document = {
        "apiVersion": "dpe.dev/v1alpha1",
        "kind": "EvolutionRun",
        "metadata": {"name": "stage-test"},
        "spec": {
            "baseModel": "builtin:tiny-qwen2.5-vl",
            "data": {"worldImageSize": 56},
            "diagnose": {"sampling": {"maxTokens": 16}},
            "evaluate": {"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 300}], "sampling": {"temperature": 0.0, "maxTokens": 16}},
            "storage": {"local": {"path": str(tmp_path / "store")}},
            **spec,
        },
    }
    parse_run(document)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class GroundTruthAnswerer:
    """Test double for a model (no GPU-size model runs here): right on some types, wrong on the rest.

    It recognises each prompt by its text and image, looks up the record's gold answer, and answers it in the
    instructed format for the types it "knows", and with a wrong option otherwise.
    """

    def __init__(self, records: Sequence[Any], weak: set[CapabilityType]):
        self.by_prompt = {(solver_prompt(r.question, r.question_format), r.image): r for r in records}
        self.weak = weak
        self.calls = 0

    def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
        self.calls += 1
        replies = []
        for prompt in prompts:
            record = self.by_prompt[(prompt.text, prompt.image)]
            answer = record.answer
            if record.capability_type in self.weak:
                answer = "Z" if record.options else answer + "0"
            replies.append([f"<think>looked</think>\\boxed{{{answer}}}"] * n)
        return replies


def context(run_file: Path, stage: StageName, k: int, shard: Shard | None = None) -> StageContext:
    return open_context(run_file, k, stage, None, shard=shard)
