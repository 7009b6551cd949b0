"""Per-stage settings of an iteration: diagnose, generate, score, train, evaluate (the paper's values are the defaults)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, Strict, field_validator, model_validator

from dpe.mixture import DEFAULT_MIN_COUNT, DEFAULT_PRIOR_STRENGTH, DEFAULT_RAW_WEIGHTS, DEFAULT_THRESHOLDS, MixturePolicy
from dpe.spec.base import Bool, Count, Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, Seed, SpecModel
from dpe.spec.execution import Execution
from dpe.spec.limits import (
    MAX_CLIP_EPSILON, MAX_GPUS_PER_NODE, MAX_GRAD_NORM, MAX_IMAGE_SIDE, MAX_INDEXED_COMPLETIONS, MAX_ITEMS, MAX_KL_BETA,
    MAX_LEARNING_RATE, MAX_LIST_ITEMS, MAX_NAME_LENGTH, MAX_PRIOR_STRENGTH, MAX_REGENERATIONS, MAX_RESULTS_PER_QUERY,
    MAX_SAMPLES_PER_ITEM, MAX_STEPS, MAX_TEMPERATURE, MAX_TOKENS, MAX_TOP_K, MAX_USD, MAX_WEIGHT,
)
from dpe.spec.references import ArtifactRef, DnsLabel, ModelEndpoint, SecretKeyRef, Url
from dpe.spec.text import PLAIN

Shards = Annotated[Count, Field(le=MAX_INDEXED_COMPLETIONS)]
"""Parallel Jobs of a stage, run as one Indexed Job."""
Temperature = Annotated[NonNegativeFloat, Field(le=MAX_TEMPERATURE)]
Tokens = Annotated[Count, Field(le=MAX_TOKENS)]
Items = Annotated[Count, Field(le=MAX_ITEMS)]
Weight = Annotated[NonNegativeFloat, Field(le=MAX_WEIGHT)]

class StageName(StrEnum):
    """The five stages of one iteration, in the order they run."""

    diagnose = "diagnose"
    generate = "generate"
    score = "score"
    train = "train"
    evaluate = "evaluate"


class Sampling(SpecModel):
    """Decoding settings for answering with the current model."""

    temperature: Temperature = 0.7
    """Softmax temperature; 0 means greedy."""
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.9
    """Nucleus sampling mass."""
    top_k: Annotated[int, Strict(), Field(ge=-1, le=MAX_TOP_K)] = 40
    """Top-k cut; -1 disables it."""
    max_tokens: Tokens = 4096
    """Upper bound on generated tokens per answer."""


class MixtureSettings(SpecModel):
    """How per-type probe accuracy becomes generation weights and quotas."""

    policy: MixturePolicy = MixturePolicy.step
    """step: the paper's accuracy step function; smoothed: shrinks small-sample accuracies first."""
    min_count: Annotated[NonNegativeInt, Field(le=MAX_ITEMS)] = DEFAULT_MIN_COUNT
    """smoothed policy: types with fewer probe items than this are treated as unobserved."""
    prior_strength: Annotated[NonNegativeFloat, Field(le=MAX_PRIOR_STRENGTH)] = DEFAULT_PRIOR_STRENGTH
    """smoothed policy: pseudo-count of the prior pulling each type towards the pooled accuracy."""
    exploration_share: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.05
    """Share of the quota given to types the probe never saw, instead of rounding crumbs."""
    thresholds: list[Fraction] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1, max_length=10)
    """Accuracy steps of the weight function, ascending (paper: 0.70, 0.75, 0.85, 0.90)."""
    raw_weights: list[Weight] = Field(default_factory=lambda: list(DEFAULT_RAW_WEIGHTS), min_length=2, max_length=11)
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

    probe_size: Items = 200
    """Probe items drawn from the probe set."""
    probe_seed: Seed = 42
    """Seed of the probe draw. Fixed, so every iteration diagnoses the same items."""
    sampling: Sampling = Field(default_factory=Sampling)
    """Decoding settings of the answers."""
    min_image_side: Annotated[Count, Field(le=MAX_IMAGE_SIDE)] = 224
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
    results_per_query: Annotated[Count, Field(le=MAX_RESULTS_PER_QUERY)] = 3
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
    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), PLAIN] | None = None
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

    samples_per_iteration: Items = 1000
    """Accepted samples to produce per iteration, split into per-type quotas."""
    shards: Shards = 1
    """Parallel generation Jobs; each takes a disjoint part of the quotas and seeds."""
    agents: AgentRoles | None = None
    """Agent endpoints. Without them the offline provider draws from the capability world."""
    tools: Tools = Field(default_factory=Tools)
    """Search and edit tools."""
    max_regenerations: Annotated[NonNegativeInt, Field(le=MAX_REGENERATIONS)] = 3
    """Question rewrites allowed after a validator rejection."""
    seed: Seed | None = None
    """Root of the generation's random streams (the seed pool's order, the offline provider's samples). Unset, it
    comes from the run's name, so two runs draw different samples; two runs given the same seed draw the same ones
    (an ablation's arms are paired this way)."""
    budget_usd: Annotated[PositiveFloat, Field(le=MAX_USD)] | None = None
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

    samples_per_item: Annotated[Count, Field(le=MAX_SAMPLES_PER_ITEM)] = 9
    """Answers per sample (n)."""
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, top_k=40, max_tokens=4096)
    )
    """Decoding settings of the scoring answers."""
    window: PassRateWindow = Field(default_factory=PassRateWindow)
    """Pass-rate window of the kept samples."""
    target_size: Items = 1024
    """Training-set size; short sets are filled from the nearest pass rates within each type."""
    shards: Shards = 1
    """Parallel scoring Jobs, merged afterwards."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""


class RolloutBackend(StrEnum):
    """Where GRPO rollouts are generated."""

    auto = "auto"
    """static-cache on GPUs, transformers on CPUs."""
    transformers = "transformers"
    """TRL's default: Hugging Face generate over the batch with every prompt repeated, uncompiled."""
    static_cache = "static-cache"
    """Each prompt prefilled once (vision encoder included), its completions decoded over a static KV
    cache, the decode step compiled (CUDA graphs) on GPUs."""
    vllm_colocate = "vllm-colocate"
    vllm_server = "vllm-server"


class RewardWeights(SpecModel):
    """Weights of the reward terms."""

    accuracy: Weight = 0.9
    """Weight of the graded final answer."""
    format: Weight = 0.1
    """Weight of the requested output format."""


class TrainSettings(SpecModel):
    """Training: GRPO on the kept samples, starting from the current model."""

    num_generations: Annotated[int, Strict(), Field(ge=2, le=MAX_SAMPLES_PER_ITEM)] = 8
    """Completions per prompt (the group size)."""
    learning_rate: Annotated[PositiveFloat, Field(le=MAX_LEARNING_RATE)] = 1e-6
    """AdamW learning rate (constant)."""
    weight_decay: Fraction = 0.01
    """AdamW weight decay."""
    beta: Annotated[NonNegativeFloat, Field(le=MAX_KL_BETA)] = 0.01
    """KL coefficient against the frozen reference model (low-variance k3 estimator)."""
    epsilon_low: Annotated[PositiveFloat, Field(le=1.0)] = 0.2
    """Lower clip range of the policy ratio (at most 1: the ratio is clipped at 1 - epsilonLow)."""
    epsilon_high: Annotated[PositiveFloat, Field(le=MAX_CLIP_EPSILON)] = 0.3
    """Upper clip range of the policy ratio (clip-higher)."""
    dual_clip: Annotated[PositiveFloat, Field(gt=1.0, le=MAX_CLIP_EPSILON)] = 3.0
    """Dual-clip ratio: with a negative advantage the policy ratio is capped here (TRL's delta); above 1 + epsilonHigh."""
    max_grad_norm: Annotated[PositiveFloat, Field(le=MAX_GRAD_NORM)] = 1.0
    """Gradient clipping norm."""
    max_steps: Annotated[Count, Field(le=MAX_STEPS)] = 10
    """GRPO steps per iteration."""
    prompts_per_step: Items = 512
    """Prompts sampled per GRPO step (rollout batch)."""
    prompts_per_update: Items = 128
    """Prompts per optimiser update (global batch, before multiplying by the group size)."""
    micro_batch_size: Items = 4
    """Most sequences per GPU in one forward and backward pass; gradients of several are accumulated into an update."""
    max_completion_length: Tokens = 4096
    """Maximum tokens per completion."""
    temperature: Annotated[PositiveFloat, Field(le=MAX_TEMPERATURE)] = 1.0
    """Rollout temperature."""
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.99
    """Rollout nucleus mass."""
    reward_weights: RewardWeights = Field(default_factory=RewardWeights)
    """Accuracy and format weights of the reward."""
    bf16: Bool = True
    """bfloat16 mixed precision."""
    gradient_checkpointing: Bool | None = None
    """Recompute activations to save memory; unset, only where the update's estimated memory would not fit the GPU without it."""
    group_by_length: Bool | None = None
    """Micro-batches of sequences of similar length within each update, every forward pass cut to its rows' real tokens (no padding work); unset, on GPUs."""
    freeze_vision_tower: Bool = False
    """Keep the vision encoder (with its patch merger) fixed: no gradients, not in the optimiser."""
    min_pixels: Annotated[Count, Field(le=MAX_IMAGE_SIDE**2)] = 512 * 512
    """Training images with fewer pixels are scaled up to this many (at most what the model's processor keeps; paper: 512^2)."""
    max_pixels: Annotated[Count, Field(le=MAX_IMAGE_SIDE**2)] = 2048 * 2048
    """Training images with more pixels are scaled down to this many, aspect ratio kept (paper: 2048^2)."""
    checkpoint_every_steps: Annotated[Count, Field(le=MAX_STEPS)] = 5
    """Steps between checkpoints written to the store (resume points)."""
    seed: Seed = 0
    """Seed of GRPO's sampling and shuffling."""
    nodes: Annotated[Count, Field(le=MAX_INDEXED_COMPLETIONS)] = 1
    """Nodes of the training Job (an Indexed Job when more than one)."""
    gpus_per_node: Annotated[Count, Field(le=MAX_GPUS_PER_NODE)] = 8
    """GPUs per node; torchrun starts one process per GPU."""
    deepspeed_stage: Literal[0, 2, 3] = 3
    """DeepSpeed ZeRO stage; 0 disables DeepSpeed."""
    rollout_backend: RolloutBackend = RolloutBackend.auto
    """Rollout engine; the vLLM modes need vLLM in the image."""
    execution: Execution | None = None
    """Overrides of spec.execution for this stage's Job."""

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Self:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"minPixels ({self.min_pixels}) must not exceed maxPixels ({self.max_pixels})")
        if self.dual_clip <= 1.0 + self.epsilon_high:
            raise ValueError(f"dualClip ({self.dual_clip}) must exceed 1 + epsilonHigh ({1.0 + self.epsilon_high})")
        return self


class Benchmark(SpecModel):
    """One benchmark of the evaluation suite."""

    name: DnsLabel
    """Short name used in scores and metrics."""
    uri: ArtifactRef
    """builtin:world, or a Parquet/TSV file or folder in a public benchmark's layout (HF or VLMEvalKit)."""
    limit: Items | None = None
    """Evaluate only the first N items (after a seeded shuffle)."""
    family: Literal["auto", "generic", "mmstar", "mathvista", "mmmu", "hallusionbench", "chartqa"] = "auto"
    """The public benchmark the files hold (column layout, official metric); auto: told from the columns."""


class EvaluateSettings(SpecModel):
    """Evaluation of each new model on the benchmark suite, off the critical path."""

    benchmarks: list[Benchmark] = Field(
        default_factory=lambda: [Benchmark(name="world", uri="builtin:world")], min_length=1, max_length=MAX_LIST_ITEMS
    )
    """The suite; the run's score is the mean over it."""
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.0, top_p=1.0, top_k=-1, max_tokens=4096)
    )
    """Decoding settings; greedy by default."""
    judge: ModelEndpoint | None = None
    """Optional judge for answers the rules cannot settle."""
    shards: Shards = 1
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
