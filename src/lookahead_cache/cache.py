"""LookaheadCache: a transformers Cache that evicts prompt tokens at the end of prefill.

A prompt goes through the package in this order: the prefill captures each layer (`prefill`, with the lookahead rows
of `lookahead_rows` and the attention modules found by `discovery`), `eviction` scores it (`scorers`), shares the
budget out (`allocation`), selects the kept tokens (`selection`) and stores them (`storage`), and decoding attends
to them (`decoding`). This module holds the Cache API and the cache's state.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.utils import logging

from .allocation import Allocator, allocation_name, get_allocator
from .config import (
    DEFAULT_ALLOCATION,
    DEFAULT_BUDGET,
    DEFAULT_GENERATION_INTERVAL,
    DEFAULT_SCORER,
    DEFAULT_SINK,
    DEFAULT_WINDOW,
    LookaheadCacheConfig,
)
from .decode_eviction import GenerationEviction
from .decoding import decode_mask_hook
from .discovery import AttentionWatch, attention_not_found
from .eviction import FULL_ATTENTION, Eviction, evict_layer
from .lookahead_rows import LookaheadRows
from .prefill import (
    LayerPrefill,
    attention_input,
    cache_argument,
    generate_prefill_chunk,
    generate_prefill_chunks,
    padding_from_mask,
)
from .scorers import Scorer, get_scorer, scorer_name, scorer_settings
from .storage import PaddedLayer, StoredLayer, stack_layers

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
    Later forwards (decoding, or a new turn continuing the same cache) append tokens without further eviction,
    unless `evict_every_prefill=True`. A prompt that `generate(..., prefill_chunk_size=C)` reads in chunks is
    evicted after every chunk, so that no layer holds more than budget + C tokens per KV head.
    With `generation_budget`, the tokens after the prompt (the answer, later turns) are evicted during decoding too,
    so that `max_new_tokens` far beyond the budget runs in bounded memory (`lookahead_cache.decode_eviction`).
    Sliding-window layers (e.g. Gemma 3's local layers) keep their window as in `DynamicCache` and are not
    compressed.

    The cache finds the model's attention modules through the cache argument they receive (`cache=`, or
    `past_key_values=` before transformers 5.24; see `lookahead_cache.discovery`), evicts each layer with
    `lookahead_cache.eviction.evict_layer`, and hands the attention modules of compressed layers the masks of their
    slots (`lookahead_cache.decoding`). No model code is modified.

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
        evict_every_prefill: Evict again at every later forward of several tokens (a new turn of a conversation,
            or the next chunk of a prompt read in a loop of forwards), down to the budget, so that a session never
            holds more than the budget plus the current forward's tokens per layer and KV head. False (the default):
            only the first forward evicts; later turns are kept whole. Needs an int budget, a scorer that does not
            read lookahead rows and an allocation that gives the heads of a layer equal counts (`uniform`,
            `pyramid`); its later prefills score the tokens kept so far and the new ones together, with the new
            tokens' queries.
        generation_budget: Tokens after the prompt (generated ones, and later turns appended whole) kept per layer
            and KV head; None (the default) keeps them all. When a layer holds that many, the queries of its last
            `generation_interval` tokens vote for `generation_budget - generation_interval` of them to keep (its
            last `window` always), so a layer never holds more than `generation_budget` tokens after its prompt.
        generation_interval: Tokens generated between two evictions of the generated part.
        streaming_budget: With `generate(prefill_chunk_size=...)`, the chunks before the last are evicted to this
            many tokens per layer and KV head (at least `budget`), the last (the end of the prompt, with its
            question) to `budget`, so that the question's queries or lookahead rows choose among more of the earlier
            tokens; the prefill then holds up to streaming_budget + chunk tokens per layer and KV head. None (the
            default): every chunk is evicted to `budget`.
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
        evict_every_prefill: bool = False,
        generation_budget: int | None = None,
        generation_interval: int = DEFAULT_GENERATION_INTERVAL,
        streaming_budget: int | None = None,
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
            evict_every_prefill=evict_every_prefill,
            generation_budget=generation_budget,
            generation_interval=generation_interval,
            streaming_budget=streaming_budget,
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
        if evict_every_prefill:
            self._check_evicts_again("evict_every_prefill=True")
        super().__init__(layer_class_to_replicate=PaddedLayer)
        # The per-module mask hooks and the attention watch, removed with the cache.
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        weakref.finalize(self, _remove_handles, self._hooks)
        self._prefill_observers: list[Callable[[LayerPrefill], None]] = []
        self._arm()

    def _arm(self) -> None:
        """Empty, waiting for a prefill to evict."""
        self.layers: list[StoredLayer] = []
        self.peak_nbytes = 0
        self._state = _WAITING
        self._eviction: Eviction | None = None
        # True from the second prefill of a cache that evicts every prefill (or every chunk of a prompt) on.
        self._later_prefill = False
        self._prefilled_layers: set[int] = set()
        self._lookahead_rows: LookaheadRows | None = None
        self._question_ids: torch.Tensor | None = None
        self._attention_modules: dict[int, nn.Module] = {}
        self._generation_eviction: GenerationEviction | None = None
        # True while a chunk of a `generate(prefill_chunk_size=...)` prefill but its last is evicted.
        self._streaming_chunk = False
        self._watch: AttentionWatch | None = AttentionWatch(self, self._end_layer_prefill, self._end_prefill)

    def reset(self) -> None:
        """Empty the cache and re-arm it, settings kept: the next forward is a new prefill, evicted like the first
        (also after a prefill that raised)."""
        self._stop_watching()
        _remove_handles(self._hooks)
        self._hooks.clear()
        if self._scorer_is_auto:
            self.scorer = get_scorer(_LOOKAHEAD)
        self._arm()

    def set_question(self, question_ids: torch.Tensor | None) -> None:
        """Tell the cache the question that ends the prompt it is about to read in chunks, so that every chunk's
        eviction is question-aware, as a one-shot prefill's is.

        While `generate(..., prefill_chunk_size=C)` reads the prompt, each chunk before the last carries the question's
        tokens after its own, then the lookahead rows: they attend to the tokens kept so far and to the chunk, so the
        lookahead rows vote knowing the question, as they do after the whole prompt. The question's rows leave the
        cache with the lookahead rows (the last chunk holds the question itself) and cost `m` more rows per chunk.
        The question is dropped once the prompt is read; `reset()` drops it too.

        Args:
            question_ids: Token ids `[m]` or `[1 or batch, m]` of the question (as they end the prompt), or None to
                drop it.

        Raises:
            ValueError: The cache's scorer does not read lookahead rows (a heuristic scorer scores each chunk with
                the chunk's own queries), the ids are not a non-empty integer tensor, or the prefill has begun.
        """
        if question_ids is None:
            self._question_ids = None
            return
        if self._state != _WAITING:
            raise ValueError(
                "set_question must come before the prompt's prefill: this cache has read a prompt already. Call "
                "`cache.reset()` first to read a new prompt."
            )
        if not self.scorer.needs_lookahead:
            raise ValueError(
                f"set_question guides the lookahead scorer, whose rows follow the question in every chunk; scorer "
                f"{self.cache_config.scorer!r} scores a chunk with its own last queries and has no rows to carry it. "
                "Use scorer='lookahead' (or 'auto') on a model with a lookahead adapter."
            )
        if not isinstance(question_ids, torch.Tensor) or question_ids.is_floating_point() or question_ids.is_complex():
            raise ValueError(f"question_ids must be a tensor of token ids, got {type(question_ids).__name__}.")
        if question_ids.dim() == 1:
            question_ids = question_ids[None]
        if question_ids.dim() != 2 or question_ids.shape[-1] == 0:
            raise ValueError(
                f"question_ids must hold the question's token ids as `[m]` or `[batch, m]` with m > 0, got shape "
                f"{tuple(question_ids.shape)}."
            )
        self._question_ids = question_ids.long()

    def question_for_prefill(self) -> torch.Tensor | None:
        """The question's token ids that the coming forward carries after its tokens (see `set_question`): a chunk
        of `generate(prefill_chunk_size=...)` before the last; None for any other forward."""
        if self._question_ids is None:
            return None
        chunk, lengths = generate_prefill_chunk()
        return self._question_ids if _before_last_evicting_chunk(chunk, lengths) else None

    def observe_prefill(self, observer: Callable[[LayerPrefill], None]) -> None:
        """Call `observer` with each layer's `LayerPrefill` (what eviction scores) right before its eviction, e.g.
        to record a prefill once and replay it with other settings (`lookahead_cache.evaluation.replay`)."""
        self._prefill_observers.append(observer)

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
            evict_every_prefill=config.evict_every_prefill,
            generation_budget=config.generation_budget,
            generation_interval=config.generation_interval,
            streaming_budget=config.streaming_budget,
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
            evict_every_prefill=config.evict_every_prefill,
            generation_budget=config.generation_budget,
            generation_interval=config.generation_interval,
            streaming_budget=config.streaming_budget,
        )

    @classmethod
    def from_prefill(cls, prefills: Sequence[LayerPrefill], **settings: Any) -> LookaheadCache:
        """A cache compressed from a recorded prefill, as if it had run that prefill itself.

        Evaluations compare many scorers and budgets on one prompt: recording the prefill once (see
        `lookahead_cache.evaluation.replay.record_prefill`) and evicting each recorded layer as a live prefill does
        (`evict_layer`) gives the same cache as a prefill of its own, at the cost of the scoring alone. The recorded
        tensors are read, never modified.

        Args:
            prefills: One `LayerPrefill` per layer of the model, in layer order.
            settings: `LookaheadCache` arguments (`budget`, `scorer`, ...).
        """
        cache = cls(**settings)
        cache._stop_watching()
        if [prefill.layer_idx for prefill in prefills] != list(range(len(prefills))):
            raise ValueError("from_prefill needs one LayerPrefill per layer, in layer order.")
        cache._resolve_auto_scorer(has_adapter=prefills[0].lookahead_queries is not None)
        cache._bind(prefills[0].module)
        for prefill in prefills:
            cache.layers.append(PaddedLayer())
            cache._evict(prefill)
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
        stacked._stop_watching()
        stacked._set_eviction(first._eviction)
        stacked.layers = [stack_layers([cache.layers[i] for cache in caches]) for i in range(len(first.layers))]
        for layer_idx, module in first._attention_modules.items():
            stacked._hand_masks_to(layer_idx, module)
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
            if key_states.shape[-2] > 1:
                self._start_later_prefill()
        if self._state != _DONE:
            self._enter_prefill_layer(layer_idx)
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._state == _PREFILLING:
            self._record_peak()
        return keys, values

    @torch.compiler.disable
    def _enter_prefill_layer(self, layer_idx: int) -> None:
        # Eager under torch.compile, like all of the prefill's bookkeeping: it walks frames and reads tensor sizes.
        if self._state == _WAITING:
            # The adapter's hook has announced its rows (or not) before the first layer ran.
            self._resolve_auto_scorer(has_adapter=self._lookahead_rows is not None)
            if self._question_ids is not None and not self.scorer.needs_lookahead:
                raise ValueError(
                    "This LookaheadCache was given a question (set_question), which guides the lookahead scorer, but "
                    "the model has no lookahead adapter, so scorer='auto' turned to snapkv. Load an adapter with "
                    "`lookahead_cache.load_lookahead(model, repo_or_dir)`, or drop the question."
                )
            chunk, lengths = generate_prefill_chunk()
            self._streaming_chunk = _before_last_evicting_chunk(chunk, lengths)
            chunks = max(1, len(lengths))
            if self._question_ids is not None and chunks == 1 and self.cache_config.evict_every_prefill:
                raise ValueError(
                    "This LookaheadCache holds a question (set_question), which guides the chunks of a prompt that "
                    "generate(..., prefill_chunk_size=...) reads; with evict_every_prefill=True, forwards of their own "
                    "(a loop of chunks, or turns) evict too, and the cache cannot tell which forward ends the prompt. "
                    "Drop the question with `cache.set_question(None)`, or read the prompt with "
                    "generate(prefill_chunk_size=...)."
                )
            if chunks > 1 or self.cache_config.evict_every_prefill:
                what = (
                    "evict_every_prefill=True"
                    if chunks == 1
                    else f"generate(prefill_chunk_size=...) in {chunks} chunks"
                )
                self._check_evicts_again(what)
            self._state = _PREFILLING
        if self._state == _FAILED or layer_idx in self._prefilled_layers or layer_idx == self._watch.pending_layer:
            # A layer that already stored this prefill's keys is stored again: the forward that began the prefill
            # raised before its end, and a new one started.
            self._state = _FAILED
            raise RuntimeError(
                "This LookaheadCache's prefill raised before it ended (see that error), leaving its layers partly "
                "compressed, so it cannot be continued. Call `cache.reset()` to reuse it for a new prompt, or pass a "
                "fresh LookaheadCache."
            )
        self._watch.layer_stored(layer_idx)

    @torch.compiler.disable
    def _start_later_prefill(self) -> None:
        """A forward of several tokens through a compressed cache: a new prefill to evict when the cache evicts every
        prefill or `generate` reads the prompt in chunks; appended whole otherwise."""
        chunk, lengths = generate_prefill_chunk()
        if not (self.cache_config.evict_every_prefill or len(lengths) > 1):
            return
        heads_disagree = [
            i
            for i, layer in enumerate(self.layers)
            if (valid := layer.slot_valid()) is not None and not bool((valid == valid[:, :1]).all())
        ]
        if heads_disagree:
            raise ValueError(
                f"Layers {heads_disagree} of this LookaheadCache keep different counts per KV head, which a later "
                "prefill cannot evict again. Use allocation='uniform' or 'pyramid' with chunked prefill or "
                "evict_every_prefill=True."
            )
        self._state = _PREFILLING
        self._later_prefill = True
        self._prefilled_layers = set()
        self._streaming_chunk = _before_last_evicting_chunk(chunk, lengths)
        self._watch = AttentionWatch(self, self._end_layer_prefill, self._end_prefill)

    def _evicts_later_prefills(self) -> bool:
        return self.cache_config.evict_every_prefill or generate_prefill_chunks() > 1

    def _check_evicts_again(self, what: str) -> None:
        """Refuse settings that a cache evicting more than one prefill cannot keep."""
        config = self.cache_config
        if isinstance(config.budget, float):
            raise ValueError(
                f"{what} needs a budget in tokens: budget={config.budget} is a fraction of a prompt, which a cache "
                "that evicts every chunk or turn does not know. Pass an int budget."
            )
        if self.allocator.per_head:
            raise ValueError(
                f"{what} needs an allocation that gives the KV heads of a layer equal counts ('uniform', "
                f"'pyramid'); {allocation_name(self.allocator)!r} gives them different ones, which a later prefill "
                "cannot evict again."
            )

    def _check_batch_size(self, key_states: torch.Tensor, layer_idx: int) -> None:
        stored = self.layers[layer_idx].batch_size
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

    def wants_lookahead_rows(self, new_tokens: int) -> bool:
        """Whether a coming forward of `new_tokens` tokens is a prefill this cache evicts with the lookahead scorer:
        its first forward, and, when it evicts every prefill or `generate` reads the prompt in chunks, every later
        forward of several tokens. The model's lookahead adapter then appends its rows to that forward (see
        `lookahead_cache.adapters.injection`)."""
        if not self.scorer.needs_lookahead:
            return False
        if self._state == _WAITING:
            return True
        return self._state == _DONE and new_tokens > 1 and self._evicts_later_prefills()

    def keeps_prefill_whole(self, prompt_lengths: list[int], new_tokens: int) -> bool:
        """Whether the coming prefill (rows of `prompt_lengths` real tokens in a first prefill; `new_tokens` more in a
        later one) fits the budget in every layer, so that no layer scores it and no lookahead rows are needed."""
        if self._state == _WAITING:
            return self.cache_config.keeps_whole(prompt_lengths)
        kept = max((int(self.layers[i].kept_tokens().max()) for i in self._eviction.compressed_layers), default=0)
        return self.cache_config.keeps_whole([kept + new_tokens])

    def receive_lookahead_rows(self, rows: LookaheadRows) -> None:
        """Told by the lookahead adapter's hooks: the coming prefill ends with `rows` (none, `rows.count == 0`, when
        every layer keeps it whole)."""
        if not self.scorer.needs_lookahead or self._state not in (_WAITING, _DONE):
            raise RuntimeError("Lookahead rows can only join a prefill of a cache with the lookahead scorer.")
        self._lookahead_rows = rows

    @property
    def is_compressed(self) -> bool:
        """True once the prefill has ended and its eviction has run."""
        return self._state == _DONE

    def kept_tokens(self) -> torch.Tensor:
        """Stored tokens that attention reads, `[num_layers, batch, kv_heads]` (padding slots excluded), on the first
        layer's device (a model placed with `device_map` keeps each layer's cache on that layer's device)."""
        if not self.layers:
            return torch.zeros(0, 0, 0, dtype=torch.long)
        counts = [layer.kept_tokens() for layer in self.layers]
        return torch.stack([count.to(counts[0].device) for count in counts])

    def reset_peak(self) -> None:
        """Start `peak_nbytes` over from the bytes held now, e.g. to measure a session's later turns apart from its
        first prefill."""
        self.peak_nbytes = self.nbytes()

    def nbytes(self) -> int:
        """Bytes held by the stored keys and values of every layer."""
        return sum(layer.nbytes() for layer in self.layers if layer.is_initialized)

    def full_cache_nbytes(self) -> int:
        """Bytes the model's own cache would hold after the same tokens (the `DynamicCache` that `generate` builds
        from the model's config): every token seen, padding included, in each full-attention layer, and each
        sliding-window layer's window. `cache.nbytes()` beside it is what eviction saves."""
        return sum(layer.full_nbytes() for layer in self.layers if layer.is_initialized)

    # ----- end of prefill --------------------------------------------------------------------------------

    @torch.compiler.disable
    def _end_layer_prefill(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Layer `layer_idx`'s attention module returned: its prompt KV is complete."""
        if self._eviction is None:
            # Before reading the mask: an unsupported attention implementation passes masks of its own kind.
            self._bind(module)
        if self._later_prefill and self._eviction.layer_types[layer_idx] != FULL_ATTENTION:
            # A later prefill through a sliding window: the window bounds it already.
            if self._lookahead_rows is not None and self._lookahead_rows.count:
                raise ValueError(
                    "The lookahead scorer evicts later prefills (chunks of a prompt, turns of a session) of models "
                    "with full attention only: this model's sliding-window layers would keep the lookahead rows in "
                    "their window. Pass scorer='snapkv' (or another heuristic scorer), or read the prompt in one "
                    "forward."
                )
            self._prefilled_layers.add(layer_idx)
        else:
            self._evict(self._layer_prefill(layer_idx, module, args, kwargs))
        if self._later_prefill and len(self._prefilled_layers) == len(self.layers):
            # The model's own forward hooks may not run: it started before this prefill's watch existed, and torch
            # skips the global hooks of a call that began without any. Every layer is known, so its last one ends it.
            self._end_prefill()

    def _layer_prefill(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict) -> LayerPrefill:
        """What layer `layer_idx`'s eviction scores, right after its attention module returned."""
        layer = self.layers[layer_idx]
        hidden_states = attention_input(args, kwargs)
        batch, _, length, _ = layer.keys.shape
        prefill = LayerPrefill(
            module=module,
            layer_idx=layer_idx,
            keys=layer.keys,
            values=layer.values,
            hidden_states=hidden_states,
            position_embeddings=kwargs.get("position_embeddings"),
            valid=padding_from_mask(kwargs.get("attention_mask"), batch, length, layer.keys.device),
            query_start=length - hidden_states.shape[1],
            tokens_seen=layer.get_seq_length(),
        )
        if self._lookahead_rows is not None and self._lookahead_rows.count:
            prefill = self._without_lookahead_rows(prefill)
        elif self.scorer.needs_lookahead and self._lookahead_rows is None:
            raise ValueError(
                "scorer='lookahead' needs a model with a lookahead adapter: load one with "
                "`model = lookahead_cache.load_lookahead(base_model, repo_or_dir)` (PEFT's own "
                "`PeftModel.from_pretrained` loads the LoRA but not the lookahead embeddings), or use "
                "`lookahead_cache.load_default_model(lookahead=True)`. Otherwise pick a heuristic scorer, e.g. "
                "LookaheadCache(budget=256, scorer='snapkv')."
            )
        return prefill

    @torch.compiler.disable
    def _end_prefill(self) -> None:
        """The model's forward returned: every layer must have been evicted."""
        if self._state != _PREFILLING:
            return
        missing = sorted(set(range(len(self.layers))) - self._prefilled_layers)
        if missing:
            raise attention_not_found(missing[0])
        self._state = _DONE
        self._lookahead_rows = None
        if not self._streaming_chunk:
            self._question_ids = None  # the prompt it guided is read
        self._stop_watching()
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def _resolve_auto_scorer(self, has_adapter: bool) -> None:
        """scorer='auto' stays the lookahead scorer on a model with a lookahead adapter and turns to snapkv on any
        other; said once per process, since a library that evicts should not do so silently."""
        if not self._scorer_is_auto or has_adapter or not self.scorer.needs_lookahead:
            return
        self.scorer = get_scorer(_SNAPKV)
        logger.warning_once(
            "LookaheadCache(scorer='auto'): this model has no lookahead adapter, so prompt tokens are scored with "
            "snapkv. Load an adapter with `lookahead_cache.load_lookahead(model, repo_or_dir)` to use the learned "
            "lookahead scorer, or pass scorer='snapkv' to choose snapkv explicitly (and silence this message)."
        )

    def _without_lookahead_rows(self, prefill: LayerPrefill) -> LayerPrefill:
        """The prompt part of a layer whose prefill ended with lookahead rows (after a question's, in a streaming
        chunk), with their queries; those rows only vote, so their keys and values leave the cache."""
        rows = self._lookahead_rows.appended
        layer = self.layers[prefill.layer_idx]
        layer.drop_last(rows)
        position_embeddings = prefill.position_embeddings
        if position_embeddings is not None:
            position_embeddings = tuple(part[:, :-rows] for part in position_embeddings)
        return replace(
            prefill,
            keys=layer.keys,
            values=layer.values,
            hidden_states=prefill.hidden_states[:, :-rows],
            position_embeddings=position_embeddings,
            valid=prefill.valid[:, :-rows],
            lookahead_queries=self._lookahead_rows.take_queries(prefill.module),
            tokens_seen=layer.get_seq_length(),
        )

    def _bind(self, attention_module: nn.Module) -> None:
        self._set_eviction(Eviction.for_model(attention_module, self.cache_config, self.scorer, self.allocator))

    def _set_eviction(self, eviction: Eviction) -> None:
        """Evict with `eviction` from now on, and during decoding too when the cache has a generation budget."""
        self._eviction = eviction
        if self.cache_config.generation_budget is not None:
            self._generation_eviction = GenerationEviction(self.cache_config, self.scorer)

    def _evict(self, prefill: LayerPrefill) -> None:
        """Store layer `prefill.layer_idx` as eviction leaves it."""
        for observer in self._prefill_observers:
            observer(prefill)
        layer_idx = prefill.layer_idx
        eviction = self._eviction
        if self._streaming_chunk and self.cache_config.streaming_budget is not None:
            eviction = replace(eviction, config=replace(self.cache_config, budget=self.cache_config.streaming_budget))
        self.layers[layer_idx] = evict_layer(prefill, eviction)
        self._prefilled_layers.add(layer_idx)
        if self._generation_eviction is not None:
            self._generation_eviction.forget(layer_idx)
        if layer_idx not in self._attention_modules:
            # Sliding-window layers too, though their masks stay the model's: a module with a hook of its own runs
            # torch's full hook path, where the watch of a later prefill, created inside that forward, sees it return.
            self._hand_masks_to(layer_idx, prefill.module)
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())

    def _hand_masks_to(self, layer_idx: int, module: nn.Module) -> None:
        """From now on, `module` attends to compressed layer `layer_idx` with the mask of its slots."""
        self._attention_modules[layer_idx] = module
        self._hooks.append(module.register_forward_pre_hook(decode_mask_hook(self, layer_idx), with_kwargs=True))
        if self._generation_eviction is not None:
            self._hooks.append(module.register_forward_hook(_generation_hook(self, layer_idx), with_kwargs=True))

    @torch.compiler.disable
    def _after_decode_attention(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Layer `layer_idx`'s attention module returned from a forward after the prefill (decoding, or a turn
        appended whole): keep its tokens after the prompt within the generation budget."""
        layer = self.layers[layer_idx]
        if self._state != _DONE or not layer.is_compressed:
            return
        hidden_states = attention_input(args, kwargs)
        self._generation_eviction.after_attention(
            layer, module, layer_idx, hidden_states, kwargs.get("position_embeddings")
        )

    # ----- batch rows (beam search, contrastive search) --------------------------------------------------

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._select_generation_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._select_generation_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._select_generation_rows(lambda t: t[indices.to(t.device)])

    def _select_generation_rows(self, select: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self._generation_eviction is not None:
            self._generation_eviction.select_rows(select)


def _before_last_evicting_chunk(index: int, lengths: list[int]) -> bool:
    """Whether chunk `index` of a `generate(prefill_chunk_size=...)` prefill whose chunks have `lengths` tokens (see
    `generate_prefill_chunk`) comes before the last one that evicts (a last chunk of one token is read as a decoding
    step, which evicts nothing)."""
    last = len(lengths) - 1
    if last > 0 and lengths[last] == 1:
        last -= 1
    return index < last


def _generation_hook(cache: LookaheadCache, layer_idx: int) -> Callable:
    """A forward hook for the attention module of layer `layer_idx` that runs the cache's decode-time eviction after
    each of its forwards with `cache`; holds the cache weakly, like the mask hook."""
    cache_ref = weakref.ref(cache)

    def hook(module, args, kwargs, output):
        cache = cache_ref()
        if cache is not None and cache_argument(kwargs) is cache:
            cache._after_decode_attention(layer_idx, module, args, kwargs)

    return hook


def _remove_handles(handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
