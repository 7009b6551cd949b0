"""A warmed-up tiny model with a clear profile: the random tiny VLM after a supervised pass on the world.

GRPO learns nothing from a policy whose rewards are all zero, and a random tiny model never writes
a readable answer. The warm-up gives it the answer format and a profile the spiral can act on, in
two supervised phases on the world's level-1 templates, asked in the formats a tiny model can learn
(free text and numbers; option letters stay at chance):

1. every type on a full share of samples, until the learnable types are near what this model can
   reach (`WARM_STEPS`);
2. a short pass (`BLUR_STEPS`) in which the answers of the `BLURRED_TYPES` are shuffled among
   questions of the same template, while the other types keep their true answers. Their cues are
   still in the model's features, but its answers to them become uncertain.

That leaves, measured on held-out items with greedy answers:

- strong types (natural scene, geometric, most often architectural): near their ceiling;
- weak but learnable types (`BLURRED_TYPES`: artistic, map, medical, mixed): about chance, while the
  correct answer keeps a good share of the sampled ones. Their samples fall in the pass-rate window,
  and GRPO restores them within an iteration, as RL draws out what a real model half knows;
- weak and hard types (chart and graph, everyday object, diagram): a tiny model at 56 px reaches
  only about 0.4-0.6 on them, and GRPO moves them little;
- blind types (text-dense, math formula): they need reading, which a model of this size cannot do;
  they stay near zero and serve as controls.

A shorter warm-up with a small share for the weak types leaves them collapsed on one answer instead:
none of their samples reach the pass-rate window and GRPO has nothing to work on.

`builtin:tiny-qwen2.5-vl-warm` names this model; it is built once per machine and cached under a
name carrying `WARM_RECIPE`, so a changed recipe never reuses an old build.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from dpe.grading import solver_prompt
from dpe.models.inference import open_image
from dpe.records import SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat

WARM_RECIPE = "3"
"""Bumped whenever the warm-up below changes what it builds."""
WARM_STEPS = 1500
BLUR_STEPS = 100
WARM_BATCH = 16
WARM_LR = 3e-3
WARM_SEED = 4242
BLUR_SEED = 4343
WARM_SAMPLES_PER_TYPE = 320
BLUR_SAMPLES_PER_TYPE = 160
BLURRED_TYPES = (CapabilityType.artistic, CapabilityType.map, CapabilityType.medical, CapabilityType.mixed)
"""Types whose answers the second phase blurs: the weak but learnable types of the quickstart's M0."""
WARM_FORMATS = (QuestionFormat.free_text, QuestionFormat.numerical)


def blurred(records: Iterable[SampleRecord], types: Iterable[CapabilityType], seed: int) -> list[SampleRecord]:
    """`records` with the answers of `types` shuffled among records of the same type, template and format.

    Each group keeps its multiset of answers, so the model is taught the type's answer words with no
    tie to the picture; records of the other types are returned as they are, in order.
    """
    chosen = set(types)
    rng = random.Random(seed)
    kept: list[SampleRecord] = []
    groups: dict[tuple[CapabilityType, str, QuestionFormat], list[SampleRecord]] = defaultdict(list)
    for record in records:
        if record.capability_type in chosen:
            groups[(record.capability_type, str(record.provenance.get("template")), record.question_format)].append(record)
        else:
            kept.append(record)
    for members in groups.values():
        answers = [r.answer for r in members]
        rng.shuffle(answers)
        kept += [r.model_copy(update={"answer": answer}) for r, answer in zip(members, answers, strict=True)]
    return kept


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
    full = {t: WARM_SAMPLES_PER_TYPE for t in CapabilityType}
    warm_up(out_dir, list(generate_for_quota(full, WARM_SEED, image_size=image_size, difficulty=1, formats=WARM_FORMATS)))
    blur = {t: BLUR_SAMPLES_PER_TYPE for t in CapabilityType}
    records = generate_for_quota(blur, BLUR_SEED, image_size=image_size, difficulty=1, formats=WARM_FORMATS)
    warm_up(out_dir, blurred(records, BLURRED_TYPES, BLUR_SEED), steps=BLUR_STEPS, seed=BLUR_SEED)
    return out_dir
