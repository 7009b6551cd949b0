"""Update batches without padding work: the pure steps, and log-probabilities equal to TRL's full-width
pass on the tiny model (with pictures, padding on both sides, several chunks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dpe.stages.update_batches import chunks, length_sorted_blocks, permuted, real_columns


def test_rows_are_sorted_by_length_within_their_update_only() -> None:
    lengths = [5, 1, 3, 9, 2, 2, 7]
    order = length_sorted_blocks(lengths, 3)
    assert order == [1, 2, 0, 4, 5, 3, 6]
    assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:6]) == [3, 4, 5]
    assert length_sorted_blocks([], 4) == []


def test_every_per_row_entry_follows_the_order() -> None:
    batch = {"ids": torch.arange(6).view(3, 2), "names": ["a", "b", "c"], "count": torch.tensor(7), "nothing": None}
    moved = permuted(batch, [2, 0, 1])
    assert moved["ids"].tolist() == [[4, 5], [0, 1], [2, 3]] and moved["names"] == ["c", "a", "b"]
    assert int(moved["count"]) == 7 and moved["nothing"] is None


def test_real_columns_drop_padding_on_both_sides_but_keep_the_completion_start() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0]])
    assert real_columns(mask, keep_from=3) == (1, 6)
    assert real_columns(torch.tensor([[0, 0, 1, 1, 0, 0]]), keep_from=4) == (2, 5)
    assert real_columns(torch.zeros(2, 4, dtype=torch.long), keep_from=2) == (2, 3)


def test_chunks_cut_the_order_in_sizes() -> None:
    assert chunks([3, 1, 2, 0, 4], 2) == [[3, 1], [2, 0], [4]]
    assert chunks([], 3) == []


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dpe.models.processor import load_processor
    from dpe.models.tiny import build_tiny_model
    from dpe.spec import TrainSettings
    from dpe.stages.grpo_config import grpo_config
    from dpe.stages.train import grpo_trainer
    from dpe.world import generate

    root = Path(tmp_path_factory.mktemp("update"))
    directory = build_tiny_model("qwen2.5-vl", root / "model")
    settings = TrainSettings(num_generations=2, prompts_per_step=2, prompts_per_update=2, micro_batch_size=2, max_completion_length=8, beta=0.0,
                             bf16=False, deepspeed_stage=0, group_by_length=True)
    built, _ = grpo_trainer(directory, generate(None, 4, 3, image_size=56), settings, load_processor(directory), grpo_config(settings, root / "out", cpu=True, world_size=1))
    return built


def scored_batch(trainer: Any) -> dict[str, Any]:
    """Three prompts with pictures (left-padded, one longer) and completions of 2, 7 and 4 tokens (right-padded)."""
    from dpe.stages.train import training_rows
    from dpe.world import generate

    processor = trainer.processing_class
    rows = training_rows(generate(None, 3, 17, image_size=56))
    texts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    texts[0] += " with a longer question than the others"
    prompts = processor(text=texts, images=[row["image"] for row in rows], return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(0)
    lengths = [2, 7, 4]
    completion = torch.randint(10, 400, (3, max(lengths)), generator=generator)
    completion_mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    completion = completion.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    zeros = torch.zeros_like(completion)
    return {
        "input_ids": torch.cat([prompts["input_ids"], completion], 1),
        "attention_mask": torch.cat([prompts["attention_mask"], completion_mask], 1),
        "logits_to_keep": completion.shape[1],
        "pixel_values": prompts["pixel_values"],
        "image_grid_thw": prompts["image_grid_thw"],
        "num_images": [1, 1, 1],
        "mm_token_type_ids": torch.cat([prompts["mm_token_type_ids"], zeros], 1),
        "completion_mask": completion_mask,
    }


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_log_probabilities_equal_the_full_width_pass(trainer: Any, batch_size: int) -> None:
    batch = scored_batch(trainer)
    mask = batch.pop("completion_mask")
    model = trainer.model

    def logps(grouped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        trainer.group_by_length = grouped
        found, entropies, _ = trainer._get_per_token_logps_and_entropies(model, batch_size=batch_size, compute_entropy=True, **batch)
        return found, entropies

    with torch.no_grad():
        full, full_entropy = logps(False)
        cut, cut_entropy = logps(True)
    trainer.group_by_length = True
    assert cut.shape == full.shape
    torch.testing.assert_close(cut * mask, full * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cut_entropy * mask, full_entropy * mask, atol=1e-5, rtol=1e-5)
    # After a row's completion the log-probabilities read zero, as in TRL's pass.
    assert bool((cut[mask == 0] == 0).all())


def test_gradients_flow_through_the_cut_pass(trainer: Any) -> None:
    batch = scored_batch(trainer)
    mask = batch.pop("completion_mask")
    trainer.model.zero_grad()
    found, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, batch_size=2, **batch)
    (found * mask).sum().backward()
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_each_update_is_cut_into_micro_batches_by_length(trainer: Any) -> None:
    """One rollout of 2 prompts x 2 completions, one update of two micro-batches of 2: the shorter
    sequences go together, and the update still holds all four."""
    torch.manual_seed(3)
    trainer.model.train()
    trainer._step, trainer._buffered_inputs = 0, None
    rows = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]
    trainer._prepare_inputs(rows)
    parts = trainer._buffered_inputs
    assert len(parts) == 2 and all(part["prompt_ids"].shape[0] == 2 for part in parts)
    lengths = [(part["prompt_mask"].sum(1) + part["completion_mask"].sum(1)).tolist() for part in parts]
    assert max(lengths[0]) <= min(lengths[1])
