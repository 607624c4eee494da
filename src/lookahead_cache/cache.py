"""LookaheadCache: a transformers Cache that evicts prompt tokens at the end of prefill."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer, get_layer_types_and_kwargs
from transformers.utils import logging

from .allocation import Allocator, allocation_name, get_allocator
from .attention import (
    SUPPORTED_ATTENTION,
    VARLEN_ATTENTION,
    PackedAttention,
    base_implementation,
    take_lookahead_queries,
)
from .config import (
    DEFAULT_ALLOCATION,
    DEFAULT_BUDGET,
    DEFAULT_SCORER,
    DEFAULT_SINK,
    DEFAULT_WINDOW,
    LookaheadCacheConfig,
)
from .layers import EvictingLayer
from .packed import PackedLayer
from .prefill import LayerPrefill, cache_argument, generate_prefill_chunks, padding_from_mask
from .scorers import Scorer, get_scorer, scorer_name, scorer_settings
from .selection import protected_positions, select_tokens

logger = logging.get_logger(__name__)

_WAITING, _PREFILLING, _DONE, _FAILED = "waiting", "prefilling", "done", "failed"
_AUTO, _LOOKAHEAD, _SNAPKV = "auto", "lookahead", "snapkv"


class LookaheadCache(Cache):
    """A `Cache` that keeps, in every layer and KV head, only `budget` prompt tokens after prefill.

    Pass it to `generate` as you would a `DynamicCache`::

        out = model.generate(**inputs, cache=LookaheadCache(budget=256))  # past_key_values= before transformers 5.24

    The first forward through the cache is the prefill. Each attention layer runs on the full prompt, so the
    first generated token is exactly what it would be without eviction; right after a layer's attention, its
    prompt tokens are scored, the best ones kept and the rest freed, so prefill never holds more than one
    uncompressed layer. With the `lookahead` scorer, the model's lookahead adapter appends its lookahead tokens
    after the prompt in that same forward, with the lookahead LoRA on their rows only; causal attention keeps the
    prompt rows blind to them. Each layer is scored with their queries, their keys and values are dropped, and
    their rows leave the model's output, so the prompt's cache and first token are the base model's.
    Later forwards (decoding, or a new turn continuing the same cache) append tokens without further eviction.
    Sliding-window layers (e.g. Gemma 3's local layers) keep their window as in `DynamicCache` and are not
    compressed.

    The cache finds the model's attention modules through the cache argument they receive (`cache=`, or
    `past_key_values=` before transformers 5.24): a process-wide forward hook watches for this cache until its
    prefill ends, then per-module hooks supply the attention masks of the compressed layers. No model code is
    modified.

    Args:
        budget: Prompt tokens kept per layer and KV head on average (int), or a fraction of each prompt in
            (0, 1] (float). Sink and window tokens count towards it. Defaults to 512 tokens: prompts up to 512
            tokens are kept whole, longer ones are compressed to 512 tokens per head. A prefill whose prompts all
            fit their budgets is not scored at all (the lookahead scorer adds no rows to it), whatever the
            allocation.
        scorer: Scorer name (`lookahead`, `snapkv`, `streaming`, `knorm`, `random`; see `available_scorers()`), a
            `Scorer` instance, or `"auto"` (the default): `lookahead` on a model that carries a lookahead adapter
            (`load_lookahead`, `load_default_model(lookahead=True)`), `snapkv` on any other model, which the cache
            logs once.
        allocation: Allocation name (`uniform`, `pyramid`, `adakv`, `lukv`; see `available_allocations()`) or an
            `Allocator` instance.
        sink: First prompt tokens always kept.
        window: Last prompt tokens always kept.
        scorer_kwargs: Arguments of the named scorer.
        allocation_kwargs: Arguments of the named allocator.
    """

    def __init__(
        self,
        budget: int | float = DEFAULT_BUDGET,
        scorer: str | Scorer = DEFAULT_SCORER,
        allocation: str | Allocator = DEFAULT_ALLOCATION,
        *,
        sink: int = DEFAULT_SINK,
        window: int = DEFAULT_WINDOW,
        scorer_kwargs: dict[str, Any] | None = None,
        allocation_kwargs: dict[str, Any] | None = None,
    ):
        # Instances are recorded by registered name and settings, so that `from_config` rebuilds them (an allocator
        # instance's own arguments, e.g. a loaded LU-KV profile, are not recorded).
        self.cache_config = LookaheadCacheConfig(
            budget=budget,
            scorer=scorer if isinstance(scorer, str) else scorer_name(scorer),
            allocation=allocation if isinstance(allocation, str) else allocation_name(allocation),
            sink=sink,
            window=window,
            scorer_kwargs=dict(scorer_kwargs or {}) if isinstance(scorer, str) else scorer_settings(scorer),
            allocation_kwargs=dict(allocation_kwargs or {}),
        )
        self._scorer_is_auto = scorer == _AUTO
        if self._scorer_is_auto and scorer_kwargs:
            raise ValueError(
                f"scorer_kwargs={scorer_kwargs} need a named scorer: with scorer='auto' they could go to either "
                "lookahead or snapkv. Pass scorer='lookahead' or scorer='snapkv' with them."
            )
        # "auto" starts as the lookahead scorer, so that an adapter on the model adds its rows to the prefill; with no
        # adapter the cache turns to snapkv before the first layer is bound (`_resolve_auto_scorer`).
        self.scorer = get_scorer(_LOOKAHEAD if self._scorer_is_auto else scorer, **(scorer_kwargs or {}))
        self.allocator = get_allocator(allocation, **(allocation_kwargs or {}))
        super().__init__(layer_class_to_replicate=EvictingLayer)
        # The process-wide watch and the per-module mask hooks, removed with the cache.
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        weakref.finalize(self, _remove_handles, self._hooks)
        self._arm()

    def _arm(self) -> None:
        """Empty, waiting for a prefill to evict."""
        self.layers = []
        self.peak_nbytes = 0
        self._state = _WAITING
        self._pending_layer: int | None = None
        self._layer_types: list[str] | None = None
        self._layer_kwargs: list[dict] | None = None
        self._compressed_layers: list[int] = []
        self._prefilled_layers: set[int] = set()
        self._lookahead_rows: int | None = None
        self._attn_implementation: str | None = None
        self._attention_modules: dict[int, nn.Module] = {}
        self._watch = _watch_for_modules(self)
        self._hooks.append(self._watch)

    def reset(self) -> None:
        """Empty the cache and re-arm it, settings kept: the next forward is a new prefill, evicted like the first
        (also after a prefill that raised)."""
        _remove_handles(self._hooks)
        self._hooks.clear()
        if self._scorer_is_auto:
            self.scorer = get_scorer(_LOOKAHEAD)
        self._arm()

    @classmethod
    def from_config(cls, config: LookaheadCacheConfig) -> LookaheadCache:
        return cls(
            budget=config.budget,
            scorer=config.scorer,
            allocation=config.allocation,
            sink=config.sink,
            window=config.window,
            scorer_kwargs=config.scorer_kwargs,
            allocation_kwargs=config.allocation_kwargs,
        )

    def fresh(self) -> LookaheadCache:
        """An empty cache with the same settings (and the same scorer and allocator objects)."""
        config = self.cache_config
        return type(self)(
            budget=config.budget,
            scorer=_AUTO if self._scorer_is_auto else self.scorer,
            allocation=self.allocator,
            sink=config.sink,
            window=config.window,
        )

    @classmethod
    def from_prefill(cls, prefills: Sequence[LayerPrefill], **settings: Any) -> LookaheadCache:
        """A cache compressed from a recorded prefill, as if it had run that prefill itself.

        Evaluations compare many scorers and budgets on one prompt: recording the prefill once (see
        `lookahead_cache.evaluation.replay.record_prefill`) and replaying each layer's eviction on the recorded
        keys, values and attention inputs gives the same cache as a prefill of its own, at the cost of the
        scoring alone. The recorded tensors are copied, never modified.

        Args:
            prefills: One `LayerPrefill` per layer of the model, in layer order.
            settings: `LookaheadCache` arguments (`budget`, `scorer`, ...).
        """
        cache = cls(**settings)
        cache._watch.remove()
        if [prefill.layer_idx for prefill in prefills] != list(range(len(prefills))):
            raise ValueError("from_prefill needs one LayerPrefill per layer, in layer order.")
        cache._resolve_auto_scorer(has_adapter=prefills[0].lookahead_queries is not None)
        cache._bind(prefills[0].module)
        for prefill in prefills:
            Cache.update(cache, prefill.keys, prefill.values, prefill.layer_idx)
            layer = cache.layers[prefill.layer_idx]
            cache._evict_layer(replace(prefill, keys=layer.keys, values=layer.values))
        cache._state = _DONE
        return cache

    @staticmethod
    def stack(caches: Sequence[LookaheadCache]) -> LookaheadCache:
        """One cache whose batch rows are the rows of `caches`: compressed caches of the same prompt, in order.

        The caches may differ in budget, scorer and allocation: in each layer the rows that keep fewer slots are
        left-padded with masked slots, as rows of one cache are. Evaluations use it to decode the answers of
        every method on a prompt in one `generate` call. The stacked cache reports the first cache's settings;
        the given caches are left unchanged.
        """
        if not caches:
            raise ValueError("LookaheadCache.stack needs at least one cache.")
        first = caches[0]
        for cache in caches:
            if not isinstance(cache, LookaheadCache) or not cache.is_compressed:
                raise ValueError(
                    "LookaheadCache.stack takes LookaheadCaches whose prefill has ended (e.g. built with "
                    f"LookaheadCache.from_prefill); got {cache!r}."
                )
            lengths = [layer.get_seq_length() for layer in cache.layers]
            if lengths != [layer.get_seq_length() for layer in first.layers]:
                raise ValueError(
                    "LookaheadCache.stack needs caches of the same prompt, with as many tokens seen in every layer; "
                    f"got layer lengths {lengths} and {[layer.get_seq_length() for layer in first.layers]}."
                )
        stacked = first.fresh()
        stacked._watch.remove()
        stacked._layer_types, stacked._layer_kwargs = first._layer_types, first._layer_kwargs
        stacked._compressed_layers = list(first._compressed_layers)
        stacked.layers = [
            _stack_layers([cache.layers[layer_idx] for cache in caches]) for layer_idx in range(len(first.layers))
        ]
        for layer_idx, module in first._attention_modules.items():
            stacked._register_mask_hook(layer_idx, module)
        stacked._prefilled_layers = set(range(len(stacked.layers)))
        stacked._state = _DONE
        stacked.peak_nbytes = stacked.nbytes()
        return stacked

    def __repr__(self) -> str:
        config = self.cache_config
        return (
            f"{type(self).__name__}(budget={config.budget}, scorer={config.scorer!r}, "
            f"allocation={config.allocation!r}, sink={config.sink}, window={config.window}, state={self._state!r})"
        )

    # ----- Cache API -------------------------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._state == _DONE:
            self._check_batch_size(key_states, layer_idx)
        else:
            self._enter_prefill_layer(layer_idx)
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._state == _PREFILLING:
            self._record_peak()
        return keys, values

    @torch.compiler.disable
    def _enter_prefill_layer(self, layer_idx: int) -> None:
        # Eager under torch.compile, like all of the prefill's bookkeeping: it walks frames and reads tensor sizes.
        if self._state == _WAITING:
            chunks = generate_prefill_chunks()
            if chunks > 1:
                raise ValueError(
                    f"LookaheadCache cannot take generate(prefill_chunk_size=...) yet: it evicts at the end of the "
                    f"first forward, so the other {chunks - 1} chunks of this prompt would be kept whole, beyond "
                    f"budget={self.cache_config.budget}. Pass prefill_chunk_size=None (or a chunk size no smaller "
                    "than the prompt), or use a DynamicCache for chunked prefill."
                )
            self._state = _PREFILLING
        if self._state == _FAILED or layer_idx in self._prefilled_layers or layer_idx == self._pending_layer:
            # A layer that already stored this prefill's keys is stored again: the forward that began the prefill
            # raised before its end, and a new one started.
            self._state = _FAILED
            raise RuntimeError(
                "This LookaheadCache's prefill raised before it ended (see that error), leaving its layers partly "
                "compressed, so it cannot be continued. Call `cache.reset()` to reuse it for a new prompt, or pass a "
                "fresh LookaheadCache."
            )
        if self._pending_layer is not None:
            raise self._attention_not_found(self._pending_layer)
        self._pending_layer = layer_idx

    def _check_batch_size(self, key_states: torch.Tensor, layer_idx: int) -> None:
        layer = self.layers[layer_idx]
        stored = layer.batch_size if isinstance(layer, PackedLayer) else layer.keys.shape[0]
        if key_states.shape[0] != stored:
            raise ValueError(
                f"This LookaheadCache holds {stored} compressed prompt(s), but the forward passes a batch of "
                f"{key_states.shape[0]}: a cache continues the batch whose prompt it compressed. Pass a fresh "
                "LookaheadCache (or call `cache.reset()`) for a new batch."
            )

    @torch.compiler.disable
    def _record_peak(self) -> None:
        # Eager under torch.compile: byte counts of tensors with symbolic shapes cannot be read.
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())

    @property
    def wants_lookahead_rows(self) -> bool:
        """True before the prefill of a cache whose scorer reads lookahead queries: the model's lookahead adapter
        then appends its rows to the prefill (see `lookahead_cache.adapters.lookahead`)."""
        return self._state == _WAITING and self.scorer.needs_lookahead

    def receive_lookahead_rows(self, num_tokens: int) -> None:
        """Told by the lookahead adapter's hooks: the coming prefill ends with `num_tokens` lookahead rows (0: the
        adapter is there, but the prompt is kept whole, so it adds none)."""
        if not self.wants_lookahead_rows:
            raise RuntimeError("Lookahead rows can only join the prefill of a cache with the lookahead scorer.")
        self._lookahead_rows = num_tokens

    @property
    def is_compressed(self) -> bool:
        """True once the prefill has ended and its eviction has run."""
        return self._state == _DONE

    def kept_tokens(self) -> torch.Tensor:
        """Stored tokens that attention reads, `[num_layers, batch, kv_heads]` (padding slots excluded)."""
        counts = []
        for layer in self.layers:
            if isinstance(layer, (EvictingLayer, PackedLayer)):
                counts.append(layer.kept_tokens())
            else:
                batch, kv_heads, slots, _ = layer.keys.shape
                counts.append(torch.full((batch, kv_heads), slots, dtype=torch.long))
        if not counts:
            return torch.zeros(0, 0, 0, dtype=torch.long)
        return torch.stack(counts)

    def nbytes(self) -> int:
        """Bytes held by the stored keys and values of every layer."""
        return sum(
            layer.nbytes() if isinstance(layer, PackedLayer) else layer.keys.nbytes + layer.values.nbytes
            for layer in self._stored_layers()
        )

    def full_cache_nbytes(self) -> int:
        """Bytes the model's own cache would hold after the same tokens (the `DynamicCache` that `generate` builds
        from the model's config): every token seen, padding included, in each full-attention layer, and each
        sliding-window layer's window. `cache.nbytes()` beside it is what eviction saves."""
        return sum(
            layer.full_nbytes()
            if isinstance(layer, (EvictingLayer, PackedLayer))
            else layer.keys.nbytes + layer.values.nbytes
            for layer in self._stored_layers()
        )

    def _stored_layers(self) -> list:
        return [
            layer
            for layer in self.layers
            if layer.is_initialized and (isinstance(layer, PackedLayer) or layer.keys is not None)
        ]

    # ----- end of prefill --------------------------------------------------------------------------------

    @torch.compiler.disable
    def _on_module_done(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Called after every module that received this cache, until the prefill is over."""
        if self._pending_layer is not None:
            # The innermost module that received the cache and returned after `update` is the attention module.
            layer_idx, self._pending_layer = self._pending_layer, None
            self._end_prefill_of_layer(layer_idx, module, args, kwargs)
        elif isinstance(module, PreTrainedModel) and self._state == _PREFILLING:
            missing = sorted(set(range(len(self.layers))) - self._prefilled_layers)
            if missing:
                raise self._attention_not_found(missing[0])
            self._state = _DONE
            self._watch.remove()
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes())

    def _attention_not_found(self, layer_idx: int) -> RuntimeError:
        return RuntimeError(
            f"LookaheadCache could not find the attention module of layer {layer_idx}: it stored keys but no module "
            "that received the cache as its `cache` (or `past_key_values`) keyword argument returned afterwards. "
            "LookaheadCache supports transformers models whose attention modules take the cache as a keyword argument "
            "(Llama, Qwen2/3, Mistral, Gemma 3 and other models written in the transformers v5 style)."
        )

    def _bind(self, module: nn.Module) -> None:
        config = module.config
        implementation = base_implementation(getattr(config, "_attn_implementation", None))
        if implementation not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"LookaheadCache supports attn_implementation 'sdpa', 'eager' and '{VARLEN_ATTENTION}', but the model "
                f"uses {implementation!r}. Load it with `attn_implementation='sdpa'`."
            )
        self._attn_implementation = implementation
        self._layer_types, layer_kwargs = get_layer_types_and_kwargs(config)
        if isinstance(layer_kwargs, dict):  # before transformers 5.24: one dict for every layer
            layer_kwargs = [layer_kwargs] * len(self._layer_types)
        self._layer_kwargs = layer_kwargs
        unsupported = sorted(set(self._layer_types) - {"full_attention", "sliding_attention"})
        if unsupported:
            raise ValueError(
                f"LookaheadCache supports full and sliding-window attention layers; this model also has {unsupported}."
            )
        self._compressed_layers = [i for i, kind in enumerate(self._layer_types) if kind == "full_attention"]
        self.allocator.bind(module, self.scorer, self.cache_config)
        if not self._compressed_layers:
            logger.warning("Every attention layer of this model uses a sliding window: LookaheadCache evicts nothing.")

    def _resolve_auto_scorer(self, has_adapter: bool) -> None:
        """scorer='auto' stays the lookahead scorer on a model with a lookahead adapter and turns to snapkv on any
        other; said once per process, since a library that evicts should not do so silently."""
        if not self._scorer_is_auto or has_adapter:
            return
        self.scorer = get_scorer(_SNAPKV)
        logger.warning_once(
            "LookaheadCache(scorer='auto'): this model has no lookahead adapter, so prompt tokens are scored with "
            "snapkv. Load an adapter with `lookahead_cache.load_lookahead(model, repo_or_dir)` to use the learned "
            "lookahead scorer, or pass scorer='snapkv' to choose snapkv explicitly (and silence this message)."
        )

    def _end_prefill_of_layer(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._layer_types is None:
            # The adapter's hook has announced its rows (or not) before the first layer ran.
            self._resolve_auto_scorer(has_adapter=self._lookahead_rows is not None)
            # Before reading the mask: an unsupported attention implementation passes masks of its own kind.
            self._bind(module)
        layer = self.layers[layer_idx]
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        batch, _, length, _ = layer.keys.shape
        prefill = LayerPrefill(
            module=module,
            layer_idx=layer_idx,
            keys=layer.keys,
            values=layer.values,
            hidden_states=hidden_states,
            position_embeddings=kwargs.get("position_embeddings"),
            valid=padding_from_mask(kwargs.get("attention_mask"), batch, length, layer.keys.device),
        )
        if self._lookahead_rows:
            prefill = self._split_lookahead_rows(prefill)
        elif self.scorer.needs_lookahead and self._lookahead_rows is None:
            raise ValueError(
                "scorer='lookahead' needs a model with a lookahead adapter: load one with "
                "`model = lookahead_cache.load_lookahead(base_model, repo_or_dir)` (PEFT's own "
                "`PeftModel.from_pretrained` loads the LoRA but not the lookahead embeddings), or use "
                "`lookahead_cache.load_default_model(lookahead=True)`. Otherwise pick a heuristic scorer, e.g. "
                "LookaheadCache(budget=256, scorer='snapkv')."
            )
        self._evict_layer(prefill)

    def _split_lookahead_rows(self, prefill: LayerPrefill) -> LayerPrefill:
        """The prompt part of a layer whose prefill ended with lookahead rows, with their queries; the lookahead
        tokens only vote, so their keys and values leave the cache."""
        prompt_length = prefill.prompt_length - self._lookahead_rows
        queries = take_lookahead_queries(prefill.module)
        layer = self.layers[prefill.layer_idx]
        layer.crop(-self._lookahead_rows)
        position_embeddings = prefill.position_embeddings
        if position_embeddings is not None:
            position_embeddings = tuple(part[:, :prompt_length] for part in position_embeddings)
        return replace(
            prefill,
            keys=layer.keys,
            values=layer.values,
            hidden_states=prefill.hidden_states[:, :prompt_length],
            position_embeddings=position_embeddings,
            valid=prefill.valid[:, :prompt_length],
            lookahead_queries=queries,
        )

    def _evict_layer(self, prefill: LayerPrefill) -> None:
        """Compress one layer whose prompt KV is complete (sliding-window layers only keep their window)."""
        layer_idx = prefill.layer_idx
        self._register_mask_hook(layer_idx, prefill.module)
        self._prefilled_layers.add(layer_idx)
        layer = self.layers[layer_idx]
        if self._layer_types[layer_idx] == "sliding_attention":
            sliding = DynamicSlidingWindowLayer(**self._layer_kwargs[layer_idx])
            sliding.update(layer.keys, layer.values)
            self.layers[layer_idx] = sliding
            return

        real_lengths = prefill.real_lengths.tolist()
        if self.cache_config.keeps_whole(real_lengths):
            layer.keep_whole(prefill.valid)
            return

        scores = self.scorer.score(prefill)
        batch, kv_heads, length, _ = layer.keys.shape
        if scores.shape != (batch, kv_heads, length):
            raise ValueError(
                f"{type(self.scorer).__name__}.score returned shape {tuple(scores.shape)}, expected "
                f"(batch, kv_heads, prompt_len) = {(batch, kv_heads, length)}."
            )
        row_budgets = torch.tensor([self.cache_config.row_budget(n) for n in real_lengths], device=scores.device)
        # Allocators share out the selectable tokens: sink, window and padding are not theirs to rank.
        selectable = prefill.valid & ~protected_positions(
            prefill.valid, sink=self.cache_config.sink, window=self.cache_config.window
        )
        counts = self.allocator.allocate(
            scores.masked_fill(~selectable[:, None], float("-inf")),
            row_budgets,
            prefill.real_lengths,
            self.cache_config.protected,
            self._compressed_layers.index(layer_idx),
            len(self._compressed_layers),
        )
        # A row within its budget is kept whole, as it would be alone, however the allocator shares out the others.
        fits = prefill.real_lengths <= row_budgets
        counts = torch.where(fits[:, None], prefill.real_lengths[:, None].to(counts), counts)
        positions, slot_valid = select_tokens(
            scores, prefill.valid, counts, sink=self.cache_config.sink, window=self.cache_config.window
        )
        if bool((slot_valid == slot_valid[:, :1]).all()):
            layer.compress(positions, slot_valid)
        else:
            # Heads keep different counts: stored without padding to the longest head.
            packed = PackedLayer.from_selection(
                layer.keys, layer.values, positions, slot_valid, layer.cumulative_length
            )
            packed.attends_packed = self._attn_implementation == VARLEN_ATTENTION
            if not packed.attends_packed:
                logger.warning_once(
                    f"LookaheadCache stores per-head budgets packed, and under attn_implementation="
                    f"{self._attn_implementation!r} each decoding step attends to a padded copy of every packed layer. "
                    f"Load the model with attn_implementation='{VARLEN_ATTENTION}' (registered by `from "
                    "lookahead_cache import LookaheadCache`) to decode them in place (on CPU at about the speed of "
                    "uniform budgets)."
                )
            self.layers[layer_idx] = packed
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())

    def _register_mask_hook(self, layer_idx: int, module: nn.Module) -> None:
        self._attention_modules[layer_idx] = module
        self._hooks.append(module.register_forward_pre_hook(_physical_mask_hook(self, layer_idx), with_kwargs=True))


def _watch_for_modules(cache: LookaheadCache) -> torch.utils.hooks.RemovableHandle:
    """A process-wide forward hook that reports to `cache` every module called with it, until its prefill ends."""
    cache_ref = weakref.ref(cache)

    def hook(module, args, kwargs, output):
        cache = cache_ref()
        if cache is not None and cache_argument(kwargs) is cache:
            cache._on_module_done(module, args, kwargs)

    return nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)


def compressed_layer_mask(
    layer: EvictingLayer | PackedLayer, module: nn.Module, attention_mask, hidden_states: torch.Tensor
):
    """The attention mask of a compressed layer for `module` (its attention module): its own padding slots, then the
    new tokens' mask; None when nothing needs masking."""
    slot_valid = layer.slot_valid()
    batch, query_length = hidden_states.shape[:2]
    if slot_valid is None and attention_mask is None and query_length == 1:
        return None
    slots = layer.get_mask_sizes(0)[0]
    device = hidden_states.device
    if attention_mask is None:
        new = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()[None, None]
    else:
        new = attention_mask[..., -query_length:]
        new = new if new.dtype == torch.bool else new == 0
    past = (
        torch.ones(batch, 1, 1, slots, dtype=torch.bool, device=device)
        if slot_valid is None
        else slot_valid[:, :, None]
    )
    heads = max(past.shape[1], new.shape[1])
    mask = torch.cat(
        [past.expand(batch, heads, query_length, slots), new.expand(batch, heads, query_length, query_length)],
        dim=-1,
    )
    if heads > 1:
        mask = mask.repeat_interleave(module.num_key_value_groups, dim=1)
    if module.config._attn_implementation == "eager":
        dtype = (
            attention_mask.dtype if attention_mask is not None and attention_mask.is_floating_point() else layer.dtype
        )
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def _physical_mask_hook(cache: LookaheadCache, layer_idx: int):
    cache_ref = weakref.ref(cache)

    def hook(module, args, kwargs):
        cache = cache_ref()
        if cache is None or cache_argument(kwargs) is not cache:
            return None
        layer = cache.layers[layer_idx]
        if not (isinstance(layer, (EvictingLayer, PackedLayer)) and layer.is_compressed):
            return None
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if getattr(layer, "attends_packed", False):
            # The varlen attention reads the packed layer itself; several new tokens also need the padded mask.
            mask = None
            if hidden_states.shape[1] > 1:
                mask = compressed_layer_mask(layer, module, kwargs.get("attention_mask"), hidden_states)
            kwargs["attention_mask"] = PackedAttention(layer, mask)
        else:
            kwargs["attention_mask"] = compressed_layer_mask(layer, module, kwargs.get("attention_mask"), hidden_states)
        return args, kwargs

    return hook


def _stack_layers(layers: list) -> EvictingLayer | DynamicSlidingWindowLayer:
    """The rows of `layers` (one layer of each cache) in one layer; compressed prompts are left-padded."""
    layers = [layer.to_padded() if isinstance(layer, PackedLayer) else layer for layer in layers]
    first = layers[0]
    if not isinstance(first, EvictingLayer):
        if any(type(layer) is not type(first) for layer in layers):
            raise ValueError("LookaheadCache.stack needs caches of the same model: their layer kinds differ.")
        stacked = copy.copy(first)
        stacked.keys = torch.cat([layer.keys for layer in layers])
        stacked.values = torch.cat([layer.values for layer in layers])
        return stacked
    return EvictingLayer.stack(layers)


def _remove_handles(handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
