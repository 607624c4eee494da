from __future__ import annotations

from dataclasses import dataclass

import torch

from ..prefill import LayerPrefill
from .base import Scorer


@dataclass
class LookaheadScorer(Scorer):
    """LookaheadKV: attention of learned lookahead tokens, run in the same prefill pass, to the prompt.

    Needs a trained lookahead adapter, which this version cannot load yet.
    """

    def __post_init__(self):
        raise ValueError(
            "scorer='lookahead' needs a trained lookahead adapter, and loading one is not supported yet. "
            "Pick a heuristic scorer instead, e.g. LookaheadCache(budget=256, scorer='snapkv') "
            "(available: snapkv, streaming, knorm, random)."
        )

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        raise NotImplementedError
