"""Processors for Qwen-family VLMs, with or without torchvision.

transformers 5 declares a video processor on every Qwen-VL processor and type-checks it even when
it is None; that check needs torchvision, which does not install beside the CPU torch wheel. The
image-only subclass below drops the video argument (transformers derives a processor's parts from
its `__init__` signature). Saved directories still name the standard class, so a machine with
torchvision loads them with `AutoProcessor` unchanged.

`bound_pixels` keeps an image's area within the training stage's pixel bounds before any processor
sees it, as the paper's trainer (EasyR1) does with its `min_pixels`/`max_pixels`; `pixel_bounds`
caps those bounds at what a Qwen processor keeps.
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template that turns an image part into vision_start, image_pad, vision_end."""

_IMAGE_ONLY_SUFFIX = "ImageOnly"


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


@cache
def image_only_processor_class(base_name: str) -> type:
    """A subclass of transformers' `base_name` processor without the video processor."""
    import transformers

    base = getattr(transformers, base_name)

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any) -> None:
        base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    return type(base_name + _IMAGE_ONLY_SUFFIX, (base,), {"__init__": __init__})


def publish_standard_processor_class(directory: Path, base_name: str) -> None:
    """Record the standard class name in the saved configs so AutoProcessor can load the directory."""
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if str(data.get("processor_class", "")).endswith(_IMAGE_ONLY_SUFFIX):
            data["processor_class"] = base_name
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _processor_class_name(directory: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            found = json.loads(path.read_text()).get("processor_class")
            if found:
                return str(found).removesuffix(_IMAGE_ONLY_SUFFIX)
    return None


def load_processor(directory: Path) -> Any:
    """The directory's processor: AutoProcessor with torchvision, the image-only shim without it."""
    import transformers

    base_name = _processor_class_name(directory)
    if torchvision_available() or base_name is None or not hasattr(transformers, base_name):
        return transformers.AutoProcessor.from_pretrained(directory)
    return image_only_processor_class(base_name).from_pretrained(directory)


def pixel_bounds(processor: Any, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) capped at the most pixels `processor` keeps of an image.

    A Qwen-VL image processor scales every image into its own pixel range (`size`'s shortest_edge
    and longest_edge are pixel counts there) after these bounds; more pixels than it keeps are only
    work thrown away. For the real Qwen-VL processors (up to 12.8 M pixels) the paper's bounds
    stand as they are; the built-in tiny models' processors keep 56^2 or 64^2 pixels, so their
    images are not blown up to 512^2 first. Other processors leave the bounds unchanged.
    """
    image_processor = getattr(processor, "image_processor", None)
    if not type(image_processor).__name__.startswith("Qwen2VLImageProcessor"):
        return min_pixels, max_pixels
    size = image_processor.size
    kept = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if not kept:
        return min_pixels, max_pixels
    high = min(max_pixels, int(kept))
    return min(min_pixels, high), high


TOKEN_SIDE = 14 * 2
"""Side in pixels of the square one visual token covers in Qwen-VL (14-px patches merged 2 x 2), for processors that do not say."""


def picture_tokens(processor: Any, width: int, height: int) -> int:
    """Visual tokens of a `width` x `height` picture for `processor`'s model, rounded up (its processor
    rounds each side to a whole number of token squares)."""
    image_processor = getattr(processor, "image_processor", None)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    side = patch * merge if isinstance(patch, int) and isinstance(merge, int) else TOKEN_SIDE
    return -(-width // side) * -(-height // side)


def bound_pixels(image: Any, min_pixels: int, max_pixels: int) -> Any:
    """`image` (a PIL image) scaled, aspect ratio kept, so that its area lies within
    [min_pixels, max_pixels]; an image already inside is returned as it is.

    The bounds act on the image itself, not on one processor's settings, so every consumer sees the
    same pixels: the trainer's processor, a vLLM rollout engine (which reads the model directory's
    processor config) and a built-in tiny model's fixed-size processor alike. A Qwen processor then
    only rounds the sides to its patch grid.
    """
    from PIL import Image

    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels})")
    width, height = image.size
    area = width * height
    if min_pixels <= area <= max_pixels:
        return image
    scale = math.sqrt((max_pixels if area > max_pixels else min_pixels) / area)
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    if area < min_pixels:
        larger = (math.ceil(width * scale), math.ceil(height * scale))
        if larger[0] * larger[1] <= max_pixels:
            size = larger
    return image.resize(size, Image.Resampling.BICUBIC)
