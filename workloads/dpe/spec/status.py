"""Observed state of runs and iterations: phases, conditions, stage records, usage."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from dpe.spec.base import Bool, Count, NonNegativeFloat, NonNegativeInt, SpecModel
from dpe.spec.policy import MAX_DISRUPTIONS_LIMIT
from dpe.spec.stages import StageName

class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(SpecModel):
    """A condition in the Kubernetes API conventions."""

    type: Annotated[str, Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")]
    """Condition type, for example Ready, Progressing, Complete, Failed, DiagnoseSucceeded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    """CamelCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: str
    """RFC 3339 time of the last status change."""
    observed_generation: NonNegativeInt | None = None
    """metadata.generation the condition was set for."""


class RunPhase(StrEnum):
    pending = "Pending"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class IterationPhase(StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"


class StageOutcome(StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"


class AttemptRecord(SpecModel):
    """One finished attempt (Job) of a stage; the history survives the Jobs' clean-up."""

    attempt: Count
    """1 for the first Job of the stage."""
    job_name: str
    """The Job of this attempt."""
    state: Literal["Succeeded", "Failed", "Disrupted", "Cancelled"]
    """How the attempt ended."""
    finished_at: float | None = None
    """When it ended, seconds since the epoch."""
    message: str = ""
    """Why it failed, when it did."""
    permanent: Bool = False
    """The failure cannot be fixed by retrying."""
    disruptions: NonNegativeInt = 0
    """Pods of this attempt preempted or evicted, which its Job replaced."""


class StageSummary(SpecModel):
    """The part of a finished stage's result.json the spiral and status need."""

    model_uri: str | None = None
    """train: where M(k) was exported."""
    scores: dict[str, float] = Field(default_factory=dict)
    """evaluate: overall and per-benchmark scores."""
    gpu_hours: NonNegativeFloat = 0.0
    """GPU time the stage used."""
    agent_spend_usd: NonNegativeFloat = 0.0
    """Agent spend of the stage."""
    capability_accuracy: dict[str, float] = Field(default_factory=dict)
    """diagnose: probe accuracy per capability type."""
    mixture_weights: dict[str, float] = Field(default_factory=dict)
    """diagnose: generation weight per capability type."""


class StageRecord(SpecModel):
    """What happened to one stage of an iteration."""

    name: StageName
    """The stage."""
    job_name: str | None = None
    """The Job of the current or last attempt."""
    attempts: NonNegativeInt = 0
    """Attempts started that count against the retry policy."""
    disruptions: NonNegativeInt = 0
    """Pods lost to preemption or eviction over all attempts (not counted as failures)."""
    disrupted_pods: Annotated[list[str], Field(max_length=MAX_DISRUPTIONS_LIMIT + 1)] = Field(default_factory=list)
    """Pods of the running attempt seen preempted or evicted so far."""
    waiting_for: str | None = None
    """The Secret or ConfigMap the running attempt's pods wait for, e.g. `Secret dpe-minio`."""
    start_time: str | None = None
    """When the first attempt started (RFC 3339)."""
    end_time: str | None = None
    """When the stage finished (RFC 3339)."""
    outcome: StageOutcome = StageOutcome.pending
    """Pending, Running, Succeeded or Failed."""
    message: str = ""
    """Last failure or progress message."""
    history: list[AttemptRecord] = Field(default_factory=list)
    """Every finished attempt, oldest first."""
    summary: StageSummary | None = None
    """The stage's result, once it succeeded."""


class IterationSummary(SpecModel):
    """One iteration as the run's status shows it."""

    index: NonNegativeInt
    """Iteration number; 0 is the baseline evaluation of the base model."""
    phase: IterationPhase
    """Phase of the iteration."""
    input_model_uri: str | None = None
    """The model M(k-1) it started from."""
    output_model_uri: str | None = None
    """The trained model M(k)."""
    score: float | None = None
    """Evaluation score of M(k) (for index 0: of M0)."""
    probe_accuracy: float | None = None
    """Overall accuracy of M(k-1) on the probe set."""


class Usage(SpecModel):
    """Resources spent so far."""

    gpu_hours: NonNegativeFloat = 0.0
    """GPU-hours over all stages."""
    agent_spend_usd: NonNegativeFloat = 0.0
    """Agent API spend."""


class EvolutionRunStatus(SpecModel):
    """Observed state of the run."""

    phase: RunPhase = RunPhase.pending
    """Pending, Running, Suspended, Succeeded or Failed."""
    observed_generation: NonNegativeInt | None = None
    """metadata.generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing, Suspended, Complete, Failed."""
    current_iteration: NonNegativeInt = 0
    """Highest iteration started."""
    iterations: list[IterationSummary] = Field(default_factory=list)
    """Summary of every iteration."""
    baseline_score: float | None = None
    """Score of the base model M0."""
    best_iteration: NonNegativeInt | None = None
    """Iteration whose model scored best."""
    best_score: float | None = None
    """Best evaluation score so far."""
    best_model_uri: str | None = None
    """Where the best model is."""
    capability_accuracy: dict[str, float] = Field(default_factory=dict)
    """Per capability type: probe accuracy at the latest diagnosis."""
    mixture_weights: dict[str, float] = Field(default_factory=dict)
    """Per capability type: generation weight at the latest diagnosis."""
    usage: Usage = Field(default_factory=Usage)
    """Spend so far."""
    stop_reason: str | None = None
    """Why the run ended."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Why the run is in its phase, in words: for a failed run, the failing stage and its own error."""
    start_time: str | None = None
    """When the run started (RFC 3339)."""
    completion_time: str | None = None
    """When the run ended (RFC 3339)."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Store URIs of the run's main artifacts."""
class IterationStatus(SpecModel):
    """Observed state of one iteration."""

    phase: IterationPhase = IterationPhase.pending
    """Pending, Running, Succeeded or Failed."""
    observed_generation: NonNegativeInt | None = None
    """metadata.generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing, Complete, Failed and one per stage."""
    stages: list[StageRecord] = Field(default_factory=list)
    """One record per stage."""
    capability_accuracy: dict[str, float] = Field(default_factory=dict)
    """Probe accuracy per capability type."""
    mixture_weights: dict[str, float] = Field(default_factory=dict)
    """Generation weight per capability type."""
    quotas: dict[str, NonNegativeInt] = Field(default_factory=dict)
    """Samples to generate per capability type."""
    score: float | None = None
    """Evaluation score of this iteration's output model."""
    output_model_uri: str | None = None
    """The trained model M(k)."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Store URIs of the stage outputs."""
