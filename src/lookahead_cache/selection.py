"""Turning scores and per-head counts into the prompt positions each KV head keeps."""

from __future__ import annotations

import torch


def protected_positions(valid: torch.Tensor, *, sink: int, window: int) -> torch.Tensor:
    """`[batch, prompt_len]`, True on the first `sink` and last `window` real tokens of each row (`valid`)."""
    real_lengths = valid.sum(-1, keepdim=True)
    rank_in_row = valid.long().cumsum(-1) - 1
    return valid & ((rank_in_row < sink) | (rank_in_row >= real_lengths - window))


def select_tokens(
    scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor, *, sink: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the top-scoring prompt positions of every (row, KV head).

    Args:
        scores: `[batch, kv_heads, prompt_len]`, higher is kept first.
        valid: `[batch, prompt_len]`, False on padding, which is never kept.
        counts: `[batch, kv_heads]` tokens to keep; clamped to each row's real length, so a prompt no longer
            than its budget is kept whole.
        sink: The first `sink` real tokens of each row are always kept.
        window: The last `window` real tokens of each row are always kept.

    Returns:
        `positions` `[batch, kv_heads, slots]` in increasing order, with `slots = counts.max()`, and `slot_valid`
        of the same shape: heads keeping fewer than `slots` tokens have their unused slots first, marked False
        (they point at position 0 and must be masked).
    """
    real_lengths = valid.sum(-1, keepdim=True)
    protected = protected_positions(valid, sink=sink, window=window)
    ranked = scores.float().masked_fill(protected[:, None], float("inf")).masked_fill(~valid[:, None], float("-inf"))
    counts = torch.minimum(counts.to(real_lengths.device), real_lengths)
    slots = int(counts.max())
    # A stable sort breaks ties (max pooling makes plateaus) by position within the row, so left padding, which
    # shifts every real token alike, cannot change the choice: a padded row keeps what it would keep alone.
    top = ranked.sort(dim=-1, descending=True, stable=True).indices[..., :slots]
    keep = torch.arange(slots, device=top.device) < counts[..., None]
    positions = top.masked_fill(~keep, -1).sort(dim=-1).values
    slot_valid = positions >= 0
    return positions.clamp(min=0), slot_valid
