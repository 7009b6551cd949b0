"""The GRPO config the paper's settings produce: micro-batches with accumulation, the dual clip, the clip
range, and the batches per update and per rollout, on one GPU and on eight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dpe.spec import RolloutBackend, TrainSettings
from dpe.stages.grpo_config import (
    CHECKPOINTING_HEADROOM,
    ModelShape,
    batching,
    compile_decode,
    grpo_arguments,
    grpo_config,
    needs_gradient_checkpointing,
    rollout_backend,
    sequence_tokens,
    update_memory_bytes,
)

PAPER = TrainSettings()
"""The spec's defaults are the paper's settings: 512 prompts per step, 128 per update, 8 completions each."""
MAX_MICRO_BATCH = 16


def show(arguments: dict[str, object], world_size: int) -> None:
    """Print the arguments (`pytest -s` shows them): the config a run at paper settings gets."""
    print(f"\nGRPOConfig arguments at paper settings, world size {world_size}:")
    print(json.dumps({k: v for k, v in arguments.items() if k != "output_dir"}, indent=1, sort_keys=True, default=str))


@pytest.mark.parametrize("world_size", [1, 8])
def test_paper_settings_fit_small_micro_batches_and_keep_the_papers_batches(world_size: int, tmp_path: Path) -> None:
    arguments = grpo_arguments(PAPER, tmp_path, cpu=False, world_size=world_size)
    show(arguments, world_size)
    micro, accumulation = arguments["per_device_train_batch_size"], arguments["gradient_accumulation_steps"]
    assert isinstance(micro, int) and isinstance(accumulation, int)
    assert micro <= MAX_MICRO_BATCH
    # 128 prompts x 8 completions per optimiser update, 512 x 8 per rollout, 4 updates per rollout.
    assert micro * accumulation * world_size == 128 * 8
    assert micro * arguments["steps_per_generation"] * world_size == 512 * 8
    assert arguments["steps_per_generation"] == 4 * accumulation
    assert arguments["max_steps"] == 10 * 4
    assert arguments["num_iterations"] == 1


@pytest.mark.parametrize("world_size", [1, 8])
def test_paper_settings_clip_and_optimise_as_the_paper(world_size: int, tmp_path: Path) -> None:
    arguments = grpo_arguments(PAPER, tmp_path, cpu=False, world_size=world_size)
    assert arguments["delta"] == 3.0
    assert arguments["epsilon"] == 0.2 and arguments["epsilon_high"] == 0.3
    assert arguments["beta"] == 0.01 and arguments["loss_type"] == "dapo"
    assert arguments["learning_rate"] == 1e-6 and arguments["weight_decay"] == 0.01 and arguments["lr_scheduler_type"] == "constant"
    assert arguments["max_grad_norm"] == 1.0
    assert arguments["temperature"] == 1.0 and arguments["top_p"] == 0.99 and arguments["max_completion_length"] == 4096
    assert arguments["num_generations"] == 8 and arguments["reward_weights"] == [0.9, 0.1]
    assert arguments["bf16"] is True and arguments["gradient_checkpointing"] is True
    assert arguments["optim"] == "adamw_torch_fused"
    # ZeRO shards over processes: with one there is nothing to shard.
    assert str(arguments.get("deepspeed")).endswith("zero3.json") if world_size > 1 else "deepspeed" not in arguments
    assert arguments["shuffle_dataset"] is True and arguments["seed"] == 0


def test_eight_gpus_at_paper_settings_take_four_sequences_per_micro_batch() -> None:
    plan = batching(PAPER, 8)
    assert (plan.micro_batch, plan.accumulation, plan.updates_per_step, plan.steps_per_generation) == (4, 32, 4, 128)
    assert (plan.sequences_per_update, plan.sequences_per_step) == (1024, 4096)
    one = batching(PAPER, 1)
    assert (one.micro_batch, one.accumulation, one.steps_per_generation) == (4, 256, 1024)


@pytest.mark.parametrize(
    "micro_batch_size, world_size, micro, accumulation",
    [
        (16, 8, 16, 8),  # the most the issue allows: 1024 / 8 = 128 per GPU, 8 micro-batches of 16
        (16, 16, 16, 4),  # two nodes of eight
        (5, 8, 4, 32),  # 5 does not divide 128: the largest size below it that does
        (3, 1, 2, 512),
        (2048, 8, 128, 1),  # a micro-batch above the share: the whole share in one pass
        (1, 8, 1, 128),  # the paper's EasyR1 run (micro-batch 1)
    ],
)
def test_micro_batch_is_the_largest_divisor_of_the_share_within_the_setting(micro_batch_size: int, world_size: int, micro: int, accumulation: int) -> None:
    plan = batching(PAPER.model_copy(update={"micro_batch_size": micro_batch_size}), world_size)
    assert (plan.micro_batch, plan.accumulation) == (micro, accumulation)
    assert plan.sequences_per_update == 1024 and plan.sequences_per_step == 4096


def test_an_update_that_does_not_split_over_the_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3 training processes"):
        batching(PAPER, 3)


@pytest.mark.slow
def test_trl_accepts_the_paper_config_and_derives_the_rollout_batch(tmp_path: Path) -> None:
    """GRPOConfig's own checks pass, and the rollout batch it derives is the paper's 512 x 8 (on this
    one-process machine; DeepSpeed and bf16 need a GPU, so the CPU variant is built)."""
    config = grpo_config(PAPER, tmp_path, cpu=True, world_size=1)
    assert config.delta == 3.0 and config.epsilon == 0.2 and config.epsilon_high == 0.3
    assert config.per_device_train_batch_size == 4 and config.gradient_accumulation_steps == 256
    assert config.steps_per_generation == 1024 and config.generation_batch_size == 512 * 8
    assert config.max_steps == 40 and config.deepspeed is None and not config.bf16


def test_a_small_cpu_run_keeps_one_update_per_rollout(tmp_path: Path) -> None:
    small = TrainSettings(num_generations=4, prompts_per_step=2, prompts_per_update=2, max_steps=12)
    config = grpo_config(small, tmp_path, cpu=True, world_size=1)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.steps_per_generation) == (4, 2, 2)
    assert config.generation_batch_size == 8 and config.max_steps == 12


def test_the_spec_defaults_are_the_papers() -> None:
    assert PAPER.dual_clip == 3.0 and PAPER.epsilon_low == 0.2 and PAPER.epsilon_high == 0.3
    assert PAPER.min_pixels == 512 * 512 and PAPER.max_pixels == 2048 * 2048
    assert PAPER.micro_batch_size <= MAX_MICRO_BATCH and PAPER.freeze_vision_tower is False


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"minPixels": 4096, "maxPixels": 1024}, "minPixels"),
        ({"dualClip": 1.2}, "dualClip"),
        ({"dualClip": 1.0}, "dualClip"),
        ({"epsilonHigh": 2.5}, "dualClip"),
        ({"microBatchSize": 0}, "microBatchSize"),
    ],
)
def test_settings_that_cannot_be_honoured_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainSettings.model_validate(settings)


@pytest.mark.parametrize(
    "setting, cpu, backend",
    [
        (RolloutBackend.auto, False, RolloutBackend.static_cache),
        (RolloutBackend.auto, True, RolloutBackend.transformers),
        (RolloutBackend.transformers, False, RolloutBackend.transformers),
        (RolloutBackend.static_cache, True, RolloutBackend.static_cache),
        (RolloutBackend.vllm_server, False, RolloutBackend.vllm_server),
    ],
)
def test_auto_rollouts_take_the_static_cache_on_gpus_only(setting: RolloutBackend, cpu: bool, backend: RolloutBackend, tmp_path: Path) -> None:
    settings = PAPER.model_copy(update={"rollout_backend": setting})
    assert rollout_backend(settings, cpu=cpu) is backend
    arguments = grpo_arguments(settings, tmp_path, cpu=cpu, world_size=1)
    assert arguments.get("use_vllm", False) is (backend is RolloutBackend.vllm_server)


def test_cpu_runs_keep_the_plain_optimiser_and_no_checkpointing(tmp_path: Path) -> None:
    arguments = grpo_arguments(PAPER, tmp_path, cpu=True, world_size=1)
    assert "optim" not in arguments and "deepspeed" not in arguments and arguments["gradient_checkpointing"] is False


@pytest.mark.parametrize("setting, expected", [(None, True), (True, True), (False, False)])
def test_checkpointing_stays_on_until_measured_unless_the_spec_says(setting: bool | None, expected: bool, tmp_path: Path) -> None:
    arguments = grpo_arguments(PAPER.model_copy(update={"gradient_checkpointing": setting}), tmp_path, cpu=False, world_size=8)
    assert arguments["gradient_checkpointing"] is expected


QWEN_3B = ModelShape(parameters=3_754_622_976, trainable=3_754_622_976, parameter_bytes=2, layers=36, hidden=2048, intermediate=11008,
                     vision_layers=32, vision_hidden=1280, vision_intermediate=3420)
"""Qwen2.5-VL-3B as released (bf16, vision encoder included)."""
GIB = 2**30


def test_the_memory_estimate_adds_states_and_activations() -> None:
    shape = ModelShape(parameters=100, trainable=60, parameter_bytes=2, layers=3, hidden=4, intermediate=8)
    common = dict(micro_batch=2, sequence_tokens=5, picture_tokens=0, world_size=1)
    plain = update_memory_bytes(shape, reference_model=False, zero_stage=0, checkpointing=False, **common)  # type: ignore[arg-type]
    # 200 weights + 360 (gradients and two moments of 60, in bf16) + 10 tokens x 3 layers x (16x4 + 8x8).
    assert plain == 200 + 360 + 10 * 3 * 128
    assert update_memory_bytes(shape, reference_model=True, zero_stage=0, checkpointing=False, **common) == plain + 200  # type: ignore[arg-type]
    checkpointed = update_memory_bytes(shape, reference_model=False, zero_stage=0, checkpointing=True, **common)  # type: ignore[arg-type]
    assert checkpointed == 200 + 360 + 10 * 2 * 4 * 3 + 10 * 128
    # ZeRO names a stage, but with one process there is no DeepSpeed (grpo_arguments leaves it out).
    assert update_memory_bytes(shape, reference_model=False, zero_stage=3, checkpointing=False, **common) == plain  # type: ignore[arg-type]
    sharded = dict(common, world_size=4)
    zero3 = update_memory_bytes(shape, reference_model=True, zero_stage=3, checkpointing=False, **sharded)  # type: ignore[arg-type]
    assert zero3 == (200 + 60 * 14 + 200) // 4 + 10 * 3 * 128
    zero2 = update_memory_bytes(shape, reference_model=False, zero_stage=2, checkpointing=False, **sharded)  # type: ignore[arg-type]
    assert zero2 == 200 + 60 * 14 // 4 + 10 * 3 * 128


def test_the_vision_encoder_adds_its_patches_activations() -> None:
    shape = ModelShape(parameters=100, trainable=60, parameter_bytes=2, layers=3, hidden=4, intermediate=8, vision_layers=2, vision_hidden=2,
                       vision_intermediate=4)
    without = update_memory_bytes(shape, micro_batch=2, sequence_tokens=5, picture_tokens=0, reference_model=False, zero_stage=0, world_size=1,
                                  checkpointing=False)
    with_pictures = update_memory_bytes(shape, micro_batch=2, sequence_tokens=5, picture_tokens=3, reference_model=False, zero_stage=0,
                                        world_size=1, checkpointing=False)
    # 2 rows x 3 picture tokens x 4 patches, through 2 blocks of 16x2 + 8x4 bytes per patch.
    assert with_pictures - without == 24 * 2 * 64


def test_checkpointing_is_needed_only_where_the_update_would_not_fit() -> None:
    settings = PAPER.model_copy(update={"max_completion_length": 1024, "beta": 0.0})
    assert sequence_tokens(settings, 256) == 256 + 512 + 1024
    short = dict(micro_batch=1, picture_tokens=256, world_size=1)
    held = update_memory_bytes(QWEN_3B, sequence_tokens=sequence_tokens(settings, 256), reference_model=False, zero_stage=0, checkpointing=False,
                               **short)  # type: ignore[arg-type]
    assert 25 * GIB < held < 60 * GIB
    assert needs_gradient_checkpointing(QWEN_3B, settings, device_bytes=141 * GIB, rollout_cache=True, **short) is False  # type: ignore[arg-type]
    tight = int(held / CHECKPOINTING_HEADROOM) + GIB
    assert needs_gradient_checkpointing(QWEN_3B, settings, device_bytes=tight, rollout_cache=False, **short) is False  # type: ignore[arg-type]
    # The rollout's cache takes its share of the same card.
    assert needs_gradient_checkpointing(QWEN_3B, settings, device_bytes=tight, rollout_cache=True, **short) is True  # type: ignore[arg-type]
    # The paper's longest sequences (a 2048^2 picture, 4096 tokens) at 4 per micro-batch need it on any card.
    paper = (2048 // 28 + 1) ** 2
    assert needs_gradient_checkpointing(QWEN_3B, PAPER, micro_batch=4, picture_tokens=paper, world_size=1, device_bytes=141 * GIB,
                                        rollout_cache=True) is True


@pytest.mark.parametrize("stage, world_size, cpu, compiled", [(3, 8, False, False), (3, 1, False, True), (2, 8, False, True), (0, 1, True, False)])
def test_decode_is_compiled_on_gpus_unless_zero3_shards_the_weights(stage: int, world_size: int, cpu: bool, compiled: bool) -> None:
    settings = PAPER.model_copy(update={"deepspeed_stage": stage})
    assert compile_decode(settings, cpu=cpu, world_size=world_size) is compiled


def test_picture_tokens_round_each_side_up_to_whole_token_squares() -> None:
    from types import SimpleNamespace

    from dpe.models.processor import picture_tokens

    assert picture_tokens(None, 512, 512) == 19 * 19  # Qwen-VL: 28-px squares
    assert picture_tokens(None, 56, 84) == 2 * 3
    wide = SimpleNamespace(image_processor=SimpleNamespace(patch_size=16, merge_size=2))
    assert picture_tokens(wide, 64, 65) == 2 * 3
