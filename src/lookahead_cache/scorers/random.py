from __future__ import annotations

from dataclasses import dataclass

import torch

from ..prefill import LayerPrefill
from .base import Scorer


@dataclass
class RandomScorer(Scorer):
    """Uniformly random scores: the floor any informed scorer must beat.

    Args:
        seed: Seed of the generator; the same seed gives the same kept tokens for the same prompt.
    """

    seed: int | None = 0

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        generator = torch.Generator(device=prefill.keys.device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed + prefill.layer_idx)
        batch, kv_heads, length, _ = prefill.keys.shape
        return torch.rand(batch, kv_heads, length, generator=generator, device=prefill.keys.device)
