"""The GRPO config the paper's settings produce: micro-batches with accumulation, the dual clip, the clip
range, and the batches per update and per rollout, on one GPU and on eight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dpe.spec import TrainSettings
from dpe.stages.grpo_config import batching, grpo_arguments, grpo_config

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
    assert str(arguments["deepspeed"]).endswith("zero3.json")
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
