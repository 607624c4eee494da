"""Prompts read in chunks and sessions of several turns, evicted at every prefill so the cache stays bounded."""

import pytest
import torch
from conftest import ARCHITECTURES, kept_positions, prompt_ids, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT

BUDGET = 24
SETTINGS = dict(budget=BUDGET, scorer="snapkv", sink=2, window=4)


def generate(model, input_ids, cache, new_tokens=4, **kwargs):
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=new_tokens,
        do_sample=False,
        **kwargs,
    )


def bytes_per_token(model) -> int:
    """Bytes of one token's keys and values in one layer and KV head (float32)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * head_dim * 4


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_chunk_as_long_as_the_prompt_is_the_one_shot_eviction(architecture):
    model = tiny_model(architecture)
    chunked, whole = LookaheadCache(**SETTINGS), LookaheadCache(**SETTINGS)
    output = generate(model, prompt_ids(96), chunked, prefill_chunk_size=96)
    assert torch.equal(output, generate(model, prompt_ids(96), whole))
    assert torch.equal(chunked.kept_tokens(), whole.kept_tokens())


@pytest.mark.parametrize("architecture", ["llama", "qwen3", "gemma3"])
def test_a_chunked_prefill_never_holds_more_than_budget_plus_a_chunk(architecture):
    model = tiny_model(architecture)
    chunk, length, layers = 16, 96, model.config.num_hidden_layers
    cache = LookaheadCache(**SETTINGS)
    generate(model, prompt_ids(length), cache, new_tokens=3, prefill_chunk_size=chunk)
    kv_heads = model.config.num_key_value_heads
    # While a chunk goes through layer l, layers before it are back within the budget, later ones still are: the
    # cache holds at most every layer's budget plus one chunk in one layer (sliding-window layers hold less).
    assert cache.peak_nbytes <= (layers * BUDGET + chunk) * kv_heads * bytes_per_token(model)
    # After the prompt: the budget per compressed layer and head, plus the decoded tokens (all but the last).
    kept = cache.kept_tokens()
    assert int(kept.max()) <= BUDGET + 2
    assert cache.get_seq_length() == length + 2


def test_a_chunked_prefill_keeps_the_sink_and_the_prompts_last_window():
    model = tiny_model()
    cache, full = LookaheadCache(**SETTINGS), DynamicCache()
    generate(model, prompt_ids(80), cache, new_tokens=1, prefill_chunk_size=20)
    with torch.no_grad():
        model(prompt_ids(80), **{CACHE_ARGUMENT: full})
    # Layer 0's keys depend on each token alone, so a chunked prefill computes them as the full prompt does.
    kept = kept_positions(cache.layers[0], full.layers[0].keys)
    assert kept.sum(-1).eq(BUDGET).all()
    assert kept[..., [0, 1, 76, 77, 78, 79]].all()


def test_sessions_stay_within_the_budget_plus_the_turn_and_default_sessions_grow():
    model = tiny_model()
    turns = [prompt_ids(40, seed=turn) for turn in range(3)]
    bounded = LookaheadCache(**SETTINGS, evict_every_prefill=True)
    unbounded = LookaheadCache(**SETTINGS)
    conversations = {bounded: torch.empty(1, 0, dtype=torch.long), unbounded: torch.empty(1, 0, dtype=torch.long)}
    for turn in turns:
        for cache, conversation in conversations.items():
            conversations[cache] = generate(model, torch.cat([conversation, turn], dim=-1), cache, new_tokens=3)
            assert cache.get_seq_length() == conversations[cache].shape[-1] - 1
        # The bounded session holds its budget plus the answer being decoded (all but its last token).
        assert int(bounded.kept_tokens().max()) <= BUDGET + 2
    # By default only the first prefill evicts: the later turns are kept whole.
    assert int(unbounded.kept_tokens().max()) == BUDGET + 2 + (3 + 40) * 2


def test_a_manual_loop_of_chunks_is_evicted_chunk_by_chunk():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS, evict_every_prefill=True)
    prompt = prompt_ids(96)
    with torch.no_grad():
        for start in range(0, 96, 32):
            model(prompt[:, start : start + 32], **{CACHE_ARGUMENT: cache})
            assert cache.kept_tokens().eq(BUDGET).all() and cache.get_seq_length() == start + 32
    assert cache.peak_nbytes <= (3 * BUDGET + 32) * 2 * bytes_per_token(model)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(budget=0.5, scorer="snapkv"), "needs a budget in tokens"),
        (dict(budget=24, scorer="snapkv", allocation="adakv"), "equal counts"),
        (dict(budget=24, scorer="lookahead"), "cannot use the lookahead scorer yet"),
    ],
)
def test_what_cannot_be_evicted_again_is_refused_naming_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        LookaheadCache(**settings, sink=2, window=4, evict_every_prefill=True)
    cache = LookaheadCache(**settings, sink=2, window=4)
    with pytest.raises(ValueError, match=rf"generate\(prefill_chunk_size=...\) in 3 chunks .*{message}"):
        generate(tiny_model(), prompt_ids(96), cache, prefill_chunk_size=32)
    assert not cache.is_compressed
