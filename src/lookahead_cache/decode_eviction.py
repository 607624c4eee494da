"""Decode-time eviction: a budget for the tokens a compressed layer stores after its prompt.

End-of-prefill eviction bounds the prompt; a long generation (a reasoning model's thousands of tokens), or a session
whose later turns are appended whole, grows the cache past it. With `LookaheadCache(generation_budget=G)`, once a
compressed layer holds G tokens after its prompt, the queries of its last `generation_interval` tokens vote for the
ones to keep, as a prompt's last queries vote in SnapKV: the layer keeps `G - generation_interval` of them, every KV
head as many (each its own), its last `window` always, and decoding goes on until the next `generation_interval`
tokens fill it again. So a layer never holds more than G tokens after its prompt per KV head, whatever
`max_new_tokens`, and the voting costs one scoring of G keys every `generation_interval` steps.

The generated part is scored by the cache's scorer, which sees it as a prompt whose last `generation_interval`
tokens have queries (`LayerPrefill.query_start`), except the lookahead scorer: its learned rows predict what an
answer will read of a prompt and run only in the first prefill, so generated tokens are scored with SnapKV.

The queries are recomputed at each eviction from the attention inputs of those last tokens, which a forward hook on
each compressed layer's attention module records after it attends (`GenerationEviction.after_attention`); the hook
evicts in the same place, so the next forward's mask (`lookahead_cache.decoding`) sees the layer already smaller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import LookaheadCacheConfig
from .prefill import LayerPrefill
from .scorers import Scorer
from .scorers.snapkv import SnapKVScorer
from .selection import select_tokens
from .storage import StoredLayer


class GenerationEviction:
    """Keeps the tokens after the prompt of every compressed layer within `config.generation_budget`.

    Args:
        config: The cache's settings: `generation_budget`, `generation_interval` and `window`.
        scorer: The cache's scorer (SnapKV replaces a lookahead scorer, see the module docstring).
    """

    def __init__(self, config: LookaheadCacheConfig, scorer: Scorer):
        if config.generation_budget is None:
            raise ValueError("GenerationEviction needs a generation_budget.")
        self.budget = config.generation_budget
        self.interval = config.generation_interval
        self.window = config.window
        self.scorer = SnapKVScorer(window=self.interval) if scorer.needs_lookahead else scorer
        # Per layer: the attention inputs (hidden states, and the RoPE pair or None) of its last `interval` tokens.
        self._recent: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]] = {}

    def forget(self, layer_idx: int) -> None:
        """Layer `layer_idx` was evicted as a whole again (a later prefill): its recent tokens are prompt tokens now."""
        self._recent.pop(layer_idx, None)

    def after_attention(
        self,
        layer: StoredLayer,
        module: nn.Module,
        layer_idx: int,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        """Layer `layer_idx` attended to a forward's tokens after its prompt: record them, and evict the generated
        part when it reached the budget."""
        self._record(layer_idx, hidden_states, position_embeddings)
        keys, values = layer.appended()
        appended = keys.shape[-2]
        if appended < self.budget:
            return
        recent_hidden, recent_positions = self._recent[layer_idx]
        voters = min(recent_hidden.shape[1], appended)
        batch, kv_heads = keys.shape[:2]
        valid = torch.ones(batch, appended, dtype=torch.bool, device=keys.device)
        generated = LayerPrefill(
            module=module,
            layer_idx=layer_idx,
            keys=keys,
            values=values,
            hidden_states=recent_hidden[:, -voters:],
            position_embeddings=None
            if recent_positions is None
            else tuple(part[:, -voters:] for part in recent_positions),
            valid=valid,
            query_start=appended - voters,
            tokens_seen=layer.get_seq_length(),
        )
        scores = self.scorer.score(generated)
        counts = torch.full((batch, kv_heads), self.budget - self.interval, device=keys.device)
        positions, _ = select_tokens(scores, valid, counts, sink=0, window=self.window)
        layer.keep_appended(positions)

    def _record(self, layer_idx, hidden_states, position_embeddings) -> None:
        recent = self._recent.get(layer_idx)
        if recent is not None:
            hidden_states = torch.cat([recent[0], hidden_states], dim=1)
            if position_embeddings is not None:
                position_embeddings = tuple(torch.cat(pair, dim=1) for pair in zip(recent[1], position_embeddings))
        if position_embeddings is not None:
            position_embeddings = tuple(part[:, -self.interval :] for part in position_embeddings)
        self._recent[layer_idx] = (hidden_states[:, -self.interval :], position_embeddings)

    def select_rows(self, select: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Follow the cache's batch rows (beam search reorders them, contrastive search repeats them)."""
        for layer_idx, (hidden_states, position_embeddings) in self._recent.items():
            if position_embeddings is not None and position_embeddings[0].shape[0] == hidden_states.shape[0]:
                position_embeddings = tuple(select(part) for part in position_embeddings)
            self._recent[layer_idx] = (select(hidden_states), position_embeddings)
