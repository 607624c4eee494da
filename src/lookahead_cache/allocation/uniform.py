from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Allocator


@dataclass
class UniformAllocator(Allocator):
    """Every layer and KV head keeps the same number of tokens."""

    def allocate(self, scores, row_budgets, prompt_lengths, protected, layer_idx, num_layers) -> torch.Tensor:
        batch, kv_heads, _ = scores.shape
        return row_budgets.to(torch.long).view(batch, 1).expand(batch, kv_heads).clone()
