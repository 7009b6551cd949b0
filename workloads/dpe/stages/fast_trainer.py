"""TRL's GRPOTrainer with the train stage's fast path plugged in.

- Rollouts on the transformers path are `GroupRollout`'s (`dpe.stages.rollout`): each prompt
  prefilled once, its completions decoded over a static KV cache. TRL still pads the prompts, cuts
  the completions at their end of sequence and scores them; only the policy's `generate` differs.
- With `group_by_length`, update batches skip padding work (`dpe.stages.update_batches`): each
  update's rows are ordered by length before TRL cuts them into micro-batches, and every forward pass
  TRL makes for log-probabilities (the loss's, the old policy's, the reference's) runs in chunks of
  rows of similar length, each cut to its own real columns. Models whose pictures are not given per
  row as Qwen-VL's are (`image_grid_thw`) take TRL's own pass.

Loss, KL, clipping, advantages, logging and checkpoints stay TRL's.
"""

from __future__ import annotations

import functools
from typing import Any

from dpe.stages.rollout import GroupRollout
from dpe.stages.update_batches import chunks, length_sorted_blocks, permuted, real_columns

PER_TOKEN_FIELDS = ("mm_token_type_ids", "token_type_ids")
"""Per-row fields as wide as the sequences, cut with them."""


@functools.cache
def fast_grpo_trainer() -> type:
    """`FastGRPOTrainer`, the GRPOTrainer the train stage builds (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from trl import GRPOTrainer
    from trl.trainer.utils import shuffle_sequence_dict, split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

    class FastGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        """GRPOTrainer with group rollouts (`group_rollout`) and update batches without padding work
        (`group_by_length`)."""

        def __init__(self, *args: Any, group_rollout: GroupRollout | None = None, group_by_length: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.group_rollout = group_rollout
            self.group_by_length = group_by_length

        def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any, num_generations: int, has_tool_images: bool = False) -> Any:
            rollout = self.group_rollout
            if rollout is None or self.use_vllm or self.use_transformers_continuous_batching or has_tool_images:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            policy = self.accelerator.unwrap_model(self.model)
            own = functools.partial(type(policy).generate, policy)
            policy.generate = lambda generation_config=None, **inputs: rollout.generate(policy, generation_config, inputs, own)
            try:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            finally:
                del policy.generate

        def _prepare_inputs(self, generation_batch: Any) -> Any:
            if not self.group_by_length or not self.model.training:
                return super()._prepare_inputs(generation_batch)
            # TRL's own steps (generate, shuffle, cut into micro-batches), with each update's rows
            # ordered by length before the cut.
            steps = self.args.steps_per_generation
            if self._step % (steps * self.num_iterations) == 0 or self._buffered_inputs is None:
                batch = shuffle_sequence_dict(split_pixel_values_by_grid(self._generate_and_score_completions(generation_batch)))
                lengths = (batch["prompt_mask"].sum(1) + batch["completion_mask"].sum(1)).tolist()
                per_update = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                batch = permuted(batch, length_sorted_blocks(lengths, per_update))
                self._buffered_inputs = [unsplit_pixel_values_by_grid(part) for part in split_tensor_dict(batch, steps)]
            return self._buffered_inputs[self._step % steps]

        def _get_per_token_logps_and_entropies(self, model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, batch_size: int | None = None,
                                               compute_entropy: bool = False, compute_aux_loss: bool = False, **fields: Any) -> Any:
            pixels, grids, counts = fields.get("pixel_values"), fields.get("image_grid_thw"), fields.get("num_images")
            known = {"pixel_values", "image_grid_thw", "num_images", *PER_TOKEN_FIELDS}
            other = any(value is not None for key, value in fields.items() if key not in known)
            if not self.group_by_length or other or pixels is not None and (grids is None or counts is None):
                return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                                  compute_entropy, compute_aux_loss, **fields)
            rows, width = input_ids.shape
            keep_from = width - logits_to_keep
            per_row = split_pixel_values_by_grid({"pixel_values": pixels, "image_grid_thw": grids, "num_images": counts}) if pixels is not None else {}
            order = attention_mask.sum(1).argsort(stable=True).tolist()
            logps, entropies, aux = [], [], []
            for part in chunks(order, batch_size or rows):
                index = torch.tensor(part, device=input_ids.device)
                mask = attention_mask[index]
                first, end = real_columns(mask, keep_from)
                kwargs: dict[str, Any] = {key: fields[key][index][:, first:end] for key in PER_TOKEN_FIELDS if fields.get(key) is not None}
                if pixels is not None:
                    kwargs.update(pixel_values=torch.cat([per_row["pixel_values"][i] for i in part]),
                                  image_grid_thw=torch.cat([per_row["image_grid_thw"][i] for i in part]),
                                  num_images=[counts[i] for i in part])
                out = super()._get_per_token_logps_and_entropies(model, input_ids[index][:, first:end], mask[:, first:end], end - keep_from, None,
                                                                 compute_entropy, compute_aux_loss, **kwargs)
                cut = logits_to_keep - (end - keep_from)
                logps.append(F.pad(out[0], (0, cut)))
                if compute_entropy:
                    entropies.append(F.pad(out[1], (0, cut)))
                if compute_aux_loss:
                    aux.append(out[2])
            inverse = torch.empty(rows, dtype=torch.long, device=input_ids.device)
            inverse[torch.tensor(order, device=input_ids.device)] = torch.arange(rows, device=input_ids.device)
            return (torch.cat(logps)[inverse], torch.cat(entropies)[inverse] if compute_entropy else None,
                    torch.stack(aux).mean() if compute_aux_loss else None)

    return FastGRPOTrainer
