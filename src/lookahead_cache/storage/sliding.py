"""Sliding-window layers (e.g. Gemma 3's local layers): kept as transformers keeps them, never compressed."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

from .base import StoredLayer


class SlidingWindowLayer(DynamicSlidingWindowLayer, StoredLayer):
    """transformers' `DynamicSlidingWindowLayer`, behind the `StoredLayer` interface: the window is what the model's
    own cache keeps too, so it is never compressed and its bytes are the full cache's."""

    @classmethod
    def from_prefill(cls, keys: torch.Tensor, values: torch.Tensor, **layer_kwargs) -> SlidingWindowLayer:
        """The window of a prefill's keys and values `[batch, kv_heads, prompt_len, head_dim]`."""
        layer = cls(**layer_kwargs)
        layer.update(keys, values)
        return layer

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def kept_tokens(self) -> torch.Tensor:
        batch, kv_heads, slots, _ = self.keys.shape
        return torch.full((batch, kv_heads), slots, dtype=torch.long)

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def full_nbytes(self) -> int:
        return self.nbytes()

    def slot_valid(self) -> None:
        return None

    def to_padded(self) -> SlidingWindowLayer:
        return self
