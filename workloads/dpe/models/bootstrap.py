"""A warmed-up tiny model: the random tiny VLM after a short supervised pass on the capability world.

GRPO learns nothing from a policy whose rewards are all zero, and a random tiny model never writes
a readable answer. A brief supervised warm-up on the world's easiest templates (the exact answer
format, and correct answers) gives it the format and a head start on coarse visual cues, while the
types that need fine detail (reading text, digits) stay blind spots, which is what the spiral is
for. `builtin:tiny-qwen2.5-vl-warm` names this model; it is built once and cached.
"""

from __future__ import annotations

import random
from pathlib import Path

from dpe.grading import solver_prompt
from dpe.models.inference import open_image
from dpe.records import SampleRecord

WARM_STEPS = 120
WARM_BATCH = 16
WARM_LR = 3e-3
WARM_SAMPLES = 960
WARM_SEED = 4242


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
        texts, prompts, images = [], [], []
        for record in chosen:
            user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": solver_prompt(record.question, record.question_format)}]}]
            prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            prompts.append(prompt)
            texts.append(prompt + answer_text(record) + "<|im_end|>")
            images.append(open_image(record.image))
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        for row, prompt in enumerate(prompts):
            prompt_length = len(processor(text=[prompt], images=[images[row]], return_tensors="pt")["input_ids"][0])
            labels[row, :prompt_length] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(model_dir)


def build_warm_model(arch: str, out_dir: Path) -> Path:
    """The tiny model of `arch`, warmed up on level-1 world samples of every type."""
    from dpe.models.tiny import build_tiny_model, world_corpus
    from dpe.world import generate

    build_tiny_model(arch, out_dir, corpus=world_corpus())
    image_size = 64 if arch == "qwen3-vl" else 56
    records = generate(None, WARM_SAMPLES, WARM_SEED, image_size=image_size, difficulties=[1])
    warm_up(out_dir, records)
    return out_dir
