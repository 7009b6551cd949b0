"""Answering questions about images with a VLM, behind one interface and two backends.

Diagnosis, scoring and evaluation only need "n answers per (image, question)". `Answerer` is
that contract; `TransformersAnswerer` runs it with batched `generate` on CPU or GPU, and
`VllmAnswerer` with vLLM where it is installed (GPU images). Tests plug in their own answerers.

Two rules hold for every backend: images whose shorter side is below the minimum are upscaled
first (small images starve the vision tower), and the vision placeholder tokens are never
generated (TRL suppresses them during GRPO, so a trained policy was never taught not to emit them).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from dpe.spec import Sampling

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class Prompt:
    """One question about one image; `text` already carries the answer-format instruction."""

    image: bytes
    text: str


class Answerer(Protocol):
    """Anything that can answer prompts n times each."""

    def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
        """For each prompt, `n` completions (sampled, or greedy when temperature is 0)."""
        ...


def open_image(data: bytes, min_side: int = 0) -> Image.Image:
    """Decode an image to RGB and upscale it so its shorter side is at least `min_side`."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    short = min(image.size)
    if 0 < short < min_side:
        scale = min_side / short
        size = (max(min_side, round(image.width * scale)), max(min_side, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class TransformersAnswerer:
    """Batched generation with transformers; the default backend and the only one on CPU."""

    def __init__(
        self,
        model_dir: Path,
        *,
        min_image_side: int = 224,
        batch_size: int = 16,
        device: str | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        import torch
        import transformers

        from dpe.models.processor import load_processor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.processor = load_processor(model_dir)
        self.processor.tokenizer.padding_side = "left"
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(self.device)
        self.model.eval()
        tokenizer = self.processor.tokenizer
        self.suppressed = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS if t in tokenizer.get_vocab()]
        self.min_image_side = min_image_side
        self.batch_size = batch_size
        self.progress = progress

    def _chat(self, text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
        import torch

        torch.manual_seed(seed)
        greedy = sampling.temperature == 0.0
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": not greedy,
            "num_return_sequences": 1 if greedy else n,
            "suppress_tokens": self.suppressed,
            "pad_token_id": self.processor.tokenizer.pad_token_id,
        }
        if not greedy:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=max(sampling.top_k, 0) or None)
        answers: list[list[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            inputs = self.processor(
                text=[self._chat(p.text) for p in batch],
                images=[open_image(p.image, self.min_image_side) for p in batch],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **options)
            texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            per_prompt = len(texts) // len(batch)
            for i in range(len(batch)):
                group = texts[i * per_prompt : (i + 1) * per_prompt]
                answers.append(group * n if greedy else group)
            if self.progress is not None:
                self.progress(len(batch))
        return answers


class VllmAnswerer:
    """vLLM generation for GPU images; imported only where vLLM is installed."""

    def __init__(self, model_dir: Path, *, min_image_side: int = 224, gpu_memory_utilization: float = 0.85):
        if not vllm_available():
            raise RuntimeError("the vLLM backend needs the vllm package (install the gpu extra in a CUDA image)")
        from vllm import LLM

        self.llm = LLM(model=str(model_dir), gpu_memory_utilization=gpu_memory_utilization, limit_mm_per_prompt={"image": 1})
        self.tokenizer = self.llm.get_tokenizer()
        self.min_image_side = min_image_side

    def answer(self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seed: int = 0) -> list[list[str]]:
        from vllm import SamplingParams

        greedy = sampling.temperature == 0.0
        params = SamplingParams(
            n=1 if greedy else n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=seed,
        )
        requests = []
        for prompt in prompts:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            requests.append({"prompt": text, "multi_modal_data": {"image": open_image(prompt.image, self.min_image_side)}})
        outputs = self.llm.generate(requests, params)
        return [[c.text for c in o.outputs] * (n if greedy else 1) for o in outputs]


def open_answerer(model_dir: Path, *, backend: str = "auto", min_image_side: int = 224, **options: Any) -> Answerer:
    """The best available backend: vLLM on a GPU machine that has it, transformers otherwise."""
    if backend == "vllm" or (backend == "auto" and vllm_available() and _cuda()):
        return VllmAnswerer(model_dir, min_image_side=min_image_side)
    if backend not in {"auto", "transformers"}:
        raise ValueError(f"unknown inference backend '{backend}'; use auto, transformers or vllm")
    return TransformersAnswerer(model_dir, min_image_side=min_image_side, **options)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
