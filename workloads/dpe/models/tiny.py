"""Tiny Qwen-family vision-language models built from a config, with an offline tokenizer.

No weights or tokenizer files are downloaded: a byte-level BPE is trained on a small corpus (the
capability world's questions and answers by default), the Qwen special tokens are appended after
it as the real Qwen vocabularies do, and a random-initialised Qwen2.5-VL or Qwen3-VL of about
0.2 M parameters is saved as an ordinary Hugging Face directory. It loads like any other VLM
directory, trains with TRL on CPU in a fraction of a second per step, and is what the tests and the
quickstart evolve.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpe.models.processor import CHAT_TEMPLATE, image_only_processor_class

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen's control tokens, in Qwen's order, placed after the BPE vocabulary."""

REASONING_TOKENS = ("<think>", "</think>")
"""Added as whole tokens so the answer format costs two tokens, not a dozen."""

# Qwen2's pre-tokenizer split (digits one at a time, letters, punctuation runs, spaces).
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BASE_CORPUS = (
    "A B C D E F\nA. B. C. D.\n(A) (B) (C) (D)\n0 1 2 3 4 5 6 7 8 9 10 11 12\n"
    "yes\nno\ntrue\nfalse\nred\ngreen\nblue\nyellow\norange\npurple\nblack\nwhite\ngray\nbrown\npink\n"
    "left\nright\nup\ndown\nabove\nbelow\ntop\nbottom\nnorth\nsouth\neast\nwest\nday\nnight\n"
    "<think>The answer is</think>\\boxed{A}\n\\boxed{B}\n\\boxed{C}\n\\boxed{D}\n\\boxed{yes}\n\\boxed{no}\n"
    "Please reason step by step and put the final answer in \\boxed{}.\n"
    "What is the color of the shape? How many objects are there? Which option is correct?\n"
)


@dataclass(frozen=True)
class Architecture:
    """What differs between the supported tiny families."""

    name: str
    model_class: str
    config_class: str
    processor_base: str
    patch_size: int
    image_size: int


ARCHITECTURES = {
    "qwen2.5-vl": Architecture(
        "qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", 14, 56
    ),
    "qwen3-vl": Architecture("qwen3-vl", "Qwen3VLForConditionalGeneration", "Qwen3VLConfig", "Qwen3VLProcessor", 16, 64),
}

HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS


def world_corpus(count: int = 480, seed: int = 0) -> list[str]:
    """Questions and answers of the capability world, so the tokenizer covers their words."""
    from dpe.world import generate

    return [f"{r.question}\n{r.answer}\n{r.answer_text}" for r in generate(None, count, seed, image_size=56)]


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> Any:
    """A Qwen2-style byte-level BPE trained on `corpus` plus the base corpus, with Qwen's specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    texts = [BASE_CORPUS, *corpus]
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts * 3, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    tokenizer.add_tokens(list(REASONING_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(arch: Architecture, tokenizer: Any) -> Any:
    import transformers

    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    common_vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": HIDDEN,
        "patch_size": arch.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if arch.name == "qwen2.5-vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision = {**common_vision, "window_size": 2 * arch.image_size, "fullatt_block_indexes": [0]}
    else:
        text["head_dim"] = HEAD_DIM
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        }
        vision = {**common_vision, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    config_class = getattr(transformers, arch.config_class)
    return config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny_model(
    arch_name: str, out_dir: Path, *, corpus: Iterable[str] = (), seed: int = 0, vocab_size: int = 1024
) -> Path:
    """Build, randomly initialise and save a tiny VLM with its processor; return the directory."""
    import torch
    import transformers

    if arch_name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch_name}'; choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[arch_name]
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size)
    config = _config(arch, tokenizer)
    model = getattr(transformers, arch.model_class)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    image_processor = transformers.Qwen2VLImageProcessorPil(
        patch_size=arch.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=arch.image_size**2,
        max_pixels=arch.image_size**2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = image_only_processor_class(arch.processor_base)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    from dpe.models.processor import publish_standard_processor_class

    publish_standard_processor_class(out_dir, arch.processor_base)
    return out_dir
