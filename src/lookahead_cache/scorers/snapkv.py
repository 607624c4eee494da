from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..kernels.attention_scores import attention_scores
from ..prefill import LayerPrefill
from .base import Scorer, check_pooling, pool_scores


@dataclass
class SnapKVScorer(Scorer):
    """SnapKV: the attention the last prompt queries (the observation window) pay to each prompt key.

    Scores are softmax attention averaged over the window queries and over the query heads of each GQA group,
    so tokens are selected per KV head without repeating KV heads, then smoothed by 1-D pooling so that
    neighbours of important tokens are kept too.

    Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", https://arxiv.org/abs/2404.14469

    Args:
        window: Number of last prompt queries that vote.
        kernel_size: Pooling kernel over the key axis (odd; 1 disables pooling).
        pooling: "max" or "avg".
    """

    window: int = 32
    kernel_size: int = 7
    pooling: Literal["max", "avg"] = "max"

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"snapkv window={self.window} must be at least 1 query.")
        check_pooling("snapkv", self.kernel_size, self.pooling)

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        length = prefill.prompt_length
        # A later prefill of a cache that evicts every prefill votes with its own last queries.
        start = max(prefill.query_start, length - self.window)
        queries = prefill.queries(start)
        scores = attention_scores(
            queries,
            prefill.keys,
            scaling=prefill.scaling,
            query_positions=torch.arange(start, length, device=queries.device),
            key_valid=prefill.valid,
            query_valid=prefill.valid[:, start:],
        )
        return pool_scores(scores, self.kernel_size, self.pooling)
