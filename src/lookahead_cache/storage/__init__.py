"""Where a `LookaheadCache` keeps each layer's keys and values: one interface (`StoredLayer`), three layouts.

* `PaddedLayer`: `[batch, kv_heads, slots, head_dim]` as transformers stores them; the prefill grows one per
  layer, and eviction keeps the chosen prompt tokens in one, heads that keep fewer left-padded with masked slots.
* `PackedLayer`: the kept tokens of a batch row's KV heads back to back, for head-level budgets, no padding.
* `SlidingWindowLayer`: the window of a sliding-window layer, as the model's own cache keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import StoredLayer
from .packed import DEFAULT_GROWTH, PackedLayer
from .padded import PaddedLayer
from .sliding import SlidingWindowLayer


def stack_layers(layers: Sequence[StoredLayer]) -> StoredLayer:
    """The batch rows of `layers` (one layer of several caches of the same prompt) in one layer; compressed
    prompts that keep fewer slots are left-padded."""
    layers = [layer.to_padded() for layer in layers]
    kinds = {type(layer) for layer in layers}
    if len(kinds) != 1:
        raise ValueError("LookaheadCache.stack needs caches of the same model: their layer kinds differ.")
    if isinstance(layers[0], PaddedLayer):
        return PaddedLayer.stack(layers)
    stacked = SlidingWindowLayer.from_prefill(
        torch.cat([layer.keys for layer in layers]),
        torch.cat([layer.values for layer in layers]),
        sliding_window=layers[0].sliding_window,
    )
    stacked.cumulative_length = layers[0].cumulative_length
    return stacked


__all__ = ["DEFAULT_GROWTH", "PackedLayer", "PaddedLayer", "SlidingWindowLayer", "StoredLayer", "stack_layers"]
