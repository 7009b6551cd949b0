"""The train stage's settings as a GRPOConfig (TRL 1.16), and the parts of the policy it freezes.

Mapping of the paper's settings (EasyR1) onto GRPOConfig:

- group size `num_generations`; AdamW `learning_rate` (constant schedule) and `weight_decay`;
  `max_grad_norm`; rollout `temperature` and `top_p`; `max_completion_length`; `bf16`;
  `gradient_checkpointing`; `reward_weights` (accuracy 0.9, format 0.1);
- `beta`: KL to the frozen reference (TRL's estimator is the low-variance k3 one, EasyR1's
  `low_var_kl`);
- `epsilon`/`epsilon_high`: the clip range 0.2/0.3 (clip-higher);
- `delta`: the dual-clip ratio 3.0. TRL caps the ratio at `delta` before taking the clipped
  minimum; with `delta` above 1 + `epsilon_high` that changes nothing where the advantage is
  positive and caps the loss at `delta` x |advantage| where it is negative, which is PPO's dual
  clip as verl/EasyR1 compute it (`clip_ratio_dual`);
- `loss_type="dapo"`: token-mean over the accumulated update batch, EasyR1's `token-mean`;
  `num_iterations=1`: one pass over each rollout (EasyR1's `ppo_epochs` 1).

Speed on GPUs. Rollouts take the static-cache path (`dpe.stages.rollout`) unless the spec names
another backend; update batches skip padding work (`dpe.stages.update_batches`) unless
`group_by_length` is false; the optimiser is PyTorch's fused AdamW (one kernel for all parameters instead of a
loop over them); DeepSpeed ZeRO runs only with several processes (with one there is nothing to
shard, only its overhead); and with `gradient_checkpointing` unset, activations are recomputed only
when `needs_gradient_checkpointing` estimates that the update would not fit the card without it.

Batches. One GRPO step of the paper samples `prompts_per_step` prompts (512), generates
`num_generations` (8) completions each, and makes `prompts_per_step / prompts_per_update` (4)
optimiser updates of `prompts_per_update` x `num_generations` (1024) sequences each. Each training
process takes an equal share of an update (1024 / world size) and splits it into micro-batches of at
most `micro_batch_size` sequences, the largest size that divides the share evenly; their gradients
are accumulated (`gradient_accumulation_steps`). TRL generates once every `steps_per_generation`
micro-batches, so that is accumulation x updates per step, and TRL's `max_steps` counts optimiser
updates, so it is `max_steps` x updates per step. At paper settings on 8 GPUs: micro-batches of 4,
32 accumulated per update, 128 micro-batches per rollout; on one GPU: 256 accumulated, 1024 per
rollout. A rollout spanning several updates is off-policy after the first, so TRL keeps the
rollout's log-probabilities for the ratio, as EasyR1 does.

Prompt order. The trainer draws each step's prompts from a seeded random permutation of the whole
training set (TRL's RepeatSampler, seed `seed`), a new permutation each pass over the set, in chunks
of `prompts_per_step`; a last chunk shorter than that is dropped (the paper's `drop_last`), so the
order in which the score stage wrote the set does not matter, and which samples are in it is
`dpe.training_selection`'s choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpe.spec import RolloutBackend, TrainSettings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

VISION_TOWER_PATHS = ("model.visual", "visual", "model.vision_tower", "vision_tower", "model.vision_model", "vision_model")
"""Where vision-language models keep their vision encoder (Qwen-VL: `model.visual`, which holds the
patch merger too, as in EasyR1's `freeze_vision_tower`)."""


@dataclass(frozen=True)
class Batching:
    """How one GRPO step's sequences are cut into micro-batches and optimiser updates."""

    world_size: int
    """Training processes (one per GPU)."""
    micro_batch: int
    """Sequences per process in one forward and backward pass (TRL's `per_device_train_batch_size`)."""
    accumulation: int
    """Micro-batches accumulated into one optimiser update (`gradient_accumulation_steps`)."""
    updates_per_step: int
    """Optimiser updates made from one rollout (one GRPO step of the paper)."""

    @property
    def steps_per_generation(self) -> int:
        """Micro-batches per process between two rollouts (TRL's `steps_per_generation`)."""
        return self.accumulation * self.updates_per_step

    @property
    def sequences_per_update(self) -> int:
        """Sequences in one optimiser update, over all processes."""
        return self.micro_batch * self.world_size * self.accumulation

    @property
    def sequences_per_step(self) -> int:
        """Sequences generated per rollout, over all processes (TRL's `generation_batch_size`)."""
        return self.sequences_per_update * self.updates_per_step


def batching(settings: TrainSettings, world_size: int) -> Batching:
    """The micro-batches and updates of `settings` on `world_size` processes.

    Raises ValueError when an update's sequences do not split evenly over the processes: each
    would otherwise train on a different share, or the update would not be the one the spec asks for.
    """
    world = max(world_size, 1)
    per_update = settings.prompts_per_update * settings.num_generations
    if per_update % world:
        raise ValueError(
            f"promptsPerUpdate x numGenerations ({settings.prompts_per_update} x {settings.num_generations} = {per_update}) "
            f"does not split evenly over {world} training processes (nodes x gpusPerNode)"
        )
    share = per_update // world
    micro = min(settings.micro_batch_size, share)
    while share % micro:
        micro -= 1
    updates = max(settings.prompts_per_step // settings.prompts_per_update, 1)
    return Batching(world_size=world, micro_batch=micro, accumulation=share // micro, updates_per_step=updates)


def rollout_backend(settings: TrainSettings, *, cpu: bool) -> RolloutBackend:
    """The backend the settings' rollouts run on here (`auto`: static-cache on GPUs, transformers on CPUs)."""
    if settings.rollout_backend is RolloutBackend.auto:
        return RolloutBackend.transformers if cpu else RolloutBackend.static_cache
    return settings.rollout_backend


def group_by_length(settings: TrainSettings, *, cpu: bool) -> bool:
    """Whether update batches skip padding work here (unset: on GPUs)."""
    return (not cpu) if settings.group_by_length is None else settings.group_by_length


CHECKPOINTING_HEADROOM = 0.85
"""Share of the card's memory the update and the rollout's cache may plan to fill; the rest is for
the allocator's fragmentation, the CUDA graphs' pool and the CUDA context."""
ROLLOUT_CACHE_SHARE = 0.2
"""Share of the card's memory a static-cache rollout's KV cache may hold (it stays allocated through
the update, so the compiled decode step keeps its buffers); larger rollouts go in chunks."""
PROMPT_TEXT_TOKENS = 512
"""Tokens a training prompt's text takes at most beside its picture (chat template and solver instruction)."""
PATCHES_PER_PICTURE_TOKEN = 4
"""Vision-encoder patches behind one picture token (Qwen-VL merges 2 x 2)."""
ZERO_STATE_BYTES = 14
"""Bytes per trainable parameter DeepSpeed keeps besides the bf16 weights: bf16 gradients and fp32
master weights and AdamW moments."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate reads of the policy model."""

    parameters: int
    trainable: int
    parameter_bytes: int
    """Bytes per parameter as loaded (2 for bf16)."""
    layers: int
    hidden: int
    intermediate: int
    vision_layers: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of a loaded model (its parameters counted whole under ZeRO-3)."""
        text = model.config.get_text_config()
        vision = getattr(model.config, "vision_config", None)
        parameters = trainable = 0
        element = 2
        for parameter in model.parameters():
            count = int(getattr(parameter, "ds_numel", parameter.numel()))
            parameters += count
            trainable += count if parameter.requires_grad else 0
            element = parameter.element_size()
        depth = getattr(vision, "depth", None) or getattr(vision, "num_hidden_layers", 0) or 0
        return cls(parameters, trainable, element, text.num_hidden_layers, text.hidden_size, text.intermediate_size,
                   depth, getattr(vision, "hidden_size", 0) or 0, getattr(vision, "intermediate_size", 0) or 0)


def _activations(tokens: int, layers: int, hidden: int, intermediate: int, checkpointing: bool) -> int:
    """Activation bytes of `tokens` through `layers` blocks (see `update_memory_bytes`)."""
    full_layer = tokens * (16 * hidden + 8 * intermediate)
    return tokens * 2 * hidden * layers + full_layer if checkpointing else full_layer * layers


def update_memory_bytes(shape: ModelShape, *, micro_batch: int, sequence_tokens: int, picture_tokens: int, reference_model: bool, zero_stage: int,
                        world_size: int, checkpointing: bool) -> int:
    """Bytes one training process holds at the peak of an update (an estimate).

    Model states: the weights, the reference model's for the KL term, and for the trainable
    parameters gradients and AdamW's two moments in the weights' type, or under DeepSpeed
    `ZERO_STATE_BYTES`; ZeRO-3 shards all of them over the processes, ZeRO-2 the gradients and
    optimiser states. Activations, after Korthikanti et al. (2022) with attention scores not kept
    (SDPA): per token (or picture patch) and layer, 16 x hidden + 8 x intermediate bytes for a block
    in bf16, for the language model and the vision encoder; with checkpointing, each layer's input
    (2 x hidden) and one layer in full. No (tokens x vocabulary) logits: TRL scores tokens through a
    fused LM head, in tiles.
    """
    world = max(world_size, 1)
    weights = shape.parameters * shape.parameter_bytes
    reference = weights if reference_model else 0
    deepspeed = zero_stage > 0 and world > 1
    trained = shape.trainable * (ZERO_STATE_BYTES if deepspeed else 3 * shape.parameter_bytes)
    if deepspeed and zero_stage == 3:
        states = (weights + trained + reference) // world
    elif deepspeed:
        states = weights + reference + trained // world
    else:
        states = weights + trained + reference
    text = _activations(micro_batch * sequence_tokens, shape.layers, shape.hidden, shape.intermediate, checkpointing)
    patches = micro_batch * picture_tokens * PATCHES_PER_PICTURE_TOKEN
    vision = _activations(patches, shape.vision_layers, shape.vision_hidden, shape.vision_intermediate, checkpointing) if shape.vision_layers else 0
    return states + text + vision


def sequence_tokens(settings: TrainSettings, picture_tokens: int) -> int:
    """The longest training sequence: the largest picture's tokens, the prompt's text and a whole completion."""
    return picture_tokens + PROMPT_TEXT_TOKENS + settings.max_completion_length


def needs_gradient_checkpointing(shape: ModelShape, settings: TrainSettings, *, micro_batch: int, picture_tokens: int, world_size: int,
                                 device_bytes: int, rollout_cache: bool) -> bool:
    """Whether the update must recompute activations to fit `device_bytes` beside the rollout's cache
    when it has one (see `update_memory_bytes`)."""
    held = update_memory_bytes(shape, micro_batch=micro_batch, sequence_tokens=sequence_tokens(settings, picture_tokens), picture_tokens=picture_tokens,
                               reference_model=settings.beta > 0, zero_stage=settings.deepspeed_stage, world_size=world_size, checkpointing=False)
    share = CHECKPOINTING_HEADROOM - (ROLLOUT_CACHE_SHARE if rollout_cache else 0.0)
    return held > share * device_bytes


def compile_decode(settings: TrainSettings, *, cpu: bool, world_size: int) -> bool:
    """Whether static-cache rollouts compile their decode step: on GPUs, unless ZeRO-3 shards the
    weights (it gathers them into new buffers for every rollout, which compiled CUDA graphs would
    record anew each time)."""
    return not cpu and not (settings.deepspeed_stage == 3 and world_size > 1)


def deepspeed_config(stage: int) -> str | None:
    """Path of the shipped ZeRO config for `stage`, or None (no DeepSpeed)."""
    return None if stage == 0 else str(CONFIG_DIR / f"zero{stage}.json")


def grpo_arguments(settings: TrainSettings, output_dir: Path, *, cpu: bool, world_size: int) -> dict[str, Any]:
    """The GRPOConfig arguments for `settings` (see the module docstring for the mapping)."""
    plan = batching(settings, world_size)
    options: dict[str, Any] = {}
    backend = rollout_backend(settings, cpu=cpu)
    if backend in (RolloutBackend.vllm_colocate, RolloutBackend.vllm_server):
        options.update(use_vllm=True, vllm_mode="colocate" if backend is RolloutBackend.vllm_colocate else "server")
    if not cpu:
        options["optim"] = "adamw_torch_fused"
        if settings.deepspeed_stage and world_size > 1:
            options["deepspeed"] = deepspeed_config(settings.deepspeed_stage)
    return dict(
        output_dir=str(output_dir),
        num_generations=settings.num_generations,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=settings.weight_decay,
        beta=settings.beta,
        epsilon=settings.epsilon_low,
        epsilon_high=settings.epsilon_high,
        delta=settings.dual_clip,
        loss_type="dapo",
        num_iterations=1,
        max_grad_norm=settings.max_grad_norm,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_completion_length=settings.max_completion_length,
        reward_weights=[settings.reward_weights.accuracy, settings.reward_weights.format],
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        steps_per_generation=plan.steps_per_generation,
        max_steps=settings.max_steps * plan.updates_per_step,
        shuffle_dataset=True,
        save_strategy="steps",
        save_steps=settings.checkpoint_every_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        bf16=settings.bf16 and not cpu,
        use_cpu=cpu,
        # Unset, checkpointing stays on until the stage has measured the model (needs_gradient_checkpointing).
        gradient_checkpointing=settings.gradient_checkpointing is not False and not cpu,
        seed=settings.seed,
        dataloader_num_workers=0,
        **options,
    )


def grpo_config(settings: TrainSettings, output_dir: Path, *, cpu: bool, world_size: int) -> Any:
    """GRPOConfig from the spec's train settings (see the module docstring for the mapping)."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_arguments(settings, output_dir, cpu=cpu, world_size=world_size))


def vision_tower(model: Any) -> Any | None:
    """The model's vision encoder module, or None when it has none at a known place."""
    for path in VISION_TOWER_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def freeze_vision_tower(model: Any) -> int:
    """Stop gradients to the vision encoder; returns how many parameters it froze.

    Called before training starts, so the optimiser (TRL's, or DeepSpeed's) leaves them out.
    Raises ValueError for a model without a vision encoder at a known place: the setting could
    not be honoured.
    """
    tower = vision_tower(model)
    if tower is None:
        raise ValueError(f"freezeVisionTower: {type(model).__name__} has no vision encoder at {', '.join(VISION_TOWER_PATHS)}")
    frozen = 0
    for parameter in tower.parameters():
        parameter.requires_grad_(False)
        frozen += int(getattr(parameter, "ds_numel", parameter.numel()))
    return frozen
