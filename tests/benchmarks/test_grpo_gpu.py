"""The GPU benchmark runs its whole code path, tiny, on CPU: both arms, the end-of-sequence bias, the
meters and the report (the figures that count come from an H100 or H200)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import grpo_gpu

pytestmark = pytest.mark.slow


def test_both_arms_run_tiny_on_cpu_and_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = grpo_gpu.main(["--tiny", "--prompts", "2", "--generations", "4", "--warmup", "1", "--steps", "2", "--max-completion", "24",
                            "--mean-completion", "6", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["device"] == "cpu" and report["size"] == "tiny"
    trl, stage = report["arms"]["trl_default"], report["arms"]["stage"]
    for arm in (trl, stage):
        assert arm["steps_measured"] == 2 and len(arm["warmup_step_seconds"]) == 1
        assert arm["completion_tokens_per_second"] > 0 and arm["update_tflops"] > 0 and arm["update_mfu"] is None
        assert arm["mean_rollout_seconds"] + arm["mean_update_seconds"] == pytest.approx(arm["mean_step_seconds"], abs=0.01)
        # The bias ends completions long before the limit: about 6 tokens, not 24.
        assert 2 <= arm["mean_completion_length"] < 16
    assert (trl["rollout"], trl["group_by_length"], trl["gradient_checkpointing"]) == ("transformers", False, True)
    assert (stage["rollout"], stage["group_by_length"]) == ("static-cache", True)
    assert stage["settings"]["promptsPerStep"] == stage["settings"]["promptsPerUpdate"] == 2
    assert report["speedup"] == pytest.approx(stage["completion_tokens_per_second"] / trl["completion_tokens_per_second"], abs=0.01)
    text = grpo_gpu.markdown(report)
    assert "TRL's default path" in text and "completion tokens per second" in text and report["command"] in text


def test_matmul_parameters_count_the_head_apart_tied_or_not_and_the_vision_encoder_apart() -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}}
    vision = {"depth": 1, "hidden_size": 8, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [0]}
    for tied in (True, False):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config={**text, "tie_word_embeddings": tied}, vision_config=vision,
                                                                    tie_word_embeddings=tied))
        body, head, vision_params = grpo_gpu.matmul_params(model)
        assert body == sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n and "visual" not in n)
        assert head == 64 * 16
        assert vision_params == sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "visual" in n)
        assert torch.is_tensor(model.get_output_embeddings().weight)


def test_too_few_steps_are_refused() -> None:
    with pytest.raises(SystemExit):
        grpo_gpu.main(["--tiny", "--steps", "0"])
