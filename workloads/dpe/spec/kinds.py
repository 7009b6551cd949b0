"""The two custom resource kinds, EvolutionRun and Iteration, with their specs and metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dpe.spec.base import GROUP_VERSION, Bool, NonNegativeInt, SpecModel
from dpe.spec.execution import Execution
from dpe.spec.limits import MAX_TEXT_LENGTH
from dpe.spec.policy import DataSources, RegressionGuard, RetryPolicy, StopCriteria
from dpe.spec.references import DNS_LABEL_PATTERN, ArtifactRef, DnsLabel, DnsSubdomain, SecretKeyRef
from dpe.spec.stages import DiagnoseSettings, EvaluateSettings, GenerateSettings, ScoreSettings, StageName, TrainSettings
from dpe.spec.status import EvolutionRunStatus, IterationStatus
from dpe.spec.storage import LocalStorage, Storage
from dpe.spec.text import PLAIN, shown


def _default_storage() -> Storage:
    return Storage(local=LocalStorage())


def _secret_refs(node: object) -> Iterator[SecretKeyRef]:
    """Every SecretKeyRef inside a spec model."""
    if isinstance(node, SecretKeyRef):
        yield node
    elif isinstance(node, BaseModel):
        for field in type(node).model_fields:
            yield from _secret_refs(getattr(node, field))
    elif isinstance(node, list):
        for item in node:
            yield from _secret_refs(item)


class EvolutionRunSpec(SpecModel):
    """What to evolve, how each stage runs, and when to stop."""

    base_model: ArtifactRef
    """Starting model M0: builtin:tiny-qwen2.5-vl, s3://..., a local path or a hub id."""
    data: DataSources = Field(default_factory=DataSources)
    """Probe set, image pool and seed pool."""
    diagnose: DiagnoseSettings = Field(default_factory=DiagnoseSettings)
    """Diagnosis settings."""
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    """Generation settings."""
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    """Scoring and pass-rate filter settings."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    """GRPO training settings."""
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    """Evaluation settings."""
    execution: Execution = Field(default_factory=Execution)
    """Job settings shared by all stages; each stage may override them."""
    stop: StopCriteria = Field(default_factory=StopCriteria)
    """Stop criteria."""
    regression_guard: RegressionGuard = Field(default_factory=RegressionGuard)
    """What happens when a new model is worse than the best."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retry policy of failed stage attempts."""
    suspend: Bool = False
    """Pause the run: no new Jobs start; running ones are suspended."""
    storage: Storage = Field(default_factory=_default_storage)
    """Artifact store."""

    @model_validator(mode="after")
    def _metrics_exist(self) -> Self:
        known = {"overall", *(b.name for b in self.evaluate.benchmarks)}
        named = {"stop.plateau.metric": self.stop.plateau.metric if self.stop.plateau else None,
                 "regressionGuard.metric": self.regression_guard.metric}
        for where, metric in named.items():
            if metric is not None and metric not in known:
                raise ValueError(
                    f"{where} {shown(metric)} is neither 'overall' nor a benchmark name ({', '.join(sorted(known))})"
                )
        return self

    @model_validator(mode="after")
    def _secret_variables_distinct(self) -> Self:
        # Imported here because dpe.secrets imports dpe.spec.
        from dpe.secrets import SecretNameCollisionError, secret_env_map

        # Locally every referenced key is one environment variable, whichever stage reads it, so two
        # references that fold to one name would read one value.
        try:
            secret_env_map(_secret_refs(self))
        except SecretNameCollisionError as error:
            raise ValueError(str(error)) from None
        return self

    def stage_execution(self, stage: StageName) -> Execution:
        """The effective Job settings of one stage (its overrides over spec.execution)."""
        override: Execution | None = getattr(self, stage.value).execution
        return self.execution if override is None else override.merged_over(self.execution)


class IterationSpec(SpecModel):
    """One turn of the spiral. Created by the operator, owned by its EvolutionRun."""

    run_name: DnsSubdomain
    """Name of the owning EvolutionRun."""
    index: NonNegativeInt
    """Iteration number; 0 is the baseline evaluation."""
    input_model_uri: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH), PLAIN]
    """The model this iteration starts from."""


class ObjectMeta(SpecModel):
    """The parts of Kubernetes object metadata DPE reads."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
    """Name of the object; a DNS label, so derived Job and Service names stay valid."""
    namespace: DnsLabel = "default"
    """Namespace of the object."""


class EvolutionRun(SpecModel):
    """A DPE spiral: diagnose, generate, score, train and evaluate, iteration after iteration."""

    api_version: Literal["dpe.dev/v1alpha1"] = GROUP_VERSION
    """dpe.dev/v1alpha1."""
    kind: Literal["EvolutionRun"] = "EvolutionRun"
    """EvolutionRun."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: EvolutionRunSpec
    """Desired behaviour of the run."""
    status: EvolutionRunStatus | None = None
    """Observed state, written by the operator or the local executor."""


class Iteration(SpecModel):
    """One iteration of an EvolutionRun with its stage records."""

    api_version: Literal["dpe.dev/v1alpha1"] = GROUP_VERSION
    """dpe.dev/v1alpha1."""
    kind: Literal["Iteration"] = "Iteration"
    """Iteration."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: IterationSpec
    """Which run, which index, which input model."""
    status: IterationStatus | None = None
    """Observed state of the iteration."""
