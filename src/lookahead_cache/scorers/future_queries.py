from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..kernels.attention_scores import attention_scores
from ..prefill import LayerPrefill
from .base import Scorer


@dataclass
class FutureQueriesScorer(Scorer):
    """Attention that given future queries pay to the prompt: mean softmax over prompt keys, per KV head.

    With the queries of the answer the model actually gives from the full cache, this is the `oracle`: the
    ceiling of any score-based eviction, and the target the lookahead scorer is trained to predict. With the
    queries of a drafted answer it is LAQ-style "glimpse the future by generating". The queries come from
    `lookahead_cache.evaluation.replay.future_queries`.

    Args:
        queries: Per layer, post-RoPE queries `[batch, q_heads, n, head_dim]` of the future tokens. Each sees the
            whole prompt, so no causal mask applies among prompt keys.
    """

    queries: Sequence[torch.Tensor] = field(default=(), repr=False)

    def __post_init__(self):
        if not self.queries:
            raise ValueError(
                "FutureQueriesScorer needs the queries of future tokens for every layer; build them with "
                "lookahead_cache.evaluation.replay.future_queries(...). It cannot be selected by name alone."
            )

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        if prefill.layer_idx >= len(self.queries):
            raise ValueError(
                f"FutureQueriesScorer holds queries for {len(self.queries)} layers, but layer {prefill.layer_idx} "
                "asks for scores: the queries come from another model."
            )
        queries = self.queries[prefill.layer_idx].to(prefill.keys.dtype)
        return attention_scores(queries, prefill.keys, scaling=prefill.scaling, key_valid=prefill.valid)
