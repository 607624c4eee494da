from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Allocator


@dataclass
class AdaKVAllocator(Allocator):
    """AdaKV: within a layer, the heads share the layer's budget by one top-k over all their scores.

    Each head first gets a safeguard floor of `alpha_safeguard` times the average selectable budget (its best
    tokens), then the rest of the layer's selectable budget goes to the highest scores of any head. Heads whose
    attention is concentrated give tokens to heads whose attention is spread. Scores are compared across heads
    as the scorer gives them, as in AdaKV and kvpress's `AdaKVPress`; every layer keeps the uniform total.

    Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
    Inference", https://arxiv.org/abs/2407.11550

    Args:
        alpha_safeguard: Share of the average selectable budget every head keeps at least, in [0, 1].
    """

    per_head = True

    alpha_safeguard: float = 0.2

    def __post_init__(self):
        if not 0.0 <= self.alpha_safeguard <= 1.0:
            raise ValueError(f"adakv alpha_safeguard={self.alpha_safeguard} must be in [0, 1].")

    def allocate(self, scores, row_budgets, prompt_lengths, protected, layer_idx, num_layers) -> torch.Tensor:
        batch, kv_heads, length = scores.shape
        counts = torch.empty(batch, kv_heads, dtype=torch.long, device=scores.device)
        for row in range(batch):
            selectable = max(int(row_budgets[row]) - protected, 0)
            safe = int(self.alpha_safeguard * selectable)
            ranked = scores[row].float().clone()
            if safe:
                best = ranked.topk(min(safe, length), dim=-1).indices
                ranked.scatter_(-1, best, float("inf"))
            chosen = ranked.flatten().topk(min(selectable * kv_heads, kv_heads * length)).indices
            counts[row] = protected + torch.bincount(chosen // length, minlength=kv_heads)
        return counts
