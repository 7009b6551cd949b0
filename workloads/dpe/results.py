"""What a finished stage leaves in its `result.json`: one model per stage, read by both executors and by later stages.

The stage context writes a result through its model, so a misspelt key fails the stage that wrote
it, not a reader three stages later; the executors read the part the spiral needs with
`summary()`; later stages read the fields they depend on (generate and score read the diagnosis's
quotas). Every key is declared and every number finite: a result that is not is refused on read,
and its attempt fails with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

from dpe.spec import StageName, StageSummary

Details = dict[str, Any]
"""A stage's account of itself for the report and for people (counts, histograms): read by no stage."""


class StageResult(BaseModel):
    """What every stage's result holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    stage: StageName
    iteration: NonNegativeInt
    model: str | None = None
    """The model the stage ran on."""
    gpu_hours: NonNegativeFloat = 0.0
    """GPU time the stage consumed."""
    agent_spend_usd: NonNegativeFloat = 0.0
    """Agent API spend of the stage."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Name -> where the stage wrote it, for people and for later stages."""

    def summary(self) -> StageSummary:
        """The part the spiral and the run's status need."""
        return StageSummary(gpu_hours=self.gpu_hours, agent_spend_usd=self.agent_spend_usd)


class DiagnoseResult(StageResult):
    probe_accuracy: float
    capability_accuracy: dict[str, float]
    """Probe accuracy per capability type."""
    mixture_weights: dict[str, float]
    """Generation weight per capability type."""
    quotas: dict[str, NonNegativeInt]
    """Samples to generate per capability type."""
    counts: Details = Field(default_factory=dict)
    weakness_table: list[Details] = Field(default_factory=list)

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"capability_accuracy": self.capability_accuracy, "mixture_weights": self.mixture_weights})


class GenerateResult(StageResult):
    accepted: NonNegativeInt | None = None
    accepted_by_type: dict[str, NonNegativeInt] = Field(default_factory=dict)
    shortfall: dict[str, NonNegativeInt] = Field(default_factory=dict)
    rejected: dict[str, NonNegativeInt] = Field(default_factory=dict)
    cancelled_spares: NonNegativeInt | None = None
    spent_usd: NonNegativeFloat | None = None
    cost_per_accepted_usd: NonNegativeFloat | None = None
    seeds_used: NonNegativeInt | None = None
    stopped: str | None = None
    seconds: NonNegativeFloat | None = None
    provider: str | None = None
    usage: Details | None = None
    cross_shard_duplicates: NonNegativeInt | None = None
    gap_filled: int | None = None
    shards: NonNegativeInt | None = None


class GenerateShardResult(GenerateResult):
    """One shard of generation (the merge writes the stage's own result)."""

    shard: str


class AnsweredShardResult(StageResult):
    """One shard of a stage that answers items (score, evaluate): how many it answered."""

    shard: str
    answered: NonNegativeInt | dict[str, NonNegativeInt]


class ScoreResult(StageResult):
    samples: NonNegativeInt | None = None
    in_window: NonNegativeInt | None = None
    kept: NonNegativeInt | None = None
    """Samples kept for training."""
    target_size: NonNegativeInt | None = None
    window: list[float] = Field(default_factory=list)
    selected: dict[str, NonNegativeInt] = Field(default_factory=dict)
    selected_by_type: Details = Field(default_factory=dict)
    shares: dict[str, float] = Field(default_factory=dict)
    pass_rates: Details = Field(default_factory=dict)
    no_readable_answer: NonNegativeInt | None = None


class TrainResult(StageResult):
    model_uri: str
    """Where the trained model M(k) was exported."""
    steps: NonNegativeInt
    skipped: str | None = None
    resumed_from: str | None = None
    samples: NonNegativeInt | None = None
    seconds: NonNegativeFloat | None = None
    reward_first: float | None = None
    reward_last: float | None = None
    reward_mean: float | None = None
    metrics: list[Details] = Field(default_factory=list)

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"model_uri": self.model_uri})


class EvaluateResult(StageResult):
    scores: dict[str, float]
    """`overall` and one score per benchmark."""
    benchmarks: dict[str, Details] = Field(default_factory=dict)

    def summary(self) -> StageSummary:
        return super().summary().model_copy(update={"scores": self.scores})


RESULT_MODELS: dict[StageName, type[StageResult]] = {
    StageName.diagnose: DiagnoseResult,
    StageName.generate: GenerateResult,
    StageName.score: ScoreResult,
    StageName.train: TrainResult,
    StageName.evaluate: EvaluateResult,
}
SHARD_MODELS: dict[StageName, type[StageResult]] = {
    StageName.generate: GenerateShardResult,
    StageName.score: AnsweredShardResult,
    StageName.evaluate: AnsweredShardResult,
}


def parse_result(body: Mapping[str, Any]) -> StageResult:
    """A `result.json` as its stage's model (a shard's as its shard model); raises pydantic's ValidationError."""
    stage = StageName(body.get("stage"))
    models = SHARD_MODELS if "shard" in body else RESULT_MODELS
    if stage not in models:
        raise ValueError(f"stage {stage.value} writes no shard results")
    return models[stage].model_validate(body)
