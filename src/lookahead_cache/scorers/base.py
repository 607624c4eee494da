from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from ..prefill import LayerPrefill


class Scorer(ABC):
    """Says how much each prompt token matters to each KV head of one layer.

    Subclasses are small dataclasses implementing :meth:`score`. Higher scores are kept; padding, sink and
    window tokens are handled by the cache, not by the scorer.

    Attributes:
        needs_lookahead: True for scorers that read `LayerPrefill.lookahead_queries`: the model's lookahead
            adapter then appends its lookahead tokens to the prefill, after the prompt.
    """

    needs_lookahead: ClassVar[bool] = False

    @abstractmethod
    def score(self, prefill: LayerPrefill) -> torch.Tensor:
        """Return importance scores of shape `[batch, kv_heads, prompt_len]`."""


def check_pooling(name: str, kernel_size: int, pooling: str, shift: int = 0) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} kernel_size={kernel_size} must be a positive odd number.")
    if pooling not in ("max", "avg"):
        raise ValueError(f"{name} pooling={pooling!r} must be 'max' or 'avg'.")
    if abs(shift) > kernel_size // 2:
        raise ValueError(
            f"{name} shift={shift} must lie within half the pooling kernel ({kernel_size // 2} for kernel_size="
            f"{kernel_size}): the window must still cover the token itself."
        )


def pool_scores(scores: torch.Tensor, kernel_size: int, pooling: Literal["max", "avg"], shift: int = 0) -> torch.Tensor:
    """Smooth `[batch, kv_heads, prompt_len]` scores along the prompt so that neighbours of important tokens
    score high too (kernel_size 1 returns them as they are).

    The window is centred on each token, or, with `shift` > 0, moved `shift` tokens back: a token then pools over
    the `kernel_size // 2 + shift` tokens before it and the `kernel_size // 2 - shift` after it, so more of what
    follows an important token is kept than of what precedes it.
    """
    if kernel_size == 1:
        return scores
    batch, kv_heads, length = scores.shape
    half = kernel_size // 2
    # Padded as torch's own pools pad: -inf for max (never the maximum), zeros counted in the mean for avg.
    padded = F.pad(
        scores.reshape(batch * kv_heads, 1, length),
        (half + shift, half - shift),
        value=float("-inf") if pooling == "max" else 0.0,
    )
    pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
    return pool(padded, kernel_size, stride=1).view(batch, kv_heads, length)
