"""The padded layout: `[batch, kv_heads, slots, head_dim]`, as transformers' own layers store keys and values."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .base import StoredLayer


class PaddedLayer(DynamicLayer, StoredLayer):
    """A layer that grows like `DynamicLayer` during the prefill, and after eviction holds the kept prompt tokens.

    After compression the physical length (stored slots) differs from the logical length (tokens seen), the
    way `DynamicSlidingWindowLayer` keeps them apart: `get_seq_length` is logical, so positions stay right,
    and `get_mask_sizes` describes the physical slots.

    Rows and heads may keep different numbers of prompt tokens: the shorter ones are left-padded with masked slots,
    recorded in `prompt_slot_valid` (`[batch, kv_heads, prompt_slots]`, None when every slot holds a kept token).
    """

    is_croppable = True

    def __init__(self):
        super().__init__()
        self.cumulative_length = 0
        self.prompt_slots = 0
        self.prompt_slot_valid: torch.Tensor | None = None

    @classmethod
    def _compressed(
        cls, keys: torch.Tensor, values: torch.Tensor, slot_valid: torch.Tensor | None, cumulative_length: int
    ) -> PaddedLayer:
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        layer.cumulative_length = cumulative_length
        layer.prompt_slots = keys.shape[-2]
        layer.prompt_slot_valid = slot_valid
        layer.is_compressed, layer.is_croppable = True, False
        return layer

    @classmethod
    def from_selection(
        cls,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        slot_valid: torch.Tensor,
        cumulative_length: int,
    ) -> PaddedLayer:
        """The prompt tokens at `positions` (`[batch, kv_heads, slots]`, those where `slot_valid` is True) of the
        full prompt `keys` / `values` (`[batch, kv_heads, prompt_len, head_dim]`)."""
        index = positions.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
        if bool(slot_valid.all()):
            mask = None
        elif bool((slot_valid == slot_valid[:, :1]).all()):
            # Heads of a row agree (uniform allocation): one mask row serves every head.
            mask = slot_valid[:, :1]
        else:
            mask = slot_valid
        return cls._compressed(keys.gather(2, index), values.gather(2, index), mask, cumulative_length)

    @classmethod
    def whole(
        cls, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, cumulative_length: int
    ) -> PaddedLayer:
        """Every prompt token kept, as `from_selection` would keep a left-padded prompt within its budget, without
        copying `keys` / `values`. `valid` (`[batch, prompt_len]`) is False on padding slots."""
        return cls._compressed(keys, values, None if bool(valid.all()) else valid[:, None], cumulative_length)

    @classmethod
    def stack(cls, layers: list[PaddedLayer]) -> PaddedLayer:
        """One compressed layer whose batch rows are those of `layers` (compressed layers of one prompt, each with
        as many tokens appended since): rows keeping fewer prompt slots are left-padded with masked slots."""
        appended = {layer.keys.shape[-2] - layer.prompt_slots for layer in layers}
        if len(appended) != 1 or not all(isinstance(layer, PaddedLayer) and layer.is_compressed for layer in layers):
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
        slot_valid = torch.cat(valid)
        stacked = cls._compressed(
            torch.cat(keys),
            torch.cat(values),
            None if bool(slot_valid.all()) else slot_valid,
            layers[0].cumulative_length,
        )
        stacked.prompt_slots = prompt_slots
        return stacked

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.cumulative_length += key_states.shape[-2]
        return super().update(key_states, value_states)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        physical = self.keys.shape[-2] if self.is_initialized else 0
        return physical + query_length, self.cumulative_length - physical

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def slot_valid(self) -> torch.Tensor | None:
        if self.prompt_slot_valid is None:
            return None
        appended = self.keys.shape[-2] - self.prompt_slots
        ones = self.prompt_slot_valid.new_ones(*self.prompt_slot_valid.shape[:2], appended)
        return torch.cat([self.prompt_slot_valid, ones], dim=-1)

    def kept_tokens(self) -> torch.Tensor:
        batch, kv_heads, slots, _ = self.keys.shape
        if self.prompt_slot_valid is None:
            return torch.full((batch, kv_heads), slots, dtype=torch.long)
        padding = (~self.prompt_slot_valid).sum(-1).cpu()
        return (slots - padding).expand(batch, kv_heads).clone()

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def full_nbytes(self) -> int:
        batch, kv_heads, _, head_dim = self.keys.shape
        return 2 * batch * kv_heads * self.cumulative_length * head_dim * self.keys.element_size()

    def to_padded(self) -> PaddedLayer:
        return self

    def appended(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, self.prompt_slots :], self.values[:, :, self.prompt_slots :]

    def keep_appended(self, positions: torch.Tensor) -> None:
        index = positions.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        kept_keys, kept_values = (part.gather(2, index) for part in self.appended())
        self.keys = torch.cat([self.keys[:, :, : self.prompt_slots], kept_keys], dim=-2)
        self.values = torch.cat([self.values[:, :, : self.prompt_slots], kept_values], dim=-2)

    def drop_last(self, tokens: int) -> None:
        """Remove the last `tokens` stored tokens, compressed layer or not: the lookahead rows a prefill appended
        for scoring, which the prompt's cache does not keep."""
        self.keys, self.values = self.keys[:, :, :-tokens], self.values[:, :, :-tokens]
        self.cumulative_length -= tokens

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
