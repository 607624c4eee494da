from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..prefill import LayerPrefill


class Scorer(ABC):
    """Says how much each prompt token matters to each KV head of one layer.

    Subclasses are small dataclasses implementing :meth:`score`. Higher scores are kept; padding, sink and
    window tokens are handled by the cache, not by the scorer.
    """

    @abstractmethod
    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        """Return importance scores of shape `[batch, kv_heads, prompt_len]`."""
