"""Group rollouts: the same completions as Hugging Face `generate` over the repeated batch, from one
prefill per prompt and a static KV cache; and the pure pieces (grouping rows, sizing the cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dpe.stages.rollout import CACHE_LENGTH_STEP, GroupRollout, cache_length, consecutive_groups, groups_per_chunk, kv_bytes_per_token, row_pictures

GROUP = 4


def test_consecutive_equal_rows_form_groups_in_order() -> None:
    assert consecutive_groups([1, 1, 1, 2, 2, 3, 1, 1], lambda a, b: a == b) == [3, 2, 1, 2]
    assert consecutive_groups([], lambda a, b: a == b) == []
    assert consecutive_groups(["a"], lambda a, b: a == b) == [1]


def test_the_static_cache_grows_in_steps_and_never_shrinks() -> None:
    assert cache_length(1) == CACHE_LENGTH_STEP
    assert cache_length(CACHE_LENGTH_STEP) == CACHE_LENGTH_STEP
    assert cache_length(CACHE_LENGTH_STEP + 1) == 2 * CACHE_LENGTH_STEP
    assert cache_length(10, previous=3 * CACHE_LENGTH_STEP) == 3 * CACHE_LENGTH_STEP


def test_chunks_are_the_largest_equal_division_that_fits() -> None:
    assert groups_per_chunk(16, 100) == 16
    assert groups_per_chunk(16, 5) == 4
    assert groups_per_chunk(12, 5) == 4
    assert groups_per_chunk(7, 3) == 1
    assert groups_per_chunk(5, 0) == 1


def test_pictures_are_split_per_row_only_when_each_row_has_one() -> None:
    ids = torch.zeros(2, 5, dtype=torch.long)
    one_each = {"input_ids": ids, "pixel_values": torch.arange(10.0).view(10, 1), "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 3]])}
    pictures = row_pictures(one_each)
    assert pictures is not None and [p.shape[0] for p in pictures] == [4, 6]
    assert row_pictures({"input_ids": ids}) == []
    assert row_pictures({"input_ids": ids, "pixel_values": torch.zeros(9, 1), "image_grid_thw": torch.tensor([[1, 1, 3]] * 3)}) is None
    assert row_pictures({"input_ids": ids, "pixel_values_videos": torch.zeros(4, 1), "video_grid_thw": torch.tensor([[1, 2, 2]])}) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[dict[str, Any]]]:
    from transformers import AutoModelForImageTextToText

    from dpe.models.processor import load_processor
    from dpe.models.tiny import build_tiny_model
    from dpe.stages.train import training_rows
    from dpe.world import generate

    directory = build_tiny_model("qwen2.5-vl", Path(tmp_path_factory.mktemp("tiny")) / "model")
    processor = load_processor(directory)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    return model, processor, training_rows(generate(None, 3, 11, image_size=56))


def repeated_batch(processor: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch TRL generates from: every prompt `GROUP` times in consecutive rows, left-padded (the
    second prompt made longer, so the others carry padding)."""
    texts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    texts[1] += " and one more clause"
    repeated = [text for text in texts for _ in range(GROUP)]
    images = [row["image"] for row in rows for _ in range(GROUP)]
    return dict(processor(text=repeated, images=images, return_tensors="pt", padding=True))


def generation_config(processor: Any, **sampling: Any) -> Any:
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    return GenerationConfig(max_new_tokens=10, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, disable_compile=True, **sampling)


def greedy_by_generate(model: Any, processor: Any, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """The repeated batch, a greedy config, and `generate`'s own completions of it."""
    batch = repeated_batch(processor, rows)
    config = generation_config(processor, do_sample=False)
    with torch.no_grad():
        return batch, config, model.generate(**batch, generation_config=config)


def test_greedy_completions_equal_generate_over_the_repeated_batch(tiny: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    model, processor, rows = tiny
    batch, config, expected = greedy_by_generate(model, processor, rows)
    rollout = GroupRollout(compile_decode=False)

    got = rollout.generate(model, config, batch)

    assert torch.equal(got, expected)
    assert getattr(model.model, "rope_deltas", None) is None
    # A second rollout reuses the emptied cache and gives the same completions.
    cache = rollout.cache
    assert torch.equal(rollout.generate(model, config, batch), expected) and rollout.cache is cache


def test_the_compiled_decode_step_gives_the_same_completions_and_compiles_once_for_other_prompt_lengths(
    tiny: tuple[Any, Any, list[dict[str, Any]]],
) -> None:
    """`generate` compiles the decode step over our static cache on GPUs only; here it is made to do
    so on the CPU (`_compile_all_devices`), so the compiled path (cache positions, repeated Qwen-VL
    rope deltas) is traced and checked before it ever meets a GPU. A second rollout of as many rows
    with longer prompts reuses the compiled graph. The backend is `aot_eager`: Dynamo's tracing and
    guards and AOTAutograd's graph, as on the GPU, without Inductor's C++ code for this machine's CPU
    (which depends on the compiler and vector instructions found there)."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model, processor, rows = tiny
    batch, config, expected = greedy_by_generate(model, processor, rows)
    config.compile_config = CompileConfig(backend="aot_eager", mode=None)
    config.compile_config._compile_all_devices = True
    rollout = GroupRollout(compile_decode=True)
    graphs = counters["stats"]["unique_graphs"]

    assert torch.equal(rollout.generate(model, config, batch), expected)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > graphs, "the decode step was not compiled"

    longer = [dict(row) for row in rows]
    longer[0]["prompt"] = [{**turn, "content": [*turn["content"], {"type": "text", "text": "Answer in a few words."}]} if turn["role"] == "user" else turn
                           for turn in rows[0]["prompt"]]
    batch, _, expected = greedy_by_generate(model, processor, longer)
    assert torch.equal(rollout.generate(model, config, batch), expected)
    assert counters["stats"]["unique_graphs"] == compiled
    torch._dynamo.reset()


def test_a_rollout_over_the_budget_goes_in_chunks_with_the_same_completions(tiny: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    model, processor, rows = tiny
    batch, config, expected = greedy_by_generate(model, processor, rows)
    one_group = GROUP * CACHE_LENGTH_STEP * 2 * kv_bytes_per_token(model.config, model.dtype.itemsize)
    rollout = GroupRollout(compile_decode=False, cache_budget_bytes=one_group)
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True)
    try:
        got = rollout.generate(model, config, batch)
    finally:
        handle.remove()
    # Three chunks of one prompt each (a prefill of 1 row, then decode steps of GROUP rows).
    assert seen.count(1) == len(rows) and rollout.cache_rows == GROUP
    width = min(got.shape[1], expected.shape[1])
    assert torch.equal(got[:, :width], expected[:, :width])
    assert bool((got[:, width:] == processor.tokenizer.pad_token_id).all()) and bool((expected[:, width:] == processor.tokenizer.pad_token_id).all())


def test_text_only_rows_ignore_positions_left_by_an_earlier_pass(tiny: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    model, processor, rows = tiny
    with torch.no_grad():
        model(**repeated_batch(processor, rows))  # leaves rope_deltas for 12 rows of pictures
    texts = [f"question number {i}" for i in range(2) for _ in range(GROUP)]
    batch = dict(processor.tokenizer(texts, return_tensors="pt", padding=True))
    config = generation_config(processor, do_sample=False)
    got = GroupRollout(compile_decode=False).generate(model, config, batch)
    model.model.rope_deltas = None
    with torch.no_grad():
        expected = model.generate(**batch, generation_config=config)
    assert torch.equal(got, expected)


def test_prefill_runs_once_per_prompt_and_the_vision_encoder_once_per_picture(tiny: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    model, processor, rows = tiny
    batch = repeated_batch(processor, rows)
    seen: list[int] = []
    handle = model.model.visual.register_forward_hook(lambda module, args, output: seen.append(int(args[0].shape[0])))
    try:
        GroupRollout(compile_decode=False).generate(model, generation_config(processor, do_sample=False), batch)
    finally:
        handle.remove()
    # One call, over each prompt's picture patches once (TRL's batch holds every picture GROUP times).
    assert seen == [batch["pixel_values"].shape[0] // GROUP]


def test_sampled_completions_differ_within_a_group_and_stop_at_the_limit(tiny: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    model, processor, rows = tiny
    batch = repeated_batch(processor, rows)
    torch.manual_seed(0)
    got = GroupRollout(compile_decode=False).generate(model, generation_config(processor, do_sample=True, temperature=1.5, top_p=1.0), batch)
    length = batch["input_ids"].shape[1]
    assert got.shape[0] == len(rows) * GROUP and got.shape[1] <= length + 10
    assert torch.equal(got[:, :length], batch["input_ids"])
    completions = {tuple(row.tolist()) for row in got[:GROUP, length:]}
    assert len(completions) > 1


def test_rows_with_several_pictures_go_to_generate_whole() -> None:
    calls: list[dict[str, Any]] = []
    inputs = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "pixel_values": torch.zeros(8, 1), "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]])}

    def decode(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "whole"

    assert GroupRollout(compile_decode=False).generate(None, "config", inputs, decode) == "whole"
    assert calls == [{**inputs, "generation_config": "config"}]


def test_the_train_stage_trains_through_static_cache_rollouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The stage with `rolloutBackend: static-cache` and `groupByLength` on CPU (uncompiled): TRL's
    trainer, its rollouts made by the group rollout, the steps and rewards recorded as on TRL's own path."""
    import json
    import logging

    from dpe_testkit.runs import context, write_run

    from dpe.records import records_to_parquet
    from dpe.spec import StageName
    from dpe.stages import rollout, train
    from dpe.world import generate

    monkeypatch.setenv("DPE_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    settings = {"numGenerations": 4, "learningRate": 1.0e-3, "beta": 0.0, "maxSteps": 2, "promptsPerStep": 4, "promptsPerUpdate": 2,
                "microBatchSize": 2, "maxCompletionLength": 6, "checkpointEverySteps": 10, "bf16": False, "deepspeedStage": 0,
                "rolloutBackend": "static-cache", "groupByLength": True}
    ctx = context(write_run(tmp_path, train=settings), StageName.train, 1)
    ctx.store.put_bytes(ctx.stage_key(StageName.score, "train.parquet"), records_to_parquet(generate(None, 8, 5, image_size=56, difficulties=[1])))
    rollouts: list[int] = []
    original = rollout.GroupRollout.generate

    def counted(self: Any, model: Any, config: Any, inputs: dict[str, Any], decode: Any = None) -> Any:
        rollouts.append(int(inputs["input_ids"].shape[0]))
        return original(self, model, config, inputs, decode)

    monkeypatch.setattr(rollout.GroupRollout, "generate", counted)

    result = train.run(ctx, work_dir=tmp_path / "work")

    assert result["steps"] == 4 and result["reward_mean"] is not None
    # Two rollouts of 4 prompts x 4 completions each.
    assert rollouts == [16, 16]
    paths = [json.loads(r.getMessage()) for r in caplog.records if r.name.startswith("dpe") and '"train_path"' in r.getMessage()]
    assert paths and paths[0]["rollout_backend"] == "static-cache" and paths[0]["group_by_length"] is True
