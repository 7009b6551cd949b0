"""Group rollouts for GRPO: each prompt's vision encoder and prefill run once, its completions decode
over a static KV cache.

GRPO samples `num_generations` completions of every prompt. TRL's default rollout repeats each prompt
that many times and calls Hugging Face `generate` on the padded batch, so the vision encoder and the
prompt's prefill run once per completion, and every decode step runs eagerly over a cache that grows
(TRL turns generation's compilation off). `GroupRollout` keeps TRL's inputs, sampling settings and
outputs, and changes how they are computed:

1. rows of the batch that hold the same prompt and the same picture form a group (TRL repeats each
   prompt in consecutive rows);
2. one row per group is prefilled, all prompt tokens but the last, vision encoder included;
3. that cache is copied into a static one, each row repeated as often as its group, sized to the
   prompt plus `max_new_tokens` (rounded up to `CACHE_LENGTH_STEP`, never shrinking, so one compiled
   decode step serves every rollout of the run); when the whole batch's cache would pass the
   rollout's memory budget, the groups are generated in equal chunks that fit;
4. `generate` goes on from there: it reads the last prompt token of every row, then decodes. With a
   static cache on a GPU, `generate` compiles the decode step (`torch.compile`, "reduce-overhead": CUDA
   graphs); on a CPU it runs eagerly.

The model's 3-D rotary positions (Qwen-VL's `rope_deltas`, one per row) are repeated with the rows
for the decode and cleared afterwards, so a training forward pass recomputes its own.

`dpe.stages.fast_trainer` plugs this into TRL's `GRPOTrainer`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

CACHE_LENGTH_STEP = 256
"""Static caches are sized in steps of this many tokens (see the module docstring)."""

PER_IMAGE_FIELDS = ("pixel_values", "image_grid_thw")
"""Fields `generate` takes for the pictures; the prefill reads them, the decode needs them no more."""

Row = TypeVar("Row")


def consecutive_groups(rows: Sequence[Row], same: Callable[[Row, Row], bool]) -> list[int]:
    """Sizes of the runs of consecutive rows that are `same` as the run's first row, in order."""
    sizes: list[int] = []
    first: Row | None = None
    for row in rows:
        if sizes and same(first, row):  # type: ignore[arg-type]
            sizes[-1] += 1
        else:
            sizes.append(1)
            first = row
    return sizes


def cache_length(needed: int, previous: int = 0) -> int:
    """Tokens a static cache holds for `needed`: rounded up to the step, and never less than before."""
    return max(-(-needed // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP, previous)


def groups_per_chunk(groups: int, fit: int) -> int:
    """Groups generated together: the largest divisor of `groups` that is at most `fit` (at least 1), so
    every chunk has as many rows and one cache and one compiled decode step serve them all."""
    for size in range(max(min(fit, groups), 1), 0, -1):
        if groups % size == 0:
            return size
    return 1


def kv_bytes_per_token(config: Any, element_size: int) -> int:
    """Bytes a static cache holds per row and token: keys and values of every layer."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * element_size


def row_pictures(inputs: dict[str, Any]) -> list[Any] | None:
    """Each row's pixel patches, when the batch has exactly one picture per row; [] for text only;
    None when rows hold several pictures (or videos), which the grouping does not split."""
    if any(key.endswith("_videos") or key == "video_grid_thw" for key in inputs):
        return None
    if "pixel_values" not in inputs:
        return []
    grids = inputs.get("image_grid_thw")
    rows = inputs["input_ids"].shape[0]
    if grids is None or grids.shape[0] != rows:
        return None
    return list(inputs["pixel_values"].split(grids.prod(-1).tolist()))


def _same_prompt(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    import torch

    (ids_a, pixels_a), (ids_b, pixels_b) = a, b
    if not torch.equal(ids_a, ids_b):
        return False
    return pixels_a is None and pixels_b is None or pixels_a is not None and pixels_b is not None and torch.equal(pixels_a, pixels_b)


class GroupRollout:
    """Rollouts that prefill each distinct prompt once and decode over a static KV cache."""

    def __init__(self, *, compile_decode: bool, cache_budget_bytes: int | None = None) -> None:
        self.compile_decode = compile_decode
        """Let `generate` compile the decode step (it does so on GPUs only)."""
        self.cache_budget_bytes = cache_budget_bytes
        """Most bytes the static cache may hold (None: no limit); larger batches go in chunks of groups."""
        self.cache: Any = None
        self.cache_rows = 0
        self.cache_tokens = 0

    def _static_cache(self, model: Any, rows: int, tokens: int) -> Any:
        """A static cache of `rows` x at least `tokens`, the previous one emptied when it fits (the compiled
        decode step keeps working on the same buffers)."""
        from transformers import StaticCache

        if self.cache is not None and self.cache_rows == rows and self.cache_tokens >= tokens:
            self.cache.reset()
            return self.cache
        self.cache_tokens = cache_length(tokens, self.cache_tokens)
        self.cache_rows = rows
        self.cache = StaticCache(config=model.config, max_cache_len=self.cache_tokens)
        return self.cache

    def generate(self, model: Any, generation_config: Any, inputs: dict[str, Any], decode: Callable[..., Any] | None = None) -> Any:
        """Prompt and completion ids of every row, as `model.generate(**inputs, generation_config=...)`
        returns them (see the module docstring for how they are computed; chunks that end sooner are
        padded on the right). `decode` is the `generate` that goes on from the prefilled cache (the
        model's own by default); a batch whose rows hold several pictures goes to it whole."""
        import torch

        decode = decode or model.generate
        pictures = row_pictures(inputs)
        if pictures is None:
            return decode(**inputs, generation_config=generation_config)
        ids = inputs["input_ids"]
        rows, length = ids.shape
        sizes = consecutive_groups(list(zip(ids.cpu(), pictures or [None] * rows, strict=True)), _same_prompt)
        config = copy.deepcopy(generation_config)
        config.disable_compile = not self.compile_decode
        config.cache_implementation = None
        tokens = length + config.max_new_tokens
        fit = len(sizes)
        if self.cache_budget_bytes is not None:
            per_group = max(sizes) * cache_length(tokens, self.cache_tokens) * kv_bytes_per_token(model.config, model.dtype.itemsize)
            fit = max(self.cache_budget_bytes // per_group, 1)
        step = groups_per_chunk(len(sizes), fit)
        outputs, start = [], 0
        for first in range(0, len(sizes), step):
            part = sizes[first : first + step]
            end = start + sum(part)
            # One picture per row here, so the picture grids are per row too.
            chunk = {k: v[start:end] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == rows else v for k, v in inputs.items() if k != "pixel_values"}
            outputs.append(self._generate_groups(model, config, chunk, pictures[start:end] if pictures else [], part, decode))
            start = end
        width = max(out.shape[1] for out in outputs)
        return torch.cat([torch.nn.functional.pad(out, (0, width - out.shape[1]), value=config.pad_token_id) for out in outputs])

    def _generate_groups(self, model: Any, config: Any, inputs: dict[str, Any], pictures: list[Any], sizes: list[int], decode: Callable[..., Any]) -> Any:
        """One chunk: its groups' prompts prefilled once, the cache repeated per row, then `decode`."""
        import torch
        from transformers import DynamicCache

        ids = inputs["input_ids"]
        rows, length = ids.shape
        firsts = torch.tensor([0, *sizes[:-1]], device=ids.device).cumsum(0)
        repeats = torch.tensor(sizes, device=ids.device)
        per_row = {k: v for k, v in inputs.items() if k not in PER_IMAGE_FIELDS and torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == rows}
        prefill = {k: v[firsts, :-1] if v.dim() > 1 and v.shape[1] == length else v[firsts] for k, v in per_row.items()}
        if pictures:
            prefill["pixel_values"] = torch.cat([pictures[int(i)] for i in firsts])
            prefill["image_grid_thw"] = inputs["image_grid_thw"][firsts]
        base = getattr(model, "model", model)
        with torch.no_grad():
            # Positions from an earlier forward pass must not leak into this prefill's.
            if hasattr(base, "rope_deltas"):
                base.rope_deltas = None
            prompt_cache = DynamicCache(config=model.config)
            model(**prefill, past_key_values=prompt_cache, use_cache=True, logits_to_keep=1)
            static = self._static_cache(model, rows, length + config.max_new_tokens)
            positions = torch.arange(length - 1, device=ids.device)
            for index, layer in enumerate(prompt_cache.layers):
                static.update(layer.keys.repeat_interleave(repeats, 0), layer.values.repeat_interleave(repeats, 0), index, {"cache_position": positions})
            del prompt_cache
            deltas = getattr(base, "rope_deltas", None)
            try:
                if deltas is not None:
                    base.rope_deltas = deltas.repeat_interleave(repeats, 0)
                return decode(**per_row, past_key_values=static, generation_config=config)
            finally:
                if deltas is not None:
                    base.rope_deltas = None
