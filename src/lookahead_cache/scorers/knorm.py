from __future__ import annotations

from dataclasses import dataclass

import torch

from ..prefill import LayerPrefill
from .base import Scorer


@dataclass
class KnormScorer(Scorer):
    """Keep the keys with the smallest L2 norm, which tend to receive the most attention.

    Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    https://arxiv.org/abs/2406.11430
    """

    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        return -prefill.keys.float().norm(dim=-1)
