"""The EvolutionRun and Iteration resources: spec and status, as pydantic models.

These models are the single source of the schema. `dpe validate` checks user YAML with them, the
stages and executors read them, and `dpe crds` generates the CustomResourceDefinitions from them, so
a field's docstring here is what `kubectl explain` shows.

Field names are snake_case in Python and camelCase in YAML (the Kubernetes convention). Numbers and
booleans are strict: YAML `"200"` is not an integer, just as the API server would refuse it.
Secrets never appear inline: a field that would hold a key holds a reference to a Kubernetes Secret.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dpe.mixture import DEFAULT_MIN_COUNT, DEFAULT_PRIOR_STRENGTH, DEFAULT_RAW_WEIGHTS, DEFAULT_THRESHOLDS, MixturePolicy

API_GROUP = "dpe.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Count = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0.0)]

# Field names that would carry a credential if written inline. Spec models refuse them with a message
# that points to the reference field to use instead.
_INLINE_SECRET_KEYS = {
    "apikey": "apiKeySecret",
    "api_key": "apiKeySecret",
    "token": "apiKeySecret",
    "password": "a Secret reference",
    "secret": "a Secret reference",
    "secretkey": "credentialsSecret",
    "secret_key": "credentialsSecret",
    "accesskey": "credentialsSecret",
    "access_key": "credentialsSecret",
    "secretaccesskey": "credentialsSecret",
    "accesskeyid": "credentialsSecret",
    "aws_access_key_id": "credentialsSecret",
    "aws_secret_access_key": "credentialsSecret",
}


class SpecModel(BaseModel):
    """Base of every spec and status model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                hint = _INLINE_SECRET_KEYS.get(str(key).lower())
                if hint is not None:
                    raise ValueError(
                        f"field '{key}' would hold a secret inline; secrets are only given by "
                        f"reference ({hint}: {{name, key}} naming a Kubernetes Secret)"
                    )
        return data

    def to_yaml_dict(self) -> dict[str, Any]:
        """The model as plain data with camelCase keys, leaving out unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# References: artifacts, secrets, endpoints
# ---------------------------------------------------------------------------------------------

BUILTIN_SCHEME = "builtin:"
"""Models (and data sources) that DPE builds itself rather than reads: `builtin:tiny-qwen2.5-vl`."""
_BUILTIN = r"builtin:[a-z0-9][a-z0-9._-]*"
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
_FILE = r"file:///[^\s]*"
_PATH = r"(/|\./|\.\./)[^\s]*"
_HUB = r"(hf://)?[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
ARTIFACT_REF_PATTERN = f"^({_BUILTIN}|{_S3}|{_FILE}|{_PATH}|{_HUB})$"
_ARTIFACT_REF_RE = re.compile(ARTIFACT_REF_PATTERN)


def _check_artifact_ref(value: str) -> str:
    if not _ARTIFACT_REF_RE.match(value):
        raise ValueError(
            f"'{value}' is not a recognised location: use builtin:<name>, s3://bucket/key, "
            "file:///abs/path, an absolute or ./relative path, or a hub id such as org/name"
        )
    return value


ArtifactRef = Annotated[
    str,
    AfterValidator(_check_artifact_ref),
    WithJsonSchema({"type": "string", "pattern": ARTIFACT_REF_PATTERN}),
]
"""Where a model or dataset lives: builtin:<name>, s3://bucket/key, file:///path, a path, or a hub id."""

_URL_RE = re.compile(r"^https?://[^\s/?#@]+(:\d+)?(/[^\s?#]*)?$")
URL_PATTERN = r"^https?://[^\s/?#@]+(:\d+)?(/[^\s?#]*)?$"


def _check_url(value: str) -> str:
    if "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        raise ValueError("credentials must not be embedded in a URL; use a Secret reference")
    if "?" in value or "#" in value:
        raise ValueError("a URL with a query string is not accepted (keys belong in a Secret)")
    if not _URL_RE.match(value):
        raise ValueError(f"'{value}' is not an http(s) URL such as https://gateway.example/v1")
    return value


Url = Annotated[str, AfterValidator(_check_url), WithJsonSchema({"type": "string", "pattern": URL_PATTERN})]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
SecretDataKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]


class SecretKeyRef(SpecModel):
    """A key inside a Kubernetes Secret in the run's namespace (locally: an environment variable)."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: SecretDataKey
    """Key within the Secret's data."""


class ModelEndpoint(SpecModel):
    """An OpenAI-compatible chat endpoint and the model to call on it."""

    base_url: Url
    """Base URL of the API, for example https://gateway.example/v1."""
    model: Annotated[str, Field(min_length=1, max_length=200)]
    """Model name as the endpoint knows it."""
    api_key_secret: SecretKeyRef | None = None
    """Secret holding the API key; omit for endpoints that need none."""
    max_tokens: Count = 4096
    """Upper bound on tokens in one reply."""
    timeout_seconds: PositiveFloat = 300.0
    """Per-request timeout. Reasoning models can think for minutes; keep this generous."""
    max_concurrency: Count = 16
    """Requests in flight at once against this endpoint."""
    requests_per_minute: Count | None = None
    """Client-side request rate limit, matching the provider's quota."""
    tokens_per_minute: Count | None = None
    """Client-side token rate limit, matching the provider's quota."""
    temperature: NonNegativeFloat = 0.7
    """Sampling temperature for this role."""
    input_usd_per_million_tokens: NonNegativeFloat = 0.0
    """Price of prompt tokens, for cost accounting and budgets."""
    output_usd_per_million_tokens: NonNegativeFloat = 0.0
    """Price of completion tokens, for cost accounting and budgets."""


# ---------------------------------------------------------------------------------------------
# Execution: how a stage's Job is placed and bounded
# ---------------------------------------------------------------------------------------------

QUANTITY_PATTERN = r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i?|[mkMGTPE])?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("a resource quantity is a number or a string such as 16Gi")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a resource quantity cannot be negative")
        return value
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity (examples: 8, 500m, 64Gi)")
    return value


Quantity = Annotated[
    Int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]

ResourceName = Annotated[str, Field(pattern=r"^([a-z0-9.-]+/)?[a-z0-9A-Z._-]+$")]


class Resources(SpecModel):
    """Compute resources of the stage's container, as in a Pod spec (nvidia.com/gpu included)."""

    requests: dict[ResourceName, Quantity] = Field(default_factory=dict)
    """Minimum resources, for example {cpu: 8, memory: 64Gi}."""
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict)
    """Maximum resources, for example {nvidia.com/gpu: 8}."""


class Toleration(SpecModel):
    """A Pod toleration, so stages can run on tainted GPU nodes."""

    key: str | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches `value`."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: NonNegativeInt | None = None
    """For NoExecute: how long the Pod stays bound after the taint appears."""


class Execution(SpecModel):
    """Placement and limits of a stage's Kubernetes Job. Unset fields inherit from spec.execution."""

    image: Annotated[str, Field(min_length=1)] | None = None
    """Container image that runs `dpe stage ...`."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Kubernetes image pull policy."""
    resources: Resources | None = None
    """Container resources, GPUs included."""
    node_selector: dict[str, str] | None = None
    """Node labels the Pod must match."""
    tolerations: list[Toleration] | None = None
    """Taints the Pod tolerates."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass for the Pod."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue; when set, Jobs are created suspended for Kueue to admit."""
    service_account_name: DnsSubdomain | None = None
    """ServiceAccount the Pod runs as."""
    backoff_limit: NonNegativeInt | None = None
    """Pod retries inside one Job attempt before the Job fails."""
    active_deadline_seconds: Count | None = None
    """Wall-clock limit of one Job attempt."""

    def merged_over(self, base: Execution) -> Execution:
        """This stage's settings with every unset field taken from `base`."""
        merged = base.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Execution.model_validate(merged)


# ---------------------------------------------------------------------------------------------
# Stage settings (the paper's values are the defaults)
# ---------------------------------------------------------------------------------------------


class StageName(StrEnum):
    """The five stages of one iteration, in the order they run."""

    diagnose = "diagnose"
    generate = "generate"
    score = "score"
    train = "train"
    evaluate = "evaluate"


class Sampling(SpecModel):
    """Decoding settings for answering with the current model."""

    temperature: NonNegativeFloat = 0.7
    """Softmax temperature; 0 means greedy."""
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.9
    """Nucleus sampling mass."""
    top_k: Annotated[int, Strict(), Field(ge=-1)] = 40
    """Top-k cut; -1 disables it."""
    max_tokens: Count = 4096
    """Upper bound on generated tokens per answer."""


class MixtureSettings(SpecModel):
    """How per-type probe accuracy becomes generation weights and quotas."""

    policy: MixturePolicy = MixturePolicy.step
    """step: the paper's accuracy step function; smoothed: shrinks small-sample accuracies first."""
    min_count: NonNegativeInt = DEFAULT_MIN_COUNT
    """smoothed policy: types with fewer probe items than this are treated as unobserved."""
    prior_strength: NonNegativeFloat = DEFAULT_PRIOR_STRENGTH
    """smoothed policy: pseudo-count of the prior pulling each type towards the pooled accuracy."""
    exploration_share: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.05
    """Share of the quota given to types the probe never saw, instead of rounding crumbs."""
    thresholds: list[Fraction] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1, max_length=10)
    """Accuracy steps of the weight function, ascending (paper: 0.70, 0.75, 0.85, 0.90)."""
    raw_weights: list[NonNegativeFloat] = Field(default_factory=lambda: list(DEFAULT_RAW_WEIGHTS), min_length=2, max_length=11)
    """Raw weight below the first step, between steps, and from the last step (paper: 2.0, 1.5, 1.0, 0.8, 0.5)."""

    @model_validator(mode="after")
    def _steps_fit(self) -> Self:
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError(f"thresholds must be strictly ascending, got {self.thresholds}")
        if len(self.raw_weights) != len(self.thresholds) + 1:
            raise ValueError(f"rawWeights needs {len(self.thresholds) + 1} values for {len(self.thresholds)} thresholds")
        return self


class DiagnoseSettings(SpecModel):
    """Diagnosis: the current model answers a fixed probe set; failures are attributed."""

    probe_size: Count = 200
    """Probe items drawn from the probe set."""
    probe_seed: Int = 42
    """Seed of the probe draw. Fixed, so every iteration diagnoses the same items."""
    sampling: Sampling = Field(default_factory=Sampling)
    """Decoding settings of the answers."""
    min_image_side: Count = 224
    """Images with a shorter side are upscaled to this size before answering."""
    judge: ModelEndpoint | None = None
    """Vision-language judge for error typing and answers the rules cannot settle."""
    mixture: MixtureSettings = Field(default_factory=MixtureSettings)
    """Weights and quotas from the diagnosis."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""


class AgentRoles(SpecModel):
    """One endpoint per agent role; a role left out falls back to the planner's endpoint."""

    planner: ModelEndpoint
    """Reads the seed and the weakness brief, plans the new sample for its assigned type."""
    image_selector: ModelEndpoint | None = None
    """Rates candidate images for usability."""
    edit_planner: ModelEndpoint | None = None
    """Chooses images to edit and writes one precise edit instruction."""
    question_generator: ModelEndpoint | None = None
    """Observes the final image, then writes the question and its answer."""
    validator: ModelEndpoint | None = None
    """Checks that the question is answerable from the image and the answer is right."""


class SearchTool(SpecModel):
    """Image search for the agents."""

    provider: Literal["serper", "searxng", "pool"] = "pool"
    """serper: a Serper-compatible API; searxng: a SearXNG instance; pool: the indexed image pool."""
    base_url: Url | None = None
    """Endpoint of the serper or searxng provider."""
    api_key_secret: SecretKeyRef | None = None
    """Secret with the provider's API key."""
    results_per_query: Count = 3
    """Images kept per query after the quality gate."""

    @model_validator(mode="after")
    def _endpoint_for_remote(self) -> Self:
        if self.provider != "pool" and self.base_url is None:
            raise ValueError(f"provider '{self.provider}' needs baseUrl")
        return self


class EditTool(SpecModel):
    """Image editing for the agents."""

    provider: Literal["local", "openai"] = "local"
    """local: recorded deterministic operations; openai: an OpenAI-compatible images edit endpoint."""
    base_url: Url | None = None
    """Endpoint of the openai provider."""
    model: str | None = None
    """Image edit model on that endpoint."""
    api_key_secret: SecretKeyRef | None = None
    """Secret with the API key."""

    @model_validator(mode="after")
    def _endpoint_for_remote(self) -> Self:
        if self.provider == "openai" and (self.base_url is None or self.model is None):
            raise ValueError("provider 'openai' needs baseUrl and model")
        return self


class Tools(SpecModel):
    """Tools the agents may call."""

    search: SearchTool = Field(default_factory=SearchTool)
    """Image search."""
    edit: EditTool = Field(default_factory=EditTool)
    """Image editing."""


class GenerateSettings(SpecModel):
    """Generation: agents turn unlabeled images into questions aimed at the diagnosed weaknesses."""

    samples_per_iteration: Count = 1000
    """Accepted samples to produce per iteration, split into per-type quotas."""
    shards: Count = 1
    """Parallel generation Jobs; each takes a disjoint part of the quotas and seeds."""
    agents: AgentRoles | None = None
    """Agent endpoints. Without them the offline provider draws from the capability world."""
    tools: Tools = Field(default_factory=Tools)
    """Search and edit tools."""
    max_regenerations: NonNegativeInt = 3
    """Question rewrites allowed after a validator rejection."""
    budget_usd: PositiveFloat | None = None
    """Agent spend per iteration after which generation stops cleanly."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""


class PassRateWindow(SpecModel):
    """Pass rates kept for training; both ends inclusive."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.low < self.high", "message": "window low must be below high"}
            ]
        }
    )

    low: Fraction = 0.3
    """Lowest kept pass rate."""
    high: Fraction = 0.8
    """Highest kept pass rate."""

    @model_validator(mode="after")
    def _low_below_high(self) -> Self:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ScoreSettings(SpecModel):
    """Scoring: the current model answers every new sample n times; the pass rate filters."""

    samples_per_item: Count = 9
    """Answers per sample (n)."""
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, top_k=40, max_tokens=4096)
    )
    """Decoding settings of the scoring answers."""
    window: PassRateWindow = Field(default_factory=PassRateWindow)
    """Pass-rate window of the kept samples."""
    target_size: Count = 1024
    """Training-set size; short sets are filled from the nearest pass rates within each type."""
    shards: Count = 1
    """Parallel scoring Jobs, merged afterwards."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""


class RolloutBackend(StrEnum):
    """Where GRPO rollouts are generated."""

    transformers = "transformers"
    vllm_colocate = "vllm-colocate"
    vllm_server = "vllm-server"


class RewardWeights(SpecModel):
    """Weights of the reward terms."""

    accuracy: NonNegativeFloat = 0.9
    """Weight of the graded final answer."""
    format: NonNegativeFloat = 0.1
    """Weight of the requested output format."""


class TrainSettings(SpecModel):
    """Training: GRPO on the kept samples, starting from the current model."""

    num_generations: Annotated[int, Strict(), Field(ge=2)] = 8
    """Completions per prompt (the group size)."""
    learning_rate: PositiveFloat = 1e-6
    """AdamW learning rate (constant)."""
    weight_decay: NonNegativeFloat = 0.01
    """AdamW weight decay."""
    beta: NonNegativeFloat = 0.01
    """KL coefficient against the frozen reference model (low-variance k3 estimator)."""
    epsilon_low: PositiveFloat = 0.2
    """Lower clip range of the policy ratio."""
    epsilon_high: PositiveFloat = 0.3
    """Upper clip range of the policy ratio (clip-higher)."""
    max_grad_norm: PositiveFloat = 1.0
    """Gradient clipping norm."""
    max_steps: Count = 10
    """GRPO steps per iteration."""
    prompts_per_step: Count = 512
    """Prompts sampled per GRPO step (rollout batch)."""
    prompts_per_update: Count = 128
    """Prompts per optimiser update (global batch, before multiplying by the group size)."""
    max_completion_length: Count = 4096
    """Maximum tokens per completion."""
    temperature: PositiveFloat = 1.0
    """Rollout temperature."""
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.99
    """Rollout nucleus mass."""
    reward_weights: RewardWeights = Field(default_factory=RewardWeights)
    """Accuracy and format weights of the reward."""
    bf16: Bool = True
    """bfloat16 mixed precision."""
    gradient_checkpointing: Bool = True
    """Recompute activations to save memory."""
    freeze_vision_tower: Bool = False
    """Keep the vision encoder fixed."""
    checkpoint_every_steps: Count = 5
    """Steps between checkpoints written to the store (resume points)."""
    seed: Int = 0
    """Seed of GRPO's sampling and shuffling."""
    nodes: Count = 1
    """Nodes of the training Job (an Indexed Job when more than one)."""
    gpus_per_node: Count = 8
    """GPUs per node; torchrun starts one process per GPU."""
    deepspeed_stage: Literal[0, 2, 3] = 3
    """DeepSpeed ZeRO stage; 0 disables DeepSpeed."""
    rollout_backend: RolloutBackend = RolloutBackend.transformers
    """Rollout engine; the vLLM modes need vLLM in the image."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""


class Benchmark(SpecModel):
    """One benchmark of the evaluation suite."""

    name: DnsLabel
    """Short name used in scores and metrics."""
    uri: ArtifactRef
    """builtin:world, or a Parquet/TSV file or folder in the MMStar/MathVista layout."""
    limit: Count | None = None
    """Evaluate only the first N items (after a seeded shuffle)."""


class EvaluateSettings(SpecModel):
    """Evaluation of each new model on the benchmark suite, off the critical path."""

    benchmarks: list[Benchmark] = Field(
        default_factory=lambda: [Benchmark(name="world", uri="builtin:world")], min_length=1
    )
    """The suite; the run's score is the mean over it."""
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.0, top_p=1.0, top_k=-1, max_tokens=4096)
    )
    """Decoding settings; greedy by default."""
    judge: ModelEndpoint | None = None
    """Optional judge for answers the rules cannot settle."""
    shards: Count = 1
    """Parallel evaluation Jobs, merged afterwards."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, benchmarks: list[Benchmark]) -> list[Benchmark]:
        names = [b.name for b in benchmarks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"benchmark names must be unique; repeated: {', '.join(duplicated)}")
        return benchmarks


# ---------------------------------------------------------------------------------------------
# Run-level policy: data, stopping, retries, storage
# ---------------------------------------------------------------------------------------------


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
    world_difficulties: list[Annotated[int, Strict(), Field(ge=1, le=3)]] | None = None
    """Difficulty levels (1-3) the built-in world draws probes, benchmarks and offline samples from; all by default."""


class Plateau(SpecModel):
    """Stop when the score stops improving."""

    metric: Annotated[str, Field(min_length=1)] = "overall"
    """overall (mean over the suite) or a benchmark name."""
    min_delta: NonNegativeFloat = 0.005
    """Smallest gain that counts as improvement."""
    patience: Count = 2
    """Iterations without improvement before stopping."""


class Budget(SpecModel):
    """Spend limits of the whole run; at least one must be set."""

    gpu_hours: PositiveFloat | None = None
    """GPU-hours over all stages."""
    agent_spend_usd: PositiveFloat | None = None
    """Agent API spend in US dollars."""

    @model_validator(mode="after")
    def _something_set(self) -> Self:
        if self.gpu_hours is None and self.agent_spend_usd is None:
            raise ValueError("set gpuHours and/or agentSpendUsd, or leave budget out")
        return self


class StopCriteria(SpecModel):
    """When the spiral ends. The first criterion met wins."""

    max_iterations: Count = 3
    """Iterations to run at most."""
    target_score: Fraction | None = None
    """Stop once an evaluated model reaches this score."""
    plateau: Plateau | None = None
    """Stop when the score plateaus."""
    budget: Budget | None = None
    """Stop when a spend limit is reached."""
    deadline_seconds: Count | None = None
    """Wall-clock limit of the whole run."""


class RegressionGuard(SpecModel):
    """Keep a worse model from seeding the next iteration."""

    enabled: Bool = False
    """When on, the next iteration starts from the best model so far if the new one regressed."""
    metric: Annotated[str, Field(min_length=1)] = "overall"
    """overall or a benchmark name."""
    tolerance: NonNegativeFloat = 0.0
    """Drops up to this much below the best score are not regressions."""


MAX_DISRUPTIONS_LIMIT = 255
"""Highest retry.maxDisruptions: a stage record lists its current attempt's disrupted pods."""


class RetryPolicy(SpecModel):
    """Retries of a failed stage attempt. Preemptions and evictions do not count."""

    max_attempts: Count = 3
    """Attempts per stage, the first included."""
    backoff_seconds: NonNegativeFloat = 30.0
    """Delay before the first retry."""
    backoff_multiplier: Annotated[float, Strict(), Field(ge=1.0)] = 2.0
    """Growth of the delay per retry."""
    max_backoff_seconds: NonNegativeFloat = 900.0
    """Cap of the delay."""
    max_disruptions: Annotated[int, Strict(), Field(ge=0, le=MAX_DISRUPTIONS_LIMIT)] = 20
    """Pods lost to preemption or eviction tolerated per stage, over all its attempts, before it fails."""


class S3CredentialsRef(SpecModel):
    """Secret with the S3 access key pair."""

    name: DnsSubdomain
    """Name of the Secret."""
    access_key_key: SecretDataKey = "accessKey"
    """Key of the access key id in the Secret."""
    secret_key_key: SecretDataKey = "secretKey"
    """Key of the secret access key in the Secret."""


class S3Storage(SpecModel):
    """An S3-compatible bucket (MinIO in production)."""

    endpoint: Annotated[str, Field(pattern=r"^(https?://)?[A-Za-z0-9.-]+(:\d+)?$")]
    """host[:port] or http(s)://host[:port] of the S3 API."""
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")]
    """Bucket holding the run's artifacts."""
    region: str | None = None
    """Bucket region, when the server needs one."""
    secure: Bool = True
    """Use TLS (overridden by an explicit http:// or https:// endpoint)."""
    prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9._-]+/)*$")] = ""
    """Key prefix under which `runs/...` is laid out; empty or ending with '/'."""
    credentials_secret: S3CredentialsRef | None = None
    """Secret with the key pair; locally the DPE_S3_ACCESS_KEY and DPE_S3_SECRET_KEY variables."""


class LocalStorage(SpecModel):
    """A directory on the machine (the embedded default)."""

    path: Annotated[str, Field(min_length=1)] = "runs"
    """Directory holding `runs/...`; relative paths are taken from the working directory."""


class Storage(SpecModel):
    """Where artifacts go: exactly one of local or s3."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.local) != has(self.s3)",
                    "message": "set exactly one of local or s3",
                }
            ]
        }
    )

    local: LocalStorage | None = None
    """A local directory."""
    s3: S3Storage | None = None
    """An S3-compatible bucket."""
    delete_on_run_deletion: Bool = False
    """Remove the run's store prefix when the EvolutionRun is deleted."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.local is None) == (self.s3 is None):
            raise ValueError("set exactly one of local or s3")
        return self


def _default_storage() -> Storage:
    return Storage(local=LocalStorage())


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
                    f"{where} '{metric}' is neither 'overall' nor a benchmark name ({', '.join(sorted(known))})"
                )
        return self

    def stage_execution(self, stage: StageName) -> Execution:
        """The effective Job settings of one stage (its overrides over spec.execution)."""
        override: Execution | None = getattr(self, stage.value).execution
        return self.execution if override is None else override.merged_over(self.execution)


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------


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


class IterationSpec(SpecModel):
    """One turn of the spiral. Created by the operator, owned by its EvolutionRun."""

    run_name: DnsSubdomain
    """Name of the owning EvolutionRun."""
    index: NonNegativeInt
    """Iteration number; 0 is the baseline evaluation."""
    input_model_uri: Annotated[str, Field(min_length=1)]
    """The model this iteration starts from."""


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


# ---------------------------------------------------------------------------------------------
# Whole resources
# ---------------------------------------------------------------------------------------------


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
