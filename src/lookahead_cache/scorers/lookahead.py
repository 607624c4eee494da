from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..kernels.attention_scores import attention_scores
from ..prefill import LayerPrefill
from .base import Scorer, check_pooling, pool_scores
from .snapkv import SnapKVScorer


@dataclass
class LookaheadScorer(Scorer):
    """LookaheadKV: the attention that learned lookahead tokens, run right after the prompt, pay to it.

    The model must carry a lookahead adapter (`lookahead_cache.load_lookahead`, or the shipped one through
    `load_default_model(lookahead=True)`): the cache appends its lookahead embeddings after the prompt, runs them
    with the lookahead LoRA active on those rows only, and scores each prompt key by the softmax attention of their
    queries, averaged over the lookahead queries and the query heads of each GQA group. The lookahead tokens' own
    keys and values are dropped; the prompt's are the base model's.

    Ahn et al., "LookaheadKV: Fast and Accurate KV Cache Eviction by Glimpsing into the Future without
    Generation", https://arxiv.org/abs/2603.10899

    Args:
        kernel_size: Pooling kernel over the key axis (odd; 1 keeps the learned scores as they are). The default,
            9, was chosen by measurement on samples of the training families (`scripts/sweep_lookahead_selection.py`,
            `results/lookahead_selection/`, kernels 1 to 13): it keeps the neighbours of a high-scoring token, e.g.
            every digit of a number or every piece of a UUID, and scored about 8 points above no pooling and 3.6
            above kernel 5.
        pooling: "max" or "avg".
        shift: Moves the pooling window back by this many tokens (see `pool_scores`), so that more of the span
            after a high-scoring token is kept; 0 centres it.
        window: The last this many prompt queries vote too, as in SnapKV, each query of either kind weighing the
            same (0: the lookahead queries alone). What the prompt's end asks for then joins what the lookahead
            tokens predict the answer will read. Off by default: on the held-out families it moved the shipped
            and a newer adapter by about one prompt in 21, up and down (`results/training_mix/probe_step175/`).
    """

    needs_lookahead: ClassVar[bool] = True

    kernel_size: int = 9
    pooling: Literal["max", "avg"] = "max"
    shift: int = 0
    window: int = 0

    def __post_init__(self):
        check_pooling("lookahead", self.kernel_size, self.pooling, self.shift)
        if self.window < 0:
            raise ValueError(f"lookahead window={self.window} must be 0 (no prompt queries) or more.")

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        if prefill.lookahead_queries is None:
            raise ValueError(
                f"Layer {prefill.layer_idx} has no lookahead queries: the lookahead scorer needs the model's lookahead "
                "adapter to run after the prompt."
            )
        queries = prefill.lookahead_queries.to(prefill.keys.dtype)
        scores = attention_scores(queries, prefill.keys, scaling=prefill.scaling, key_valid=prefill.valid)
        window_count = min(self.window, prefill.prompt_length - prefill.query_start)
        if window_count > 0:
            # SnapKV's window scores, unpooled: one pooling runs over the mix.
            window_scores = SnapKVScorer(window=self.window, kernel_size=1).score(prefill)
            lookahead_count = queries.shape[-2]
            scores = (lookahead_count * scores + window_count * window_scores) / (lookahead_count + window_count)
        return pool_scores(scores, self.kernel_size, self.pooling, self.shift)
