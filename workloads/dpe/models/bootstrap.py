"""A warmed-up tiny model with a clear profile: the random tiny VLM after a supervised pass on the world.

GRPO learns nothing from a policy whose rewards are all zero, and a random tiny model never writes
a readable answer. A supervised warm-up on the world's level-1 templates, asked in the formats a
tiny model can learn (free text and numbers; option letters stay at chance), gives it the answer
format and leaves a profile the spiral can act on:

- strong types, warmed on a full share of samples (medical, map, natural scene, diagram, mixed): they
  answer in directions and scene words;
- weak but learnable types (`LIGHT_TYPES`: geometric, chart and graph, everyday object, artistic,
  architectural), warmed on a tenth of that share: the model knows their answer words (colours,
  shapes, counts) but barely their cues, so it solves them only sometimes, which is where GRPO has a
  signal. A model this small shares its answer words across types, so the two groups answer in
  different words (but for a chart's line trend, up or down): training the weak types then does not
  overwrite what the strong ones say;
- blind types (text-dense, math formula): they need reading, which a model of this size at 56 px
  cannot do; they stay near zero and serve as controls.

`builtin:tiny-qwen2.5-vl-warm` names this model; it is built once per machine and cached under a
name carrying `WARM_RECIPE`, so a changed recipe never reuses an old build.
"""

from __future__ import annotations

import random
from pathlib import Path

from dpe.grading import solver_prompt
from dpe.models.inference import open_image
from dpe.records import SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat

WARM_RECIPE = "2"
"""Bumped whenever the warm-up below changes what it builds."""
WARM_STEPS = 600
WARM_BATCH = 16
WARM_LR = 3e-3
WARM_SEED = 4242
WARM_SAMPLES_PER_TYPE = 320
LIGHT_SHARE = 0.1
"""Share of a full type's warm-up samples that the weak-but-learnable types get."""
LIGHT_TYPES = (
    CapabilityType.geometric, CapabilityType.chart_graph, CapabilityType.everyday_object, CapabilityType.artistic, CapabilityType.architectural,
)
WARM_FORMATS = (QuestionFormat.free_text, QuestionFormat.numerical)


def warm_quotas() -> dict[CapabilityType, int]:
    """Warm-up samples per type: a full share, or `LIGHT_SHARE` of it for the light types."""
    return {t: round(WARM_SAMPLES_PER_TYPE * (LIGHT_SHARE if t in LIGHT_TYPES else 1.0)) for t in CapabilityType}


def answer_text(record: SampleRecord) -> str:
    """The completion the solver instruction asks for, with an empty reasoning block."""
    return f"<think></think>\\boxed{{{record.answer}}}"


def warm_up(model_dir: Path, records: list[SampleRecord], *, steps: int = WARM_STEPS, batch: int = WARM_BATCH, lr: float = WARM_LR, seed: int = WARM_SEED) -> None:
    """Supervised fine-tuning in place: loss on the assistant's answer tokens only."""
    import torch
    import transformers

    from dpe.models.processor import load_processor

    torch.manual_seed(seed)
    processor = load_processor(model_dir)
    processor.tokenizer.padding_side = "right"
    model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        chosen = rng.sample(records, min(batch, len(records)))
        texts, answers, images = [], [], []
        for record in chosen:
            user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": solver_prompt(record.question, record.question_format)}]}]
            prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            answers.append(answer_text(record) + "<|im_end|>")
            texts.append(prompt + answers[-1])
            images.append(open_image(record.image))
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        # The answer opens with the added token <think>, so it tokenizes alone as it does after the
        # prompt; padding is on the right, so a row's prompt is its mask sum less its answer.
        answer_lengths = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
        for row, (length, answer_length) in enumerate(zip(inputs["attention_mask"].sum(dim=1).tolist(), answer_lengths, strict=True)):
            labels[row, : length - answer_length] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(model_dir)


def build_warm_model(arch: str, out_dir: Path) -> Path:
    """The tiny model of `arch`, warmed up on level-1 world samples with the profile above."""
    from dpe.models.tiny import ARCHITECTURES, build_tiny_model, world_corpus
    from dpe.world import generate_for_quota

    build_tiny_model(arch, out_dir, corpus=world_corpus())
    image_size = ARCHITECTURES[arch].image_size
    records = list(generate_for_quota(warm_quotas(), WARM_SEED, image_size=image_size, difficulty=1, formats=WARM_FORMATS))
    warm_up(out_dir, records)
    return out_dir
