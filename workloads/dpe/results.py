"""What a finished stage leaves in its `result.json`: one model per stage, read by both executors and by later stages.

The stage context writes a result through its model (so a misspelt key fails the stage, not a
reader three stages later); the executors read the part the spiral needs with `summary()`; later
stages read the fields they depend on (generate and score read the diagnosis's quotas). Each
model names the fields that cross stages; the rest of a stage's account (counts, histograms,
artifacts) travels as extra fields for the report and for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from dpe.spec import StageName, StageSummary


class StageResult(BaseModel):
    """What every stage's result holds."""

    model_config = ConfigDict(extra="allow", frozen=True)

    stage: StageName
    iteration: int
    model: str | None = None
    """The model the stage ran on."""
    gpu_hours: NonNegativeFloat = 0.0
    """GPU time the stage consumed."""
    agent_spend_usd: NonNegativeFloat = 0.0
    """Agent API spend of the stage."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Name -> URI of what the stage wrote for people and for later stages."""

    def summary(self) -> StageSummary:
        """The part the spiral and the run's status need."""
        return StageSummary(gpu_hours=self.gpu_hours, agent_spend_usd=self.agent_spend_usd)


class ShardResult(StageResult):
    """One shard of a sharded stage; only the merge writes the stage's own result."""

    shard: str
    """`INDEX/COUNT`."""


class DiagnoseResult(StageResult):
    probe_accuracy: float
    capability_accuracy: dict[str, float]
    """Probe accuracy per capability type."""
    mixture_weights: dict[str, float]
    """Generation weight per capability type."""
    quotas: dict[str, int]
    """Samples to generate per capability type."""

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"capability_accuracy": self.capability_accuracy, "mixture_weights": self.mixture_weights})


class GenerateResult(StageResult):
    pass


class ScoreResult(StageResult):
    kept: int
    """Samples kept for training."""


class TrainResult(StageResult):
    model_uri: str
    """Where the trained model M(k) was exported."""
    steps: int

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"model_uri": self.model_uri})


class EvaluateResult(StageResult):
    scores: dict[str, float]
    """`overall` and one score per benchmark."""

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"scores": self.scores})


RESULT_MODELS: dict[StageName, type[StageResult]] = {
    StageName.diagnose: DiagnoseResult,
    StageName.generate: GenerateResult,
    StageName.score: ScoreResult,
    StageName.train: TrainResult,
    StageName.evaluate: EvaluateResult,
}


def parse_result(body: Mapping[str, Any]) -> StageResult:
    """A `result.json` as its stage's model (a shard's as `ShardResult`); raises pydantic's ValidationError."""
    if "shard" in body:
        return ShardResult.model_validate(body)
    stage = StageName(body.get("stage"))
    return RESULT_MODELS[stage].model_validate(body)
