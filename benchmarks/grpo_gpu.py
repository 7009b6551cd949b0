"""GRPO throughput of the train stage against TRL's default path, side by side in one run on one card.

    python -m benchmarks.grpo_gpu --size 3b --json $OUT/grpo_gpu.json        # on an H100 or H200
    python -m benchmarks.grpo_gpu --from-json grpo_gpu.json --record          # its results into RESULTS.md
    python -m benchmarks.grpo_gpu --tiny --steps 1 --warmup 1 ...              # the same code on CPU (tests)

Run from the repository root (PYTHONPATH=workloads where the dpe package is not installed;
`benchmarks/gpu_carry.py` brings what a GPU machine lacks). 7B with the stage's KL term needs more
memory than an H100 has; measure it on an H200.

The model: Qwen2.5-VL-3B or 7B as released (text and vision shapes, tied embeddings for 3B,
vocabulary 151,936 or 152,064), random bf16 weights, built from its config and saved, with the
released image processor's settings (14-px patches merged 2 x 2). Random weights never choose the
end of sequence, which would run every completion to the limit and hide what padding costs; so
each arm's LM head gets a bias on the end-of-sequence token, set from the model's own logits on a
prompt so that a completion ends at each token with probability 1 / `--mean-completion`: lengths
follow a geometric distribution, cut at `--max-completion`. The bias is part of the model in both
arms (the rollout and the loss see it).

The arms, each loading the same saved model, on the same prompts (capability-world pictures at
`--image-size` px with their questions), `--prompts` per step and `--generations` completions each,
one optimiser update per step:

- `trl_default`: TRL's GRPOConfig defaults (its micro-batch of 8, gradient checkpointing, rollouts
  by Hugging Face `generate` over the repeated, padded batch, uncompiled), with only the batch sizes,
  the step count and the completion limit set to match;
- `stage`: the train stage's own trainer and config from the spec's train settings
  (`dpe.stages.train.grpo_trainer`, `grpo_config`): on a GPU its defaults take static-cache
  rollouts, update batches without padding work, fused AdamW, checkpointing only where memory needs
  it, and the paper's KL term (a reference model's forward pass that the TRL arm does not make).
  On a CPU the fast path is asked for explicitly, since its defaults are for GPUs.

Measured per arm, over the steps after `--warmup`: whole-step seconds (CUDA synchronised), the
rollout's share (generation, rewards and the old and reference log-probabilities), the update's
(forward and backward of every micro-batch and the optimiser step); completion and total tokens per
second of whole steps; the update's model FLOP utilisation, 6 x (the language model's matmul
parameters x real tokens + the LM head's x completion tokens, the only ones TRL scores + the vision
encoder's x picture patches) per second against the card's dense bf16 peak; and the peak GPU
memory. The arms sample as their configs say (top-p 1.0 for TRL's defaults, the paper's 0.99 for the
stage, which costs the stage a sort over the vocabulary at every decode step).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "grpo_gpu"
SIZES: dict[str, dict[str, Any]] = {
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
}
"""Qwen2.5-VL-3B and 7B's language models as released."""
VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2,
          "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}
"""Their vision encoder (the same for both sizes; its output width is the language model's)."""
RELEASED_PIXELS = (56 * 56, 28 * 28 * 16384)
"""The released image processor's min and max pixels."""
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 peak of the SXM cards."""
TRL_MICRO_BATCH = 8
"""GRPOConfig's default `per_device_train_batch_size`."""
TARGETS = {"speedup": 5.0, "update_mfu": 0.35}


def real_size_processor(processor: Any) -> Any:
    """`processor` (the tiny model's tokenizer and chat template) with the released image processor's settings."""
    import transformers

    processor.image_processor = transformers.Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=RELEASED_PIXELS[0], max_pixels=RELEASED_PIXELS[1],
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    return processor


def save_real_size_model(size: str, tokenizer: Any, directory: Path) -> Path:
    """Qwen2.5-VL at `size`, random bf16 weights, saved to `directory`."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    dims = dict(SIZES[size])
    tied = dims.pop("tie_word_embeddings")
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    text = {**dims, "max_position_embeddings": 128000, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": tied}
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(text_config=text, vision_config={**VISION, "out_hidden_size": dims["hidden_size"]}, tie_word_embeddings=tied, **ids)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    return directory


def matmul_params(model: Any) -> tuple[int, int, int]:
    """Parameters in matrix multiplies: per text token the language model's 2-D weights (embeddings
    are lookups), per scored token the LM head's, per picture patch the vision encoder's."""
    head = model.get_output_embeddings().weight
    vision = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and ".visual." in f".{name}")
    body = sum(p.numel() for name, p in model.named_parameters()
               if p.dim() == 2 and ".visual." not in f".{name}" and "embed_tokens" not in name and p is not head)
    return body, head.numel(), vision


def end_of_sequence_bias(model: Any, inputs: dict[str, Any], eos: int, mean_length: float) -> float:
    """The logit bias on `eos` that makes its probability 1 / `mean_length` at the prompt's positions (mean of the needed biases)."""
    import torch

    with torch.no_grad():
        logits = model(**inputs).logits.float()
    others = logits.clone()
    others[..., eos] = -math.inf
    q = 1.0 / mean_length
    needed = torch.logsumexp(others, -1) - logits[..., eos] + math.log(q / (1 - q))
    return float(needed[inputs["attention_mask"].bool()].mean())


def add_bias(model: Any, eos: int, bias: float) -> None:
    """A frozen LM-head bias: `bias` on `eos`, 0 elsewhere."""
    import torch

    head = model.get_output_embeddings()
    values = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)
    values[eos] = bias
    head.bias = torch.nn.Parameter(values, requires_grad=False)


class Meter:
    """Whole-step and rollout times and token counts of one trainer, one entry per optimiser step."""

    def __init__(self, trainer: Any, cuda: bool) -> None:
        from transformers import TrainerCallback

        self.cuda = cuda
        self.steps: list[dict[str, float]] = []
        self.pending: dict[str, float] = {}
        meter = self
        rollout = trainer._generate_and_score_completions

        def timed_rollout(batch: Any) -> Any:
            started = self.now()
            out = rollout(batch)
            patches = out["image_grid_thw"].prod(-1).sum() if out.get("image_grid_thw") is not None else 0
            meter.pending.update(rollout_seconds=self.now() - started, prompt_tokens=float(out["prompt_mask"].sum()),
                                 completion_tokens=float(out["completion_mask"].sum()), sequences=float(out["completion_mask"].shape[0]),
                                 patches=float(patches))
            return out

        trainer._generate_and_score_completions = timed_rollout

        class StepTimer(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                meter.started = meter.now()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                meter.steps.append({"step_seconds": meter.now() - meter.started, **meter.pending})
                meter.pending = {}

        trainer.add_callback(StepTimer())
        self.started = 0.0

    def now(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def summary(steps: list[dict[str, float]], params: tuple[int, int, int], peak_tflops: float | None) -> dict[str, Any]:
    """Totals over the measured steps: throughput of whole steps, and the update's FLOP rate."""
    seconds = sum(s["step_seconds"] for s in steps)
    rollout = sum(s["rollout_seconds"] for s in steps)
    update = seconds - rollout
    completion = sum(s["completion_tokens"] for s in steps)
    tokens = completion + sum(s["prompt_tokens"] for s in steps)
    body, head, vision = params
    flops = 6 * (body * tokens + head * completion + vision * sum(s["patches"] for s in steps))
    tflops = flops / update / 1e12 if update > 0 else 0.0
    return {
        "steps_measured": len(steps),
        "step_seconds": [round(s["step_seconds"], 3) for s in steps],
        "mean_step_seconds": round(seconds / len(steps), 3),
        "mean_rollout_seconds": round(rollout / len(steps), 3),
        "mean_update_seconds": round(update / len(steps), 3),
        "mean_completion_length": round(completion / sum(s["sequences"] for s in steps), 1),
        "completion_tokens_per_second": round(completion / seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "update_tflops": float(f"{tflops:.4g}"),
        "update_mfu": None if peak_tflops is None else round(tflops / peak_tflops, 4),
    }


def card() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def stage_settings(args: argparse.Namespace, cpu: bool) -> Any:
    from dpe.spec import RolloutBackend, TrainSettings
    from dpe.spec.limits import MAX_STEPS

    settings = TrainSettings(num_generations=args.generations, prompts_per_step=args.prompts, prompts_per_update=args.prompts,
                             max_completion_length=args.max_completion, max_steps=args.warmup + args.steps, checkpoint_every_steps=MAX_STEPS,
                             bf16=not cpu, deepspeed_stage=0, seed=args.seed)
    if cpu:
        settings = settings.model_copy(update={"rollout_backend": RolloutBackend.static_cache, "group_by_length": True, "gradient_checkpointing": False})
    return settings


def build_arm(name: str, args: argparse.Namespace, model_dir: Path, processor: Any, records: list[Any], work: Path, cpu: bool) -> tuple[Any, dict[str, Any]]:
    """The arm's trainer, and what it was configured with."""
    from trl import GRPOConfig, GRPOTrainer

    from dpe.stages.grpo_config import grpo_config
    from dpe.stages.train import accuracy_reward, format_reward, grpo_trainer, training_dataset, training_rows

    if name == "stage":
        settings = stage_settings(args, cpu)
        trainer, _ = grpo_trainer(model_dir, records, settings, processor, grpo_config(settings, work / name, cpu=cpu, world_size=1))
        return trainer, {"settings": settings.model_dump(mode="json", by_alias=True, exclude={"execution"})}
    sequences = args.prompts * args.generations
    micro = min(TRL_MICRO_BATCH, sequences)
    config = GRPOConfig(output_dir=str(work / name), num_generations=args.generations, max_completion_length=args.max_completion,
                        per_device_train_batch_size=micro, gradient_accumulation_steps=sequences // micro, steps_per_generation=sequences // micro,
                        max_steps=args.warmup + args.steps, logging_steps=1, report_to="none", save_strategy="no", seed=args.seed,
                        use_cpu=cpu, bf16=not cpu, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[accuracy_reward, format_reward], args=config,
                          train_dataset=training_dataset(training_rows(records)), processing_class=processor)
    return trainer, {"per_device_train_batch_size": micro, "gradient_accumulation_steps": sequences // micro}


def run_arm(name: str, args: argparse.Namespace, model_dir: Path, processor: Any, records: list[Any], probe: dict[str, Any], work: Path,
            peak_tflops: float | None) -> dict[str, Any]:
    import torch

    cpu = not torch.cuda.is_available()
    if not cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    held = None if cpu else round(torch.cuda.memory_allocated() / 2**30, 2)
    trainer, configured = build_arm(name, args, model_dir, processor, records, work, cpu)
    eos = processor.tokenizer.eos_token_id
    bias = end_of_sequence_bias(trainer.model, {k: v.to(trainer.model.device) for k, v in probe.items()}, eos, args.mean_completion)
    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            add_bias(model, eos, bias)
    meter = Meter(trainer, cuda=not cpu)
    trainer.train()
    params = matmul_params(trainer.model)
    measured = meter.steps[args.warmup :]
    result = {
        **summary(measured, params, peak_tflops),
        "warmup_step_seconds": [round(s["step_seconds"], 3) for s in meter.steps[: args.warmup]],
        "eos_bias": round(bias, 3),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "rollout": "static-cache" if getattr(trainer, "group_rollout", None) is not None else "transformers",
        "group_by_length": bool(getattr(trainer, "group_by_length", False)),
        "peak_memory_gib": None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "memory_held_at_start_gib": held,
        "matmul_params": dict(zip(("language_model", "lm_head", "vision"), params, strict=True)),
        **configured,
    }
    trainer.accelerator.free_memory()
    del trainer, meter
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    from dpe.models.processor import load_processor
    from dpe.models.tiny import build_tiny_model
    from dpe.stages.train import training_rows
    from dpe.world import generate

    expected = {"transformers": ("5.17.", transformers.__version__), "trl": ("1.16.0", trl.__version__)}
    wrong = [f"{name} {found} (this benchmark's path was built for {want}*)" for name, (want, found) in expected.items() if not found.startswith(want)]
    if wrong:
        raise SystemExit("grpo_gpu: " + "; ".join(wrong))
    work = Path(tempfile.mkdtemp(prefix="grpo-gpu-"))
    tiny_dir = build_tiny_model("qwen2.5-vl", work / "tiny")
    processor = load_processor(tiny_dir)
    processor.tokenizer.padding_side = "left"
    if args.tiny:
        model_dir, size, image_size = tiny_dir, "tiny", 56
    else:
        processor = real_size_processor(processor)
        model_dir, size, image_size = save_real_size_model(args.size, processor.tokenizer, work / args.size), args.size, args.image_size
    records = generate(None, args.prompts * (args.warmup + args.steps), args.seed, image_size=image_size)
    row = training_rows(records[:1])[0]
    probe = dict(processor(text=[processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)], images=[row["image"]],
                           return_tensors="pt"))
    device, peak = card()
    arms = {name: run_arm(name, args, model_dir, processor, records, probe, work, peak) for name in ("trl_default", "stage")}
    speedup = arms["stage"]["completion_tokens_per_second"] / arms["trl_default"]["completion_tokens_per_second"]
    return {
        "command": "python -m benchmarks.grpo_gpu " + " ".join(shlex.quote(a) for a in args.argv),
        "date": time.strftime("%Y-%m-%d"),
        "device": device, "peak_bf16_tflops": peak, "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "python": platform.python_version(), "size": size, "image_size": image_size, "prompts_per_step": args.prompts, "generations": args.generations,
        "max_completion": args.max_completion, "mean_completion_target": args.mean_completion, "warmup_steps": args.warmup, "steps": args.steps,
        "arms": arms, "speedup": round(speedup, 2), "targets": TARGETS,
        "met": {"speedup": speedup >= TARGETS["speedup"],
                "update_mfu": arms["stage"]["update_mfu"] is not None and arms["stage"]["update_mfu"] >= TARGETS["update_mfu"]},
    }


def markdown(report: dict[str, Any]) -> str:
    """The RESULTS.md section for a report."""
    arms = report["arms"]
    rows = [
        ("whole step, mean seconds", "mean_step_seconds"), ("rollout, mean seconds", "mean_rollout_seconds"),
        ("update, mean seconds", "mean_update_seconds"), ("mean completion length", "mean_completion_length"),
        ("**completion tokens per second (whole steps)**", "completion_tokens_per_second"), ("tokens per second (whole steps)", "tokens_per_second"),
        ("update TFLOP/s", "update_tflops"), ("**update MFU**", "update_mfu"), ("peak GPU memory, GiB", "peak_memory_gib"),
        ("GPU memory held at the arm's start, GiB", "memory_held_at_start_gib"),
        ("gradient checkpointing", "gradient_checkpointing"), ("rollout", "rollout"), ("update batches by length", "group_by_length"),
    ]
    table = ["| measure | TRL's default path | the train stage |", "|---|---:|---:|"]
    table += [f"| {label} | {arms['trl_default'][key]} | {arms['stage'][key]} |" for label, key in rows]
    met = report["met"]
    return "\n".join([
        "## GRPO on one GPU: the train stage against TRL's default path",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}; device: {report['device']}; torch {report['torch']}, transformers {report['transformers']}, trl {report['trl']}.",
        f"- Qwen2.5-VL-{report['size'].upper()} shapes, random bf16 weights; {report['prompts_per_step']} prompts x {report['generations']} completions per step, "
        f"one update per step; pictures of {report['image_size']} px; completions end with probability 1/{report['mean_completion_target']} per token, "
        f"at most {report['max_completion']}; {report['warmup_steps']} warm-up steps left out, {report['steps']} measured.",
        "",
        *table,
        "",
        f"**Result.** The stage made {report['speedup']}x TRL's completion tokens per second over whole steps "
        f"(target {report['targets']['speedup']}x: {'met' if met['speedup'] else 'not met'}); its update ran at "
        f"{arms['stage']['update_mfu']} MFU (target {report['targets']['update_mfu']}: {'met' if met['update_mfu'] else 'not met'}).",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="3b")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model instead (checks the code path)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-completion", type=int, default=2048)
    parser.add_argument("--mean-completion", type=float, default=512.0)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and left out")
    parser.add_argument("--steps", type=int, default=3, help="steps measured (at least 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--from-json", type=Path, default=None, help="read a report instead of measuring")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/grpo_gpu.json and the RESULTS.md section")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    print(json.dumps(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        from benchmarks.reporting import write_json, write_section

        write_json(NAME, report)
        write_section(NAME, markdown(report))
    return report


if __name__ == "__main__":
    main()
