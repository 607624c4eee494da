from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..config import LookaheadCacheConfig
from ..scorers import Scorer


class Allocator(ABC):
    """Says how many prompt tokens each KV head of a layer keeps.

    The cache calls :meth:`allocate` once per layer at the end of its prefill, so an allocator may look at that
    layer's scores (per-head allocation) but not at later layers'.

    Attributes:
        per_head: True when the KV heads of a layer may keep different counts (their layers are then stored packed,
            and cannot be evicted again by a later prefill of the same cache).
    """

    per_head = False

    def bind(self, attention_module: nn.Module, scorer: Scorer, cache_config: LookaheadCacheConfig) -> None:
        """Called before a cache's first eviction with an attention module of the model, the cache's scorer and its
        settings.

        Allocators that depend on the model (an offline profile, say) load and check what they need here;
        `attention_module.config` is the model's config.
        """

    @abstractmethod
    def allocate(
        self,
        scores: torch.Tensor,
        row_budgets: torch.Tensor,
        prompt_lengths: torch.Tensor,
        protected: int,
        layer_idx: int,
        num_layers: int,
    ) -> torch.Tensor:
        """Return the number of tokens to keep, `[batch, kv_heads]` (int64).

        Args:
            scores: `[batch, kv_heads, prompt_len]` scores of this layer; `-inf` where a token is not the allocator's
                to share out: padding, and the sink and window tokens that every head keeps anyway.
            row_budgets: `[batch]` tokens per KV head that each row keeps on average over layers and heads.
            prompt_lengths: `[batch]` real (non-padding) prompt tokens of each row.
            protected: Sink + window tokens every head keeps; an allocation never goes below it.
            layer_idx: Index of this layer among the `num_layers` compressed layers.
            num_layers: Number of compressed layers of the model.
        """
