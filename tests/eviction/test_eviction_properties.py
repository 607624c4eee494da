"""The eviction invariants, over random prompts, batch/padding layouts, budgets, sink/window, scorers and allocations.

For every drawn case the compressed cache is compared with the full `DynamicCache` of the same batch, and each row
with that row prefilled alone:

- every (layer, row, KV head) keeps at most the row's budget (uniform: exactly `min(budget, prompt)`; the other
  allocations: that on average over layers and heads, never more than the prompt nor fewer than its protected tokens);
- the first `sink` and last `window` real tokens are kept in every head, and no padding token is;
- `kept_tokens()` counts exactly the kept tokens, and `get_seq_length()` is every token seen;
- the first generated token's logits are the full cache's;
- a row keeps what it keeps alone. Left out there: seeded random scores, drawn per batch, and knorm on models that
  normalise their keys (Qwen3, Gemma 3), whose keys then all have the same norm up to rounding, which a batch and a
  lone row round differently.

The number of examples comes from the hypothesis profile (`HYPOTHESIS_PROFILE=thorough` for many more).
"""

import functools
import os

import pytest
import torch
from conftest import kept_positions, synthetic_profile, tiny_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from lookahead_cache import LookaheadCache, LookaheadCacheConfig
from lookahead_cache.adapters import LookaheadConfig, add_lookahead
from lookahead_cache.allocation import LUKVAllocator
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.storage import PackedLayer, PaddedLayer

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HEURISTIC_SCORERS = ["snapkv", "knorm", "streaming", "random"]
MODELS = ["llama", "qwen3", "gemma3", "llama+lookahead"]
ALLOCATIONS = ["uniform", "pyramid", "adakv", "lukv"]


@functools.cache
def model_for(name: str):
    if name == "llama+lookahead":
        return add_lookahead(tiny_model("llama"), LookaheadConfig(num_tokens=4)).eval()
    return tiny_model(name)


def normalises_keys(model) -> bool:
    return any(name.endswith("k_norm") for name, _ in model.named_modules())


@st.composite
def cases(draw):
    model_name = draw(st.sampled_from(MODELS))
    scorers = HEURISTIC_SCORERS + (["lookahead"] if model_name == "llama+lookahead" else [])
    sink, window = draw(st.integers(0, 4)), draw(st.integers(0, 8))
    budget = draw(st.one_of(st.integers(max(1, sink + window), 48), st.floats(0.05, 1.0)))
    lengths = draw(st.lists(st.integers(1, 64), min_size=1, max_size=3))
    config = LookaheadCacheConfig(budget=budget, sink=sink, window=window)
    try:
        for length in lengths:
            config.row_budget(length)
    except ValueError:  # a fraction leaving fewer tokens than the protected ones: refused, tested elsewhere
        assume(False)
    return dict(
        model_name=model_name,
        scorer=draw(st.sampled_from(scorers)),
        allocation=draw(st.sampled_from(ALLOCATIONS)),
        budget=budget,
        sink=sink,
        window=window,
        lengths=lengths,
        seed=draw(st.integers(0, 2**16)),
    )


def make_cache(case, model):
    allocation = case["allocation"]
    if allocation == "lukv":
        layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
        compressed = layer_types.count("full_attention")
        profile = synthetic_profile(
            layers=compressed,
            scorer=case["scorer"],
            seed=case["seed"],
            model=model,
            sink=case["sink"],
            window=case["window"],
        )
        allocation = LUKVAllocator(profile)
    return LookaheadCache(
        budget=case["budget"], scorer=case["scorer"], allocation=allocation, sink=case["sink"], window=case["window"]
    )


def prefill(model, input_ids, attention_mask, cache):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: cache}).logits[:, -1]


def left_padded(lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        # Distinct tokens: a repeated token's keys differ by their rotation alone, so their norms tie up to rounding,
        # which a batch and a lone row round differently.
        input_ids[row, width - length :] = torch.randperm(125, generator=generator)[:length] + 3
        attention_mask[row, width - length :] = 1
    return input_ids, attention_mask


def kept_sets(cache, full):
    """`{layer_idx: [batch, kv_heads, prompt_len] bool}` of the compressed layers."""
    return {
        index: kept_positions(layer, full.layers[index].keys)
        for index, layer in enumerate(cache.layers)
        if isinstance(layer, (PaddedLayer, PackedLayer))
    }


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(case=cases())
def test_eviction_invariants(case):
    model = model_for(case["model_name"])
    input_ids, attention_mask = left_padded(case["lengths"], case["seed"])
    cache, full = make_cache(case, model), DynamicCache()
    logits = prefill(model, input_ids, attention_mask, cache)
    full_logits = prefill(model, input_ids, attention_mask, full)

    torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == full.get_seq_length() == input_ids.shape[1]
    kept = kept_sets(cache, full)
    assert kept, "every tiny model has full-attention layers"
    counts = torch.stack([sets.sum(-1) for sets in kept.values()])  # [layers, batch, kv_heads]
    assert torch.equal(counts, cache.kept_tokens()[list(kept)])

    config = cache.cache_config
    width = input_ids.shape[1]
    for row, length in enumerate(case["lengths"]):
        padding = width - length
        budget = min(config.row_budget(length), length)
        row_counts = counts[:, row]
        if case["allocation"] == "uniform":
            assert bool((row_counts == budget).all())
        else:
            assert row_counts.float().mean() <= budget + 1e-6
            assert bool((row_counts <= length).all())
            assert bool((row_counts >= min(config.protected, length)).all())
        for sets in kept.values():
            assert not sets[row, :, :padding].any(), "a padding token was kept"
            real = sets[row, :, padding:]
            assert real[:, : config.sink].all(), "a sink token was evicted"
            assert real[:, max(0, length - config.window) :].all(), "a window token was evicted"

    if case["scorer"] == "random" or (case["scorer"] == "knorm" and normalises_keys(model)):
        return
    for row, length in enumerate(case["lengths"]):
        alone_ids = input_ids[row : row + 1, width - length :]
        alone_mask = attention_mask[row : row + 1, width - length :]
        alone, alone_full = make_cache(case, model), DynamicCache()
        alone_logits = prefill(model, alone_ids, alone_mask, alone)
        prefill(model, alone_ids, alone_mask, alone_full)
        torch.testing.assert_close(alone_logits[0], logits[row], atol=1e-4, rtol=1e-4)
        for index, sets in kept_sets(alone, alone_full).items():
            assert torch.equal(sets[0], kept[index][row, :, width - length :]), f"row {row} keeps other tokens alone"
