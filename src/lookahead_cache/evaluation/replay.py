"""One full prefill per prompt, replayed for every method of an evaluation.

`record_prefill` runs the prompt once with a cache that evicts nothing and keeps what each layer's eviction
would see (`LayerPrefill`: keys, values, attention input, positions). `LookaheadCache.from_prefill` then
compresses a copy of it with any scorer and budget, and `dynamic_cache_from` rebuilds the full cache, so a sweep
over methods and budgets pays for the prompt once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, PreTrainedModel

from ..adapters.model import LookaheadAdapter, get_lookahead
from ..cache import LookaheadCache
from ..prefill import CACHE_ARGUMENT, LayerPrefill, attention_input


@dataclass
class PrefillRecording:
    """A recorded prefill of one prompt.

    Attributes:
        prefills: Per layer, what eviction sees at the end of the prefill.
        next_token_logits: `[batch, vocab]` logits of the token after the prompt (the same for every method,
            since eviction happens after each layer's attention ran on the full prompt).
        seconds: Wall time of the prefill forward.
    """

    prefills: list[LayerPrefill]
    next_token_logits: torch.Tensor
    seconds: float

    @property
    def prompt_length(self) -> int:
        return self.prefills[0].prompt_length


@torch.no_grad()
def record_prefill(model: PreTrainedModel, input_ids: torch.Tensor) -> PrefillRecording:
    """Run the prompt `input_ids` (`[1, prompt_len]`) through `model` once and record it."""
    prefills: list[LayerPrefill] = []
    # A budget of the whole prompt keeps every layer as it is, without a copy: recording costs the prefill alone.
    cache = LookaheadCache(budget=1.0, scorer="streaming")
    cache.observe_prefill(prefills.append)
    start = time.perf_counter()
    logits = model(input_ids=input_ids, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1).logits
    seconds = time.perf_counter() - start
    prefills.sort(key=lambda prefill: prefill.layer_idx)
    return PrefillRecording(prefills=prefills, next_token_logits=logits[:, -1], seconds=seconds)


def dynamic_cache_from(prefills: list[LayerPrefill]) -> DynamicCache:
    """The full cache of a recorded prefill, as a plain `DynamicCache` (copies, the recording stays intact)."""
    cache = DynamicCache()
    for prefill in prefills:
        cache.update(prefill.keys.clone(), prefill.values.clone(), prefill.layer_idx)
    return cache


@torch.no_grad()
def continue_recording(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    recording: PrefillRecording,
    first: torch.Tensor,
    max_new_tokens: int,
    **generate_kwargs,
) -> torch.Tensor:
    """`[1, n]` answer to the recorded prompt `input_ids`: `first` (the token after the prompt), then up to
    `max_new_tokens - 1` more generated on a full copy of the recorded cache with `generate_kwargs`."""
    if max_new_tokens <= 1:
        return first
    fed = torch.cat([input_ids, first], dim=-1)
    output = model.generate(
        input_ids=fed,
        attention_mask=torch.ones_like(fed),
        **{CACHE_ARGUMENT: dynamic_cache_from(recording.prefills)},
        max_new_tokens=max_new_tokens - 1,
        pad_token_id=model.generation_config.pad_token_id,
        **generate_kwargs,
    )
    return torch.cat([first, output[:, fed.shape[-1] :]], dim=-1)


@torch.no_grad()
def future_queries(
    model: PreTrainedModel, prefills: list[LayerPrefill], future_ids: torch.Tensor
) -> list[torch.Tensor]:
    """Per layer, the post-RoPE queries of `future_ids` (`[1, n]`) read right after the recorded prompt.

    The future tokens run through the full cache of the recording; each attention module's input is captured
    by a forward pre-hook and turned into queries the way the module computes them.
    """
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]] = {}

    def capture(layer_idx: int):
        def hook(module, args, kwargs):
            hidden_states = attention_input(args, kwargs)
            captured[layer_idx] = (hidden_states, kwargs.get("position_embeddings"))

        return hook

    handles = [
        prefill.module.register_forward_pre_hook(capture(prefill.layer_idx), with_kwargs=True) for prefill in prefills
    ]
    try:
        model(input_ids=future_ids, **{CACHE_ARGUMENT: dynamic_cache_from(prefills)}, use_cache=True, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    queries = []
    for prefill in prefills:
        hidden_states, position_embeddings = captured[prefill.layer_idx]
        future = replace(prefill, hidden_states=hidden_states, position_embeddings=position_embeddings)
        queries.append(future.queries(0))
    return queries


def required_lookahead(model: PreTrainedModel) -> LookaheadAdapter:
    """`model`'s lookahead adapter, or an error saying how to load one."""
    adapter = get_lookahead(model)
    if adapter is None:
        raise ValueError(
            "The lookahead method needs a model with a lookahead adapter: load one with "
            "lookahead_cache.load_lookahead(base_model, repo_or_dir)."
        )
    return adapter


def lookahead_queries(model: PreTrainedModel, prefills: list[LayerPrefill]) -> list[torch.Tensor]:
    """Per layer, the queries of `model`'s lookahead tokens run right after the recorded prompt (batch of one).

    The lookahead tokens run on a full copy of the recorded cache. A live `LookaheadCache` prefill computes the same
    queries in the prompt's own forward (equal up to float rounding, tested). Gradients flow to the lookahead
    embeddings and LoRA unless grad is disabled.
    """
    adapter = required_lookahead(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prompt_length = prefills[0].prompt_length
    return adapter.run(
        base.get_decoder(),
        dynamic_cache_from(prefills),
        [prefill.module for prefill in prefills],
        attention_mask=None,
        start_positions=torch.tensor([prompt_length], device=prefills[0].keys.device),
    )
