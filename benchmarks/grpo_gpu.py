"""GRPO throughput and update-phase MFU on a real-size Qwen2.5-VL config with random weights.

    PYTHONPATH=workloads python -m benchmarks.grpo_gpu --size 7b --steps 3   # on an H100/H200
    python -m benchmarks.grpo_gpu --tiny --steps 2                           # the same code path on CPU (tests)

Run from the repository root; PYTHONPATH=workloads is for a GPU machine without the dpe package installed.

It builds the model from a config (no download), runs a few of TRL's GRPO steps (bf16, gradient
checkpointing) on capability-world prompts at 448 px, and reports end-to-end tokens/s. It then times
the update phase alone (forward and backward over one step's sequences) and reports its model FLOP
utilisation against the card's dense bf16 peak: MFU = 6 * N_matmul * tokens / (seconds * peak).
Writes a JSON line to stdout, and to --out when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "vision_out": 2048},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vision_out": 3584},
}
VOCAB = 152064
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def real_size_model(size: str, tokenizer: Any) -> Any:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    dims = SIZES[size]
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    text = {
        "vocab_size": VOCAB, "hidden_size": dims["hidden_size"], "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"], "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"], "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": dims["vision_out"],
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    return model


def matmul_params(model: Any) -> int:
    """Parameters that take part in matrix multiplies per token: every 2-D weight but embeddings."""
    total = 0
    for name, parameter in model.named_parameters():
        if parameter.dim() == 2 and "embed_tokens" not in name:
            total += parameter.numel()
    return total


def card() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return name, peak


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model instead (checks the code path)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--completion", type=int, default=256, help="max completion tokens")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from dpe.models.processor import load_processor
    from dpe.models.tiny import build_tiny_model
    from dpe.stages.train import accuracy_reward, format_reward, training_rows
    from dpe.world import generate

    work = Path(tempfile.mkdtemp(prefix="grpo-gpu-"))
    tiny_dir = build_tiny_model("qwen2.5-vl", work / "tiny")
    processor = load_processor(tiny_dir)
    processor.tokenizer.padding_side = "left"
    if args.tiny:
        image_size = 56
        model: Any = transformers.AutoModelForImageTextToText.from_pretrained(tiny_dir)
        size = "tiny"
    else:
        image_size = 448
        processor.image_processor.min_pixels = processor.image_processor.max_pixels = image_size * image_size
        model = real_size_model(args.size, processor.tokenizer)
        size = args.size
    on_gpu = torch.cuda.is_available() and not args.tiny
    records = generate(None, args.prompts * args.steps, 1, image_size=image_size)
    config = GRPOConfig(
        output_dir=str(work / "out"), num_generations=args.generations, per_device_train_batch_size=args.prompts * args.generations,
        max_steps=args.steps, learning_rate=1e-6, beta=0.0, max_completion_length=args.completion, temperature=1.0,
        bf16=on_gpu, use_cpu=not on_gpu, gradient_checkpointing=on_gpu, logging_steps=1, report_to="none", save_strategy="no",
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward, format_reward], args=config,
                          train_dataset=Dataset.from_list(training_rows(records)), processing_class=processor)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    completion_tokens = sum(e["completions/mean_length"] * args.prompts * args.generations for e in logs)

    sample = processor(
        text=[processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) + "x " * args.completion for r in training_rows(records[: args.prompts])],
        images=[training_rows([r])[0]["image"] for r in records[: args.prompts]], return_tensors="pt", padding=True,
    ).to(trainer.model.device)
    repeats = max(args.generations // 4, 1)
    model_for_update = trainer.model
    model_for_update.train()
    if on_gpu:
        torch.cuda.synchronize()
    update_started = time.perf_counter()
    for _ in range(repeats):
        loss = model_for_update(**sample).logits.float().mean()
        loss.backward()
    if on_gpu:
        torch.cuda.synchronize()
    update_seconds = time.perf_counter() - update_started
    tokens = int(sample["attention_mask"].sum()) * repeats
    n_matmul = matmul_params(model_for_update)
    device, peak = card()
    achieved = 6 * n_matmul * tokens / update_seconds / 1e12
    report = {
        "size": size, "device": device, "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "python": platform.python_version(), "steps": args.steps, "prompts_per_step": args.prompts, "generations": args.generations,
        "max_completion_tokens": args.completion, "train_seconds": round(train_seconds, 2),
        "completion_tokens_per_second": round(completion_tokens / train_seconds, 1),
        "update_tokens": tokens, "update_seconds": round(update_seconds, 3), "matmul_params": n_matmul,
        "update_tflops": round(achieved, 2), "update_mfu": None if peak is None else round(achieved / peak, 4),
    }
    line = json.dumps(report)
    print(line)
    if args.out is not None:
        with args.out.open("a") as handle:
            handle.write(line + "\n")
    return report


if __name__ == "__main__":
    main()
