"""Run-level policy: data sources, stop criteria, the regression guard and retries."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, Strict, model_validator

from dpe.spec.base import Bool, Count, Fraction, NonNegativeFloat, PositiveFloat, SpecModel
from dpe.spec.limits import (
    MAX_ATTEMPTS, MAX_BACKOFF_MULTIPLIER, MAX_DURATION_SECONDS, MAX_GPU_HOURS, MAX_ITERATIONS, MAX_USD,
)
from dpe.spec.references import ArtifactRef, DnsLabel

class DataSources(SpecModel):
    """Where the run's data comes from."""

    probe_set: ArtifactRef = "builtin:world"
    """Pool the fixed diagnosis probe is drawn from."""
    image_pool: ArtifactRef | None = None
    """Unlabeled images for the agents (indexed with `dpe pool index`)."""
    seed_pool: ArtifactRef | None = None
    """Seed questions and images that inspire generation; defaults to the probe pool."""
    world_image_size: Annotated[int, Strict(), Field(ge=28, le=2048)] = 448
    """Side in pixels of images drawn by the built-in capability world (builtin:world)."""
    world_difficulties: Annotated[list[Annotated[int, Strict(), Field(ge=1, le=3)]], Field(max_length=3)] | None = None
    """Difficulty levels (1-3) the built-in world draws probes, benchmarks and offline samples from; all by default."""
    world_formats: Annotated[list[Literal["multiple_choice", "numerical", "free_text"]], Field(min_length=1, max_length=3)] | None = None
    """Question formats the built-in world asks in (probes, benchmarks, offline samples); all by default. A tiny model
    learns typed answers (free text, numbers) from coarse cues but not option letters, so the quickstart leaves
    multiple choice out."""


class Plateau(SpecModel):
    """Stop when the score stops improving."""

    metric: DnsLabel = "overall"
    """overall (mean over the suite) or a benchmark name."""
    min_delta: Fraction = 0.005
    """Smallest gain that counts as improvement (scores are fractions)."""
    patience: Annotated[Count, Field(le=MAX_ITERATIONS)] = 2
    """Iterations without improvement before stopping."""


class Budget(SpecModel):
    """Spend limits of the whole run; at least one must be set."""

    gpu_hours: Annotated[PositiveFloat, Field(le=MAX_GPU_HOURS)] | None = None
    """GPU-hours over all stages."""
    agent_spend_usd: Annotated[PositiveFloat, Field(le=MAX_USD)] | None = None
    """Agent API spend in US dollars."""

    @model_validator(mode="after")
    def _something_set(self) -> Self:
        if self.gpu_hours is None and self.agent_spend_usd is None:
            raise ValueError("set gpuHours and/or agentSpendUsd, or leave budget out")
        return self


class StopCriteria(SpecModel):
    """When the spiral ends. The first criterion met wins."""

    max_iterations: Annotated[Count, Field(le=MAX_ITERATIONS)] = 3
    """Iterations to run at most."""
    target_score: Fraction | None = None
    """Stop once an evaluated model reaches this score."""
    plateau: Plateau | None = None
    """Stop when the score plateaus."""
    budget: Budget | None = None
    """Stop when a spend limit is reached."""
    deadline_seconds: Annotated[Count, Field(le=MAX_DURATION_SECONDS)] | None = None
    """Wall-clock limit of the whole run."""


class RegressionGuard(SpecModel):
    """Keep a worse model from seeding the next iteration."""

    enabled: Bool = False
    """When on, the next iteration starts from the best model so far if the new one regressed."""
    metric: DnsLabel = "overall"
    """overall or a benchmark name."""
    tolerance: Fraction = 0.0
    """Drops up to this much below the best score are not regressions."""


MAX_DISRUPTIONS_LIMIT = 255
"""Highest retry.maxDisruptions: a stage record lists its current attempt's disrupted pods."""


class RetryPolicy(SpecModel):
    """Retries of a failed stage attempt. Preemptions and evictions do not count."""

    max_attempts: Annotated[Count, Field(le=MAX_ATTEMPTS)] = 3
    """Attempts per stage, the first included."""
    backoff_seconds: Annotated[NonNegativeFloat, Field(le=MAX_DURATION_SECONDS)] = 30.0
    """Delay before the first retry."""
    backoff_multiplier: Annotated[float, Strict(), Field(ge=1.0, le=MAX_BACKOFF_MULTIPLIER)] = 2.0
    """Growth of the delay per retry."""
    max_backoff_seconds: Annotated[NonNegativeFloat, Field(le=MAX_DURATION_SECONDS)] = 900.0
    """Cap of the delay."""
    max_disruptions: Annotated[int, Strict(), Field(ge=0, le=MAX_DISRUPTIONS_LIMIT)] = 20
    """Pods lost to preemption or eviction tolerated per stage, over all its attempts, before it fails."""
