"""The train stage on the tiny model with `freezeVisionTower`: the vision encoder leaves training exactly
as it came in while the language model moves, over micro-batches with gradient accumulation and
images scaled into the paper's pixel bounds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from dpe_testkit.runs import context, write_run
from safetensors.torch import load_file

from dpe.records import records_to_parquet
from dpe.spec import StageName
from dpe.stages import train
from dpe.stages.grpo_config import freeze_vision_tower, vision_tower
from dpe.world import generate

pytestmark = pytest.mark.slow

TRAIN = {
    "numGenerations": 4, "learningRate": 1.0e-3, "beta": 0.0, "maxSteps": 2, "promptsPerStep": 4, "promptsPerUpdate": 2,
    "microBatchSize": 2, "maxCompletionLength": 6, "checkpointEverySteps": 10, "bf16": False, "gradientCheckpointing": False,
    "deepspeedStage": 0,
}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    found = []
    for record in caplog.records:
        if record.name.startswith("dpe"):
            try:
                found.append(json.loads(record.getMessage()))
            except ValueError:
                continue
    return found


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "trained"])
def test_a_frozen_vision_tower_comes_out_of_training_unchanged(
    freeze: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Frozen, the vision weights are bit for bit the base model's; trained (the default), they move."""
    monkeypatch.setenv("DPE_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    ctx = context(write_run(tmp_path, train={**TRAIN, "freezeVisionTower": freeze}), StageName.train, 1)
    ctx.store.put_bytes(ctx.stage_key(StageName.score, "train.parquet"), records_to_parquet(generate(None, 8, 5, image_size=56, difficulties=[1])))
    base = weights(ctx.model_dir(ctx.model_uri))

    result = train.run(ctx, work_dir=tmp_path / "work")

    # 2 prompts x 4 completions per update, 2 updates per rollout, 2 rollouts; micro-batches of 2.
    assert result["steps"] == 4
    logged = events(caplog)
    plan = next(e for e in logged if e.get("event") == "train_plan")
    assert (plan["micro_batch"], plan["accumulation"], plan["updates_per_step"]) == (2, 4, 2)
    # The tiny model's processor keeps 56^2 pixels, so the paper's bounds are capped there.
    assert (plan["min_pixels"], plan["max_pixels"]) == (56 * 56, 56 * 56)
    frozen = [e for e in logged if e.get("event") == "vision_tower_frozen"]
    assert len(frozen) == freeze and all(isinstance(e["parameters"], int) and e["parameters"] > 0 for e in frozen)
    trained = weights(ctx.model_dir(result["model_uri"]))
    vision = [name for name in base if ".visual." in f".{name}"]
    assert vision
    assert all(torch.equal(base[name], trained[name]) for name in vision) is freeze
    language = [name for name in base if name not in vision]
    assert any(not torch.equal(base[name], trained[name]) for name in language)


@pytest.mark.parametrize("architecture", ["qwen2.5-vl", "qwen3-vl"])
def test_freezing_stops_every_vision_gradient_and_no_other(architecture: str, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from dpe.models.tiny import build_tiny_model

    model = AutoModelForImageTextToText.from_pretrained(build_tiny_model(architecture, tmp_path / "tiny"))
    tower = vision_tower(model)
    assert tower is not None
    frozen = freeze_vision_tower(model)
    assert frozen == sum(p.numel() for p in tower.parameters()) > 0
    assert not any(p.requires_grad for p in tower.parameters())
    tower_ids = {id(p) for p in tower.parameters()}
    assert all(p.requires_grad for p in model.parameters() if id(p) not in tower_ids)


def test_a_model_without_a_vision_encoder_cannot_be_frozen() -> None:
    with pytest.raises(ValueError, match="no vision encoder"):
        freeze_vision_tower(torch.nn.Linear(2, 2))
