"""Per-layer storage of a LookaheadCache."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class EvictingLayer(DynamicLayer):
    """A layer that grows like `DynamicLayer` until :meth:`compress` keeps a subset of its tokens.

    After compression the physical length (stored slots) differs from the logical length (tokens seen), the
    way `DynamicSlidingWindowLayer` keeps them apart: `get_seq_length` is logical, so positions stay right,
    and `get_mask_sizes` describes the physical slots.

    Slots are `[batch, kv_heads, slots, head_dim]`. Rows and heads may keep different numbers of prompt
    tokens: the shorter ones are left-padded with masked slots, recorded in `prompt_slot_valid`
    (`[batch, kv_heads, prompt_slots]`, None when every slot holds a kept token).
    """

    is_croppable = True

    def __init__(self):
        super().__init__()
        self.cumulative_length = 0
        self.is_compressed = False
        self.prompt_slots = 0
        self.prompt_slot_valid: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.cumulative_length += key_states.shape[-2]
        return super().update(key_states, value_states)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        physical = self.keys.shape[-2] if self.is_initialized else 0
        return physical + query_length, self.cumulative_length - physical

    def compress(self, kept_positions: torch.Tensor, slot_valid: torch.Tensor) -> None:
        """Keep the prompt tokens at `kept_positions` (`[batch, kv_heads, slots]`) and free the rest."""
        if self.is_compressed:
            raise RuntimeError("This layer was already compressed; eviction happens once, at the end of prefill.")
        head_dim = self.keys.shape[-1]
        index = kept_positions.unsqueeze(-1).expand(-1, -1, -1, head_dim)
        self.keys = self.keys.gather(2, index)
        self.values = self.values.gather(2, index)
        self.prompt_slots = kept_positions.shape[-1]
        if bool(slot_valid.all()):
            self.prompt_slot_valid = None
        elif bool((slot_valid == slot_valid[:, :1]).all()):
            # Heads of a row agree (uniform allocation): one mask row serves every head.
            self.prompt_slot_valid = slot_valid[:, :1]
        else:
            self.prompt_slot_valid = slot_valid
        self.is_compressed = True
        self.is_croppable = False

    def keep_whole(self, valid: torch.Tensor) -> None:
        """End the prefill keeping every prompt token, as :meth:`compress` would for a left-padded prompt within its
        budget, without copying the layer. `valid` (`[batch, prompt_len]`) is False on padding slots."""
        if self.is_compressed:
            raise RuntimeError("This layer was already compressed; eviction happens once, at the end of prefill.")
        self.prompt_slots = self.keys.shape[-2]
        self.prompt_slot_valid = None if bool(valid.all()) else valid[:, None]
        self.is_compressed = True
        self.is_croppable = False

    @classmethod
    def stack(cls, layers: list[EvictingLayer]) -> EvictingLayer:
        """One compressed layer whose batch rows are those of `layers` (compressed layers of one prompt, each with
        as many tokens appended since): rows keeping fewer prompt slots are left-padded with masked slots."""
        appended = {layer.keys.shape[-2] - layer.prompt_slots for layer in layers}
        if len(appended) != 1 or not all(isinstance(layer, EvictingLayer) and layer.is_compressed for layer in layers):
            raise ValueError(
                "LookaheadCache.stack needs caches of the same model, each compressed, with as many tokens since."
            )
        prompt_slots = max(layer.prompt_slots for layer in layers)
        keys, values, valid = [], [], []
        for layer in layers:
            batch, kv_heads, _, head_dim = layer.keys.shape
            padding = prompt_slots - layer.prompt_slots
            keys.append(torch.cat([layer.keys.new_zeros(batch, kv_heads, padding, head_dim), layer.keys], dim=-2))
            values.append(torch.cat([layer.values.new_zeros(batch, kv_heads, padding, head_dim), layer.values], dim=-2))
            row_valid = layer.prompt_slot_valid
            if row_valid is None:
                row_valid = torch.ones(batch, 1, layer.prompt_slots, dtype=torch.bool, device=layer.keys.device)
            row_valid = row_valid.expand(batch, kv_heads, -1)
            valid.append(torch.cat([row_valid.new_zeros(batch, kv_heads, padding), row_valid], dim=-1))
        stacked = cls()
        stacked.lazy_initialization(keys[0], values[0])
        stacked.keys, stacked.values = torch.cat(keys), torch.cat(values)
        stacked.cumulative_length = layers[0].cumulative_length
        stacked.is_compressed, stacked.is_croppable = True, False
        stacked.prompt_slots = prompt_slots
        slot_valid = torch.cat(valid)
        stacked.prompt_slot_valid = None if bool(slot_valid.all()) else slot_valid
        return stacked

    def slot_valid(self) -> torch.Tensor | None:
        """`[batch, kv_heads, slots]`, False on padding slots; None when every slot is attended."""
        if self.prompt_slot_valid is None:
            return None
        appended = self.keys.shape[-2] - self.prompt_slots
        ones = self.prompt_slot_valid.new_ones(*self.prompt_slot_valid.shape[:2], appended)
        return torch.cat([self.prompt_slot_valid, ones], dim=-1)

    def kept_tokens(self) -> torch.Tensor:
        """`[batch, kv_heads]` number of stored tokens that attention reads."""
        batch, kv_heads, slots, _ = self.keys.shape
        if self.prompt_slot_valid is None:
            return torch.full((batch, kv_heads), slots, dtype=torch.long)
        padding = (~self.prompt_slot_valid).sum(-1).cpu()
        return (slots - padding).expand(batch, kv_heads).clone()


    def full_nbytes(self) -> int:
        """Bytes this layer would hold without eviction: every token seen, in every row and KV head."""
        batch, kv_heads, _, head_dim = self.keys.shape
        return 2 * batch * kv_heads * self.cumulative_length * head_dim * self.keys.element_size()
    def crop(self, tokens_to_remove: int) -> None:
        if self.is_compressed:
            raise ValueError(
                "crop() cannot be applied to a LookaheadCache after eviction: the evicted prompt tokens are gone and "
                "cannot be restored. Crop before the first forward, or keep a DynamicCache for workflows that roll "
                "back (e.g. assisted generation)."
            )
        length_before = self.keys.shape[-2] if self.is_initialized else 0
        super().crop(tokens_to_remove)
        self.cumulative_length -= length_before - (self.keys.shape[-2] if self.is_initialized else 0)

    def _select_batch(self, select) -> None:
        if self.prompt_slot_valid is not None:
            self.prompt_slot_valid = select(self.prompt_slot_valid)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._select_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._select_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._select_batch(lambda t: t[indices])

    def reset(self) -> None:
        super().reset()
        self.is_compressed = False
        self.is_croppable = True
        self.prompt_slots = 0
        self.prompt_slot_valid = None
