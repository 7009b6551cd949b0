"""The train stage: GRPO (TRL's GRPOTrainer) on the kept samples, from M(k-1) to M(k).

How the spec's settings become a GRPOConfig (micro-batches with gradient accumulation, the dual
clip, the order prompts are drawn in) is `dpe.stages.grpo_config`. Before training, every image is
scaled into the spec's pixel bounds (the paper's 512^2 to 2048^2, capped at what the model's Qwen
processor keeps: `dpe.models.processor.pixel_bounds`, `bound_pixels`), and with
`freeze_vision_tower` the vision encoder is frozen before the optimiser is built.

The rewards read the same grading module and the same answer format the prompt asks for. The
accuracy term reads the answer only where the prompt says it goes: the last `\\boxed{}` after the
reasoning (after the last `</think>`; anywhere when the completion has no think tags; nowhere when a
`<think>` is never closed). A bare "B", "The answer is B" or an option's text in the box, where the
prompt asked for the letter, earns no accuracy. The format term rewards only the shape the prompt
asks for, so every completion can earn it.

Checkpoints go to the store every `checkpoint_every_steps`, each marked complete by a list of its
files and their SHA-256; a crashed stage resumes from the newest complete one whose files all verify
(an earlier one when the newest lost or damaged a file) and continues the step counter. The final
model is an ordinary Hugging Face directory in the store.

Under torchrun (several GPUs or nodes) rank 0 alone writes the result, the metrics and the exported
model; at every checkpoint each node uploads the files its ranks wrote (each rank's RNG state and
ZeRO shards, as well as rank 0's model and optimizer) before rank 0 marks it complete, and a resumed
stage downloads the checkpoint once per node.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpe.grading import GradeMethod, format_score, grade_extracted, solver_prompt
from dpe.grading.cleaning import last_boxed
from dpe.records import SampleRecord, read_records
from dpe.spec import RolloutBackend, StageName, TrainSettings
from dpe.stages.context import StageContext
from dpe.stages.grpo_config import (
    ROLLOUT_CACHE_SHARE,
    ModelShape,
    batching,
    compile_decode,
    freeze_vision_tower,
    grpo_config,
    group_by_length,
    needs_gradient_checkpointing,
    rollout_backend,
)
from dpe.stages.fast_trainer import fast_grpo_trainer
from dpe.stages.rollout import GroupRollout
from dpe.store import IntegrityError, NotFound, tree

__all__ = ["accuracy_reward", "boxed_answer", "format_reward", "grpo_config", "grpo_trainer", "run", "training_dataset", "training_rows"]

COMPLETE_MARKER = "complete.json"
_THINK_OPEN = re.compile(r"<\s*think\s*>")
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>")


def boxed_answer(completion: str) -> str | None:
    """The answer where the solver instruction puts it: the content of the last `\\boxed{}` after the
    last `</think>` (anywhere when there are no think tags), or None.

    A box inside the reasoning is a draft, and a completion whose `<think>` is never closed has not
    given its answer. Answer lines ("The answer is B") and a bare letter are not read at all.
    """
    closes = list(_THINK_CLOSE.finditer(completion))
    if closes:
        return last_boxed(completion[closes[-1].end() :])
    if _THINK_OPEN.search(completion):
        return None
    return last_boxed(completion)


def accuracy_reward(completions: list[Any], answer: list[str], question_format: list[str], options: list[list[str]], **_: Any) -> list[float]:
    """1 for a correct final answer in the place and form the prompt asks for, else 0.

    The answer is read only from the box (`boxed_answer`) and graded by the rules; for a
    multiple-choice question the box must name the option's letter, as the prompt asks: an option's
    text that grading would map to its letter earns 0.
    """
    from dpe.taxonomy import QuestionFormat

    rewards = []
    for completion, gold, fmt, opts in zip(completions, answer, question_format, options, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else str(completion)
        boxed = boxed_answer(text)
        verdict = grade_extracted(boxed, gold, QuestionFormat(fmt), opts or None) if boxed is not None else None
        asked = verdict is not None and verdict.correct and verdict.method is not GradeMethod.choice_text
        rewards.append(1.0 if asked else 0.0)
    return rewards


def format_reward(completions: list[Any], **_: Any) -> list[float]:
    """1 when the completion is exactly a <think> block then one \\boxed{} answer, as instructed."""
    return [format_score(c[0]["content"] if isinstance(c, list) else str(c)) for c in completions]


def training_rows(records: list[SampleRecord], *, pixel_bounds: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """TRL rows: a conversational prompt, the image (scaled into `pixel_bounds`, min and max pixels,
    when given), and the columns the rewards read."""
    from PIL import Image

    from dpe.models.processor import bound_pixels

    rows = []
    for record in records:
        image = Image.open(io.BytesIO(record.image)).convert("RGB")
        rows.append(
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": solver_prompt(record.question, record.question_format)}]}],
                "image": bound_pixels(image, *pixel_bounds) if pixel_bounds else image,
                "answer": record.answer,
                "question_format": record.question_format.value,
                "options": list(record.options),
                "capability_type": record.capability_type.value,
            }
        )
    return rows


def training_dataset(rows: list[dict[str, Any]]) -> Any:
    """A datasets.Dataset of `rows` whose images stay decoded in memory.

    TRL's sampler hands every micro-batch the whole rollout's rows again (it generates on the first
    and reuses the completions), so with many micro-batches per rollout the rows are read many
    times: an image column stored as PNG would be decoded on every read. The stored column is an
    index into the decoded images instead, and a transform puts the image back on each read.
    """
    from datasets import Dataset

    images = [row["image"] for row in rows]
    dataset = Dataset.from_list([{**{k: v for k, v in row.items() if k != "image"}, "image_index": i} for i, row in enumerate(rows)])

    def with_images(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {**batch, "image": [images[i] for i in batch["image_index"]]}

    dataset.set_transform(with_images)
    return dataset


def _upload_dir(ctx: StageContext, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            ctx.store.put_file(ctx.key(prefix, path.relative_to(local).as_posix()), path)


def _checkpoints(ctx: StageContext) -> list[str]:
    """The checkpoints marked complete in the store, newest first."""
    steps = []
    for key in ctx.store.list(ctx.key("checkpoints") + "/"):
        if key.endswith("/" + COMPLETE_MARKER):
            name = key.rsplit("/", 2)[-2]
            steps.append((int(name.removeprefix("checkpoint-")), name))
    return [name for _, name in sorted(steps, reverse=True)]


def _listed_files(ctx: StageContext, prefix: str) -> dict[str, str]:
    """The files a checkpoint's marker lists, with their SHA-256; ValueError for a marker that lists none."""
    try:
        marker = json.loads(ctx.store.get_bytes(prefix + COMPLETE_MARKER))
        files = marker["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"its {COMPLETE_MARKER} does not list the checkpoint's files") from None
    if not isinstance(files, dict) or not files or not all(isinstance(n, str) and isinstance(s, str) for n, s in files.items()):
        raise ValueError(f"its {COMPLETE_MARKER} does not list the checkpoint's files as name: SHA-256")
    return files


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (one process without torchrun)."""

    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Ranks:
        return cls(int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the stage's result, its metrics and the exported model."""
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """Local rank 0 of each node (pod) uploads the checkpoint files the node's ranks wrote."""
        return self.local_rank == 0

    def not_main(self, iteration: int) -> dict[str, Any]:
        """What a rank other than 0 reports instead of the stage's result."""
        return {"stage": StageName.train.value, "iteration": iteration, "rank": self.rank, "result": "written by rank 0"}


def _barrier() -> None:
    """Wait for every rank, when there are several."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _resume_checkpoint(ctx: StageContext, output_dir: Path) -> tuple[str, Path] | None:
    """The newest checkpoint whose files are all in the store and match their SHA-256, downloaded into
    `output_dir` once per node (dpe.store.tree); one with a file missing, truncated or corrupt is
    logged and the one before it tried. Every rank comes to the same checkpoint.

    It holds the files of every rank (model and optimizer from rank 0, each rank's RNG state, each
    rank's ZeRO shards), so each rank resumes from its own state.
    """
    for name in _checkpoints(ctx):
        prefix = ctx.key("checkpoints", name) + "/"
        try:
            files = _listed_files(ctx, prefix)
            return name, tree.mirror(ctx.store, prefix, files, output_dir / name, output_dir / f".{name}.checked.json")
        except (IntegrityError, NotFound, ValueError) as error:
            ctx.log.warning(json.dumps({"event": "checkpoint_skipped", "checkpoint": name, "reason": str(error)}))
    return None


def _callbacks(ctx: StageContext, metrics: list[dict[str, Any]], ranks: Ranks) -> list[Any]:
    from transformers import TrainerCallback

    class StoreCallback(TrainerCallback):  # type: ignore[misc]
        """Per-step metrics, and every saved checkpoint mirrored to the store (marker last)."""

        def __init__(self) -> None:
            self.step_started = time.monotonic()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_started = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs and "reward" not in logs:
                return
            seconds = time.monotonic() - self.step_started
            entry = {"step": state.global_step, "step_seconds": round(seconds, 4), **{k: v for k, v in logs.items() if isinstance(v, int | float)}}
            tokens = logs.get("completions/mean_length")
            if tokens is not None and seconds > 0:
                sequences = args.per_device_train_batch_size * args.gradient_accumulation_steps
                entry["completion_tokens_per_second"] = round(float(tokens) * sequences / seconds, 2)
            metrics.append(entry)
            ctx.log.info(json.dumps({"event": "train_step", **entry}))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Every node uploads what its ranks wrote, then rank 0 marks the checkpoint complete,
            listing its files and their SHA-256 (a step saved again, after a resume from an earlier
            checkpoint, first loses what an earlier attempt stored under it)."""
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            prefix = ctx.key("checkpoints", name) + "/"
            if ranks.is_main:
                ctx.store.delete_prefix(prefix)
            _barrier()
            if ranks.is_node_main and local.is_dir():
                _upload_dir(ctx, local, f"checkpoints/{name}")
            _barrier()
            if ranks.is_main:
                # The metrics up to this step first: a resume from this checkpoint continues them.
                ctx.store.put_bytes(ctx.key("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in metrics).encode())
                files = {key[len(prefix) :]: ctx.store.checksum(key) for key in ctx.store.list(prefix)}
                ctx.store.put_json(prefix + COMPLETE_MARKER, {"step": state.global_step, "files": files})

    return [StoreCallback()]


def _export(ctx: StageContext, model_dir: Path, target: Path, processor: Any) -> str:
    from dpe.models.processor import publish_standard_processor_class

    processor.save_pretrained(target)
    base = json.loads((model_dir / "processor_config.json").read_text()).get("processor_class") if (model_dir / "processor_config.json").is_file() else None
    if base:
        publish_standard_processor_class(target, base)
    _upload_dir(ctx, target, "model")
    return ctx.uri(ctx.key("model"))


def grpo_trainer(
    model_dir: Path, records: list[SampleRecord], settings: TrainSettings, processor: Any, config: Any, callbacks: list[Any] | None = None
) -> tuple[Any, int | None]:
    """TRL's GRPOTrainer as this stage trains (`FastGRPOTrainer`): its rewards, its rows (images scaled into
    the settings' pixel bounds), its rollout backend and update batches, the vision encoder frozen when
    the settings ask, and on a GPU with `gradient_checkpointing` unset, checkpointing only where the
    update would not fit without it. Returns the trainer and the parameters frozen (None when nothing
    was frozen)."""
    from dpe.models.processor import picture_tokens, pixel_bounds

    cpu = bool(config.use_cpu)
    static = rollout_backend(settings, cpu=cpu) is RolloutBackend.static_cache
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device_bytes = None
    if not cpu:
        import torch

        device_bytes = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory

    # TRL re-tokenizes prompts for the loss with the processor's own padding side; generation pads
    # on the left, so the two only line up (image tokens included) when the processor does too.
    processor.tokenizer.padding_side = "left"
    bounds = pixel_bounds(processor, settings.min_pixels, settings.max_pixels)
    rows = training_rows(records, pixel_bounds=bounds)
    rollout = None
    if static:
        budget = None if device_bytes is None else int(ROLLOUT_CACHE_SHARE * device_bytes)
        rollout = GroupRollout(compile_decode=compile_decode(settings, cpu=cpu, world_size=world_size), cache_budget_bytes=budget)
    trainer = fast_grpo_trainer()(
        model=str(model_dir),
        reward_funcs=[accuracy_reward, format_reward],
        args=config,
        train_dataset=training_dataset(rows),
        processing_class=processor,
        callbacks=callbacks,
        group_rollout=rollout,
        group_by_length=group_by_length(settings, cpu=cpu),
    )
    frozen = freeze_vision_tower(trainer.model) if settings.freeze_vision_tower else None
    if settings.gradient_checkpointing is None and device_bytes is not None:
        # The Trainer turns checkpointing on when training starts, so the measured model decides it here.
        config.gradient_checkpointing = needs_gradient_checkpointing(
            ModelShape.of(trainer.model), settings, micro_batch=config.per_device_train_batch_size,
            picture_tokens=max(picture_tokens(processor, *row["image"].size) for row in rows), world_size=world_size,
            device_bytes=device_bytes, rollout_cache=static,
        )
    return trainer, frozen


def run(ctx: StageContext, *, work_dir: Path | None = None) -> dict[str, Any]:
    """Train M(k) from M(k-1) on this iteration's training set."""
    if ctx.complete():
        return dict(ctx.store.get_json(ctx.result_key))
    import torch

    from dpe.models.processor import load_processor, pixel_bounds

    settings = ctx.run.spec.train
    records = read_records(ctx.store.get_bytes(ctx.stage_key(StageName.score, "train.parquet"))).records
    model_dir = ctx.model_dir(ctx.model_uri)
    work = work_dir or ctx.cache_dir / "train" / f"{ctx.namespace}-{ctx.name}-{ctx.iteration}"
    work.mkdir(parents=True, exist_ok=True)
    processor = load_processor(model_dir)
    ranks = Ranks.from_environment(os.environ)
    if not records:
        if not ranks.is_main:
            return ranks.not_main(ctx.iteration)
        exported = _export(ctx, model_dir, _copy_model(model_dir, work / "final"), processor)
        return ctx.finish({"model_uri": exported, "skipped": "no training samples", "steps": 0, "gpu_hours": 0.0})

    cpu = not torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = grpo_config(settings, work / "checkpoints", cpu=cpu, world_size=world_size)
    plan = batching(settings, world_size)
    bounds = pixel_bounds(processor, settings.min_pixels, settings.max_pixels)
    ctx.log.info(json.dumps({"event": "train_plan", "world_size": plan.world_size, "micro_batch": plan.micro_batch,
                             "accumulation": plan.accumulation, "updates_per_step": plan.updates_per_step,
                             "sequences_per_update": plan.sequences_per_update, "sequences_per_step": plan.sequences_per_step,
                             "min_pixels": bounds[0], "max_pixels": bounds[1]}))
    found = _resume_checkpoint(ctx, work / "checkpoints")
    resume, resume_path = (found[0], str(found[1])) if found else (None, None)
    metrics: list[dict[str, Any]] = []
    if resume:
        key = ctx.key("metrics.jsonl")
        if ctx.store.exists(key):
            resumed_step = int(resume.rsplit("-", 1)[1])
            # Steps past the checkpoint are trained again, so their earlier metrics are dropped.
            metrics = [m for line in ctx.store.get_bytes(key).decode().splitlines() if line and (m := json.loads(line))["step"] <= resumed_step]
    trainer, frozen = grpo_trainer(model_dir, records, settings, processor, config, _callbacks(ctx, metrics, ranks))
    if frozen is not None:
        ctx.log.info(json.dumps({"event": "vision_tower_frozen", "parameters": frozen}))
    ctx.log.info(json.dumps({"event": "train_path", "rollout_backend": rollout_backend(settings, cpu=cpu).value,
                             "group_by_length": trainer.group_by_length,
                             "gradient_checkpointing": bool(config.gradient_checkpointing),
                             "optimizer": str(getattr(config.optim, "value", config.optim))}))
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_path)
    seconds = time.monotonic() - started
    final = work / "final"
    trainer.save_model(str(final))
    if not ranks.is_main:
        return ranks.not_main(ctx.iteration)
    exported = _export(ctx, model_dir, final, processor)
    ctx.store.put_bytes(ctx.key("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in metrics).encode())
    gpus = 0 if cpu else settings.nodes * settings.gpus_per_node
    rewards = [m["reward"] for m in metrics if "reward" in m]
    return ctx.finish(
        {
            "model_uri": exported,
            "steps": trainer.state.global_step,
            "resumed_from": resume,
            "samples": len(records),
            "seconds": round(seconds, 2),
            "gpu_hours": round(gpus * seconds / 3600, 4),
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "reward_mean": sum(rewards) / len(rewards) if rewards else None,
            "metrics": metrics[-50:],
            "artifacts": {"model": exported, "metrics": ctx.uri(ctx.key("metrics.jsonl"))},
        }
    )


def _copy_model(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target
