"""Update batches without padding work: rows of similar length together, each chunk cut to its own
longest row.

A GRPO rollout's sequences are padded to the longest prompt on the left and the longest completion
on the right, over the whole rollout, and TRL's forward passes (the loss's, the old policy's and
the reference model's log-probabilities) run over that full width: with completions of a few hundred
tokens and one of 4,096, nearly all of the work is padding. Two pure steps remove it without
changing what is computed:

- within each optimiser update, rows are ordered by length before they are cut into micro-batches
  (`length_sorted_blocks`), so a micro-batch holds rows of similar length; which rows make up an
  update is left as TRL drew it, so the update's gradient is the same sum;
- each chunk of a forward pass keeps only the columns where some row of the chunk has a real token
  (`real_columns`); a dropped column is masked out of attention and of the loss in every row.

Unlike packing, rows stay rows, so any attention implementation and the model's own position ids
work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def length_sorted_blocks(lengths: Sequence[int], block: int) -> list[int]:
    """A permutation of the rows that orders them by length (shortest first, ties in their order)
    within each run of `block` consecutive rows; a row never leaves its run."""
    order: list[int] = []
    for start in range(0, len(lengths), max(block, 1)):
        rows = range(start, min(start + max(block, 1), len(lengths)))
        order.extend(sorted(rows, key=lambda row: lengths[row]))
    return order


def permuted(batch: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """`batch` with every per-row entry (a tensor or a list as long as the batch) in `order`; scalars
    and None as they are."""
    import torch

    index = torch.tensor(list(order), dtype=torch.long)

    def permute(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            return value[index.to(value.device)]
        if isinstance(value, list):
            return [value[i] for i in order]
        return value

    return {key: permute(value) for key, value in batch.items()}


def real_columns(attention_mask: Any, keep_from: int) -> tuple[int, int]:
    """The columns [first, end) of `attention_mask` (rows x columns) outside of which every row is
    padding, widened to keep column `keep_from` (where the completions start) and the one after it."""
    import torch

    real = attention_mask.bool().any(dim=0)
    columns = torch.nonzero(real).flatten()
    if columns.numel() == 0:
        return keep_from, keep_from + 1
    first, end = int(columns[0]), int(columns[-1]) + 1
    return min(first, keep_from), max(end, keep_from + 1)


def chunks(order: Sequence[int], size: int) -> list[list[int]]:
    """`order` cut into consecutive chunks of `size` rows (the last may be shorter)."""
    step = max(size, 1)
    return [list(order[start : start + step]) for start in range(0, len(order), step)]
