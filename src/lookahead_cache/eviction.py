"""Eviction of one layer at the end of its prefill: score, allocate, select, store.

`evict_layer` is the whole pipeline as one function of a layer's `LayerPrefill` and the cache's `Eviction`: a live
prefill calls it right after each layer's attention, and `LookaheadCache.from_prefill` on recorded layers, so both
give the same cache. It reads the prefill and never modifies it; a prompt kept whole is stored without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.utils import logging

from .allocation import Allocator
from .config import LookaheadCacheConfig
from .decoding import VARLEN_ATTENTION, check_supported_attention
from .lookahead_rows import base_implementation
from .prefill import LayerPrefill
from .scorers import Scorer
from .selection import protected_positions, select_tokens
from .storage import PackedLayer, PaddedLayer, SlidingWindowLayer, StoredLayer
from .tensor_parallel import kv_head_shard

logger = logging.get_logger(__name__)

FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"


@dataclass
class Eviction:
    """What a cache evicts with, bound to a model when its first layer's prefill ends.

    Attributes:
        config: The cache's budget, sink and window.
        scorer: Ranks each layer's prompt tokens.
        allocator: Shares the budget out among layers and KV heads.
        layer_types: `full_attention` or `sliding_attention`, per layer of the model.
        layer_kwargs: Per layer, the arguments of transformers' cache layer of its kind (the window size).
        attn_implementation: How the model attends outside a lookahead prefill; under `lookahead_varlen`, layers
            whose heads keep different counts are read packed in place.
    """

    config: LookaheadCacheConfig
    scorer: Scorer
    allocator: Allocator
    layer_types: list[str]
    layer_kwargs: list[dict]
    attn_implementation: str

    @classmethod
    def for_model(
        cls, attention_module: nn.Module, config: LookaheadCacheConfig, scorer: Scorer, allocator: Allocator
    ) -> Eviction:
        """The eviction of a model, read from one of its attention modules; binds the allocator to the model."""
        model_config = attention_module.config
        implementation = base_implementation(getattr(model_config, "_attn_implementation", None))
        check_supported_attention(implementation)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(model_config)
        if isinstance(layer_kwargs, dict):  # before transformers 5.24: one dict for every layer
            layer_kwargs = [layer_kwargs] * len(layer_types)
        unsupported = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
        if unsupported:
            raise ValueError(
                f"LookaheadCache supports full and sliding-window attention layers; this model also has {unsupported}."
            )
        eviction = cls(config, scorer, allocator, list(layer_types), list(layer_kwargs), implementation)
        allocator.bind(attention_module, scorer, config)
        if not eviction.compressed_layers:
            logger.warning("Every attention layer of this model uses a sliding window: LookaheadCache evicts nothing.")
        return eviction

    @property
    def compressed_layers(self) -> list[int]:
        """The layers eviction compresses: those with full attention."""
        return [i for i, kind in enumerate(self.layer_types) if kind == FULL_ATTENTION]


def evict_layer(prefill: LayerPrefill, eviction: Eviction) -> StoredLayer:
    """The layer that stores `prefill`'s prompt after eviction: the window of a sliding-window layer, every token of
    prompts within their budgets, else the tokens the scorer and allocator keep, padded when every KV head keeps as
    many and packed otherwise."""
    layer_idx, config = prefill.layer_idx, eviction.config
    length = prefill.prompt_length
    seen = length if prefill.tokens_seen is None else prefill.tokens_seen
    if eviction.layer_types[layer_idx] == SLIDING_ATTENTION:
        return SlidingWindowLayer.from_prefill(prefill.keys, prefill.values, **eviction.layer_kwargs[layer_idx])
    real_lengths = prefill.real_lengths.tolist()
    if config.keeps_whole(real_lengths):
        return PaddedLayer.whole(prefill.keys, prefill.values, prefill.valid, seen)

    scores = eviction.scorer.score(prefill)
    batch, kv_heads = prefill.keys.shape[:2]
    if scores.shape != (batch, kv_heads, length):
        raise ValueError(
            f"{type(eviction.scorer).__name__}.score returned shape {tuple(scores.shape)}, expected "
            f"(batch, kv_heads, prompt_len) = {(batch, kv_heads, length)}."
        )
    row_budgets = torch.tensor([config.row_budget(n) for n in real_lengths], device=scores.device)
    # Allocators share out the selectable tokens: sink, window and padding are not theirs to rank.
    selectable = prefill.valid & ~protected_positions(prefill.valid, sink=config.sink, window=config.window)
    allocated_scores = scores.masked_fill(~selectable[:, None], float("-inf"))
    # Under tensor parallelism this process holds some of the layer's KV heads. A per-head allocation shares the
    # layer's budget among all of them: it decides on every process's scores, as one process holding them all would,
    # and this process keeps its own heads' counts.
    head_shard = kv_head_shard(prefill.module, kv_heads) if eviction.allocator.per_head else None
    if head_shard is not None:
        allocated_scores = head_shard.gather(allocated_scores, dim=1)
    compressed = eviction.compressed_layers
    counts = eviction.allocator.allocate(
        allocated_scores,
        row_budgets,
        prefill.real_lengths,
        config.protected,
        compressed.index(layer_idx),
        len(compressed),
    )
    if head_shard is not None:
        counts = head_shard.own(counts, dim=1)
    # A row within its budget is kept whole, as it would be alone, however the allocator shares out the others.
    fits = prefill.real_lengths <= row_budgets
    counts = torch.where(fits[:, None], prefill.real_lengths[:, None].to(counts), counts)
    positions, slot_valid = select_tokens(scores, prefill.valid, counts, sink=config.sink, window=config.window)
    if bool((slot_valid == slot_valid[:, :1]).all()):
        return PaddedLayer.from_selection(prefill.keys, prefill.values, positions, slot_valid, seen)
    # Heads keep different counts: stored without padding to the longest head.
    packed = PackedLayer.from_selection(prefill.keys, prefill.values, positions, slot_valid, seen)
    packed.attends_packed = eviction.attn_implementation == VARLEN_ATTENTION
    if not packed.attends_packed:
        logger.warning_once(
            f"LookaheadCache stores per-head budgets packed, and under attn_implementation="
            f"{eviction.attn_implementation!r} each decoding step attends to a padded copy of every packed layer. "
            f"Load the model with attn_implementation='{VARLEN_ATTENTION}' (registered by `from lookahead_cache "
            "import LookaheadCache`) to decode them in place (on CPU at about the speed of uniform budgets)."
        )
    return packed
