from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Allocator


@dataclass
class PyramidAllocator(Allocator):
    """PyramidKV: budgets shrink linearly with depth, uniform within a layer, same total as uniform.

    The selectable part of the budget (everything but sink and window) goes from `(2 - 2/(beta+1))` times
    the average in the first layer down to `2/(beta+1)` times it in the last, as in PyramidKV, where the
    last layer gets 1/beta of the first. Integer budgets are rounded cumulatively so they add up exactly.

    Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling",
    https://arxiv.org/abs/2406.02069

    Args:
        beta: Ratio between the first and the last layer's selectable budget.
    """

    beta: float = 20.0

    def __post_init__(self):
        if self.beta < 1:
            raise ValueError(f"pyramid beta={self.beta} must be >= 1 (1 gives the uniform allocation).")

    def allocate(self, scores, row_budgets, prompt_lengths, protected, layer_idx, num_layers) -> torch.Tensor:
        batch, kv_heads, _ = scores.shape
        selectable = (row_budgets.to(torch.float64) - protected).clamp(min=0)
        budgets = (
            protected
            + self._cumulative(selectable, layer_idx + 1, num_layers)
            - self._cumulative(selectable, layer_idx, num_layers)
        )
        return budgets.to(torch.long).view(batch, 1).expand(batch, kv_heads).clone()

    def _cumulative(self, selectable: torch.Tensor, layers: int, num_layers: int) -> torch.Tensor:
        """Rounded total selectable budget of the first `layers` layers."""
        if num_layers == 1:
            return torch.round(selectable * layers)
        low = 2.0 / (self.beta + 1.0)
        high = 2.0 - low
        step = (high - low) / (num_layers - 1)
        # Sum of high - step * l for l in [0, layers).
        weight = high * layers - step * layers * (layers - 1) / 2
        return torch.round(selectable * weight)
