from __future__ import annotations

from dataclasses import dataclass

import torch

from ..prefill import LayerPrefill
from .base import Scorer


@dataclass
class StreamingScorer(Scorer):
    """StreamingLLM: keep the most recent prompt tokens (the cache always adds the sink tokens).

    Xiao et al., "Efficient Streaming Language Models with Attention Sinks", https://arxiv.org/abs/2309.17453
    """

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        batch, kv_heads, length, _ = prefill.keys.shape
        recency = torch.arange(length, dtype=torch.float32, device=prefill.keys.device)
        return recency.expand(batch, kv_heads, length)
