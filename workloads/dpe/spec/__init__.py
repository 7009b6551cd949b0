"""The EvolutionRun and Iteration resources: spec and status, as pydantic models.

These models are the single source of the schema. `dpe validate` checks user YAML with them, the
stages and executors read them, and `dpe crds` generates the CustomResourceDefinitions from them, so
a field's docstring here is what `kubectl explain` shows.

Field names are snake_case in Python and camelCase in YAML (the Kubernetes convention). Numbers and
booleans are strict: YAML `"200"` is not an integer, just as the API server would refuse it.
Secrets never appear inline: a field that would hold a key holds a reference to a Kubernetes Secret.
"""

from dpe.spec.base import (
    API_GROUP, API_VERSION, Bool, Count, Float, Fraction, GROUP_VERSION, Int, NonNegativeFloat, NonNegativeInt,
    PositiveFloat, Seed, SpecModel,
)
from dpe.spec.references import (
    ARTIFACT_REF_PATTERN, ArtifactRef, BUILTIN_SCHEME, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, DnsLabel,
    DnsSubdomain, ModelEndpoint, SECRET_KEY_PATTERN, SecretDataKey, SecretKeyRef, URL_PATTERN, Url,
)
from dpe.spec.execution import (
    Execution, LabelValue, QUANTITY_PATTERN, QualifiedName, Quantity, ResourceName, Resources, Toleration,
)
from dpe.spec.stages import (
    AgentRoles, Benchmark, DiagnoseSettings, EditTool, EvaluateSettings, GenerateSettings, MixtureSettings,
    PassRateWindow, RewardWeights, RolloutBackend, Sampling, ScoreSettings, SearchTool, StageName, Tools,
    TrainSettings,
)
from dpe.spec.policy import (
    Budget, DataSources, MAX_DISRUPTIONS_LIMIT, Plateau, RegressionGuard, RetryPolicy, StopCriteria,
)
from dpe.spec.storage import LocalStorage, S3CredentialsRef, S3Storage, Storage
from dpe.spec.status import (
    AttemptRecord, Condition, ConditionStatus, EvolutionRunStatus, IterationPhase, IterationStatus,
    IterationSummary, RunPhase, StageOutcome, StageRecord, StageSummary, Usage,
)
from dpe.spec.kinds import EvolutionRun, EvolutionRunSpec, Iteration, IterationSpec, ObjectMeta

__all__ = [
    "API_GROUP", "API_VERSION", "ARTIFACT_REF_PATTERN", "AgentRoles", "ArtifactRef", "AttemptRecord",
    "BUILTIN_SCHEME", "Benchmark", "Bool", "Budget", "Condition", "ConditionStatus", "Count", "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN", "DataSources", "DiagnoseSettings", "DnsLabel", "DnsSubdomain", "EditTool",
    "EvaluateSettings", "EvolutionRun", "EvolutionRunSpec", "EvolutionRunStatus", "Execution", "Float", "Fraction",
    "GROUP_VERSION", "GenerateSettings", "Int", "Iteration", "IterationPhase", "IterationSpec", "IterationStatus",
    "IterationSummary", "LabelValue", "LocalStorage", "MAX_DISRUPTIONS_LIMIT", "MixtureSettings", "ModelEndpoint",
    "NonNegativeFloat", "NonNegativeInt", "ObjectMeta", "PassRateWindow", "Plateau", "PositiveFloat",
    "QUANTITY_PATTERN", "QualifiedName", "Quantity", "RegressionGuard", "ResourceName", "Resources", "RetryPolicy",
    "RewardWeights", "RolloutBackend", "RunPhase", "S3CredentialsRef", "S3Storage", "SECRET_KEY_PATTERN", "Sampling",
    "ScoreSettings", "SearchTool", "Seed", "SecretDataKey", "SecretKeyRef", "SpecModel", "StageName", "StageOutcome",
    "StageRecord", "StageSummary", "StopCriteria", "Storage", "Toleration", "Tools", "TrainSettings", "URL_PATTERN",
    "Url", "Usage",
]
