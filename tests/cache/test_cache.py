"""LookaheadCache through the Cache API on tiny random-weight models of every supported architecture: generate,
batches, turns, beam search, compile, memory accounting."""

import pytest
import torch
from conftest import ARCHITECTURES, prompt_ids, tiny_lookahead_model, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import Scorer
from lookahead_cache.storage import PaddedLayer

NEW_TOKENS = 8


def generate(model, input_ids, cache, attention_mask=None, **kwargs):
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        **kwargs,
    )


def compressed_layers(cache):
    return [layer for layer in cache.layers if isinstance(layer, PaddedLayer)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_generate_matches_dynamic_cache_when_budget_covers_prompt(architecture, attn):
    model = tiny_model(architecture, attn)
    input_ids = prompt_ids(40)
    expected = generate(model, input_ids, DynamicCache())
    cache = LookaheadCache(budget=40, scorer="snapkv", window=8)
    assert torch.equal(generate(model, input_ids, cache), expected)
    assert cache.is_compressed


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("scorer", ["snapkv", "knorm", "streaming", "random"])
def test_first_token_logits_identical_with_and_without_eviction(architecture, scorer):
    model = tiny_model(architecture)
    input_ids = prompt_ids(64)
    with torch.no_grad():
        full = model(input_ids, **{CACHE_ARGUMENT: DynamicCache()}).logits[:, -1]
        cache = LookaheadCache(budget=16, scorer=scorer, window=4)
        evicted = model(input_ids, **{CACHE_ARGUMENT: cache}).logits[:, -1]
    assert torch.equal(full, evicted)
    assert cache.is_compressed


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_generate_after_eviction_keeps_budget_per_layer_and_head(architecture):
    model = tiny_model(architecture)
    cache = LookaheadCache(budget=16, scorer="snapkv", window=4)
    output = generate(model, prompt_ids(64), cache)
    assert output.shape == (1, 64 + NEW_TOKENS)
    for layer in compressed_layers(cache):
        # The last generated token's KV is never written: generate stops after sampling it.
        assert layer.keys.shape[-2] == 16 + NEW_TOKENS - 1
        assert torch.equal(layer.kept_tokens(), torch.full((1, 2), 16 + NEW_TOKENS - 1))
    assert cache.get_seq_length() == 64 + NEW_TOKENS - 1


def test_fraction_budget_keeps_that_share_of_the_prompt():
    model = tiny_model()
    cache = LookaheadCache(budget=0.25, scorer="knorm", sink=2, window=4)
    with torch.no_grad():
        model(prompt_ids(80), **{CACHE_ARGUMENT: cache})
    assert torch.equal(cache.kept_tokens(), torch.full((3, 1, 2), 20))


class UncalledScorer(Scorer):
    def score(self, prefill):
        raise AssertionError("a prompt within its budget was scored")


@pytest.mark.parametrize("allocation", ["uniform", "pyramid", "adakv"])
def test_prompt_no_longer_than_budget_is_kept_whole_without_scoring(allocation):
    """Pyramid's deeper layers would keep fewer tokens than the budget; a prompt within the budget is whole in every
    layer all the same, as PyramidKV's own code leaves prompts shorter than its capacity alone."""
    model = tiny_model()
    input_ids = prompt_ids(50, batch=2, seed=4)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0
    cache = LookaheadCache(budget=64, scorer=UncalledScorer(), allocation=allocation, sink=2, window=4)
    expected = generate(model, input_ids, DynamicCache(), attention_mask)
    assert torch.equal(generate(model, input_ids, cache, attention_mask), expected)
    assert cache.is_compressed
    # Counted without the padding, as after an eviction.
    prompt = torch.tensor([50, 43])[None, :, None] + NEW_TOKENS - 1
    assert torch.equal(cache.kept_tokens(), prompt.expand(3, 2, 2))


def test_decoding_after_eviction_equals_full_cache_with_evicted_tokens_masked():
    """Streaming keeps the same positions in every layer, so eviction must equal masking them in a full cache."""
    model = tiny_model("llama")
    length, sink, budget = 48, 4, 16
    input_ids = prompt_ids(length)
    next_token = prompt_ids(1, seed=1)
    kept = torch.zeros(1, length + 1, dtype=torch.long)
    kept[:, :sink] = 1
    kept[:, length - (budget - sink) :] = 1
    with torch.no_grad():
        cache = LookaheadCache(budget=budget, scorer="streaming", sink=sink, window=4)
        model(input_ids, **{CACHE_ARGUMENT: cache})
        evicted = model(next_token, **{CACHE_ARGUMENT: cache}).logits

        full = DynamicCache()
        model(input_ids, **{CACHE_ARGUMENT: full})
        masked = model(
            next_token,
            **{CACHE_ARGUMENT: full},
            attention_mask=torch.cat([kept[:, :length], torch.ones(1, 1, dtype=torch.long)], dim=1),
            position_ids=torch.tensor([[length]]),
        ).logits
    torch.testing.assert_close(evicted, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["llama", "qwen3", "gemma3"])
def test_left_padded_batch_equals_each_row_generated_alone(architecture, attn):
    model = tiny_model(architecture, attn)
    lengths = [40, 28, 12]
    rows = [prompt_ids(n, seed=i) for i, n in enumerate(lengths)]
    longest = max(lengths)
    input_ids = torch.zeros(len(rows), longest, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, longest - row.shape[1] :] = row
        attention_mask[i, longest - row.shape[1] :] = 1
    budget = dict(budget=16, scorer="snapkv", window=4)
    batched_cache = LookaheadCache(**budget)
    batched = generate(model, input_ids, batched_cache, attention_mask=attention_mask)
    for i, row in enumerate(rows):
        alone = generate(model, row, LookaheadCache(**budget))
        assert torch.equal(batched[i, longest:], alone[0, row.shape[1] :]), f"row {i}"
    # Each row keeps its own real tokens only: the 12-token row keeps 12 and never padding.
    kept = compressed_layers(batched_cache)[0].prompt_slot_valid.sum(-1)[:, 0]
    assert kept.tolist() == [16, 16, 12]


@pytest.mark.parametrize("allocation", ["uniform", "adakv"])
@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_full_cache_nbytes_is_what_a_dynamic_cache_holds_after_the_same_generate(architecture, allocation):
    model = tiny_model(architecture)
    input_ids = prompt_ids(40, batch=2)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :9] = 0
    # What generate builds when given no cache: sliding-window layers keep their window.
    dynamic = DynamicCache(config=model.config)
    generate(model, input_ids, dynamic, attention_mask=attention_mask)
    cache = LookaheadCache(budget=16, scorer="snapkv", allocation=allocation, window=4)
    generate(model, input_ids, cache, attention_mask=attention_mask)
    dynamic_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dynamic.layers)
    assert cache.full_cache_nbytes() == dynamic_bytes
    assert cache.nbytes() < dynamic_bytes


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_second_generate_call_continues_the_cache(architecture):
    model = tiny_model(architecture)
    first_turn = prompt_ids(40)
    second_turn = prompt_ids(10, seed=1)

    def two_turns(cache):
        first = generate(model, first_turn, cache)
        conversation = torch.cat([first, second_turn], dim=1)
        return generate(model, conversation, cache)

    # With a budget covering the prompt, the compressed path must reproduce DynamicCache exactly.
    assert torch.equal(two_turns(LookaheadCache(budget=64, scorer="snapkv")), two_turns(DynamicCache()))
    cache = LookaheadCache(budget=16, scorer="snapkv", window=4)
    output = two_turns(cache)
    assert output.shape[1] == 40 + NEW_TOKENS + 10 + NEW_TOKENS
    assert cache.get_seq_length() == output.shape[1] - 1
    for layer in compressed_layers(cache):
        assert layer.keys.shape[-2] == 16 + (NEW_TOKENS - 1) + 10 + NEW_TOKENS


def test_beam_search_matches_dynamic_cache_when_budget_covers_prompt_and_runs_after_eviction():
    model = tiny_model()
    input_ids = prompt_ids(32)
    beams = dict(num_beams=3, num_return_sequences=2)
    expected = generate(model, input_ids, DynamicCache(), **beams)
    assert torch.equal(
        generate(model, input_ids, LookaheadCache(budget=32, scorer="snapkv", window=4), **beams), expected
    )
    cache = LookaheadCache(budget=12, scorer="snapkv", window=4)
    output = generate(model, input_ids, cache, **beams)
    assert output.shape == (2, 32 + NEW_TOKENS)
    assert compressed_layers(cache)[0].keys.shape[0] == 3


def test_sdpa_and_eager_agree_after_eviction():
    input_ids = prompt_ids(64)
    outputs = [
        generate(tiny_model("llama", attn), input_ids, LookaheadCache(budget=16, scorer="snapkv", window=4))
        for attn in ("sdpa", "eager")
    ]
    assert torch.equal(outputs[0], outputs[1])


def test_crop_after_eviction_raises():
    model = tiny_model()
    cache = LookaheadCache(budget=16, scorer="knorm", window=4)
    with torch.no_grad():
        model(prompt_ids(40), **{CACHE_ARGUMENT: cache})
    with pytest.raises(ValueError, match="cannot be restored"):
        cache.crop(-1)
    assert not cache.is_croppable


def test_prefill_holds_at_most_one_uncompressed_layer():
    model = tiny_model()
    length, budget = 200, 16
    cache = LookaheadCache(budget=budget, scorer="snapkv", window=4)
    with torch.no_grad():
        model(prompt_ids(length), **{CACHE_ARGUMENT: cache})
        full = DynamicCache()
        model(prompt_ids(length), **{CACHE_ARGUMENT: full})
    layer_bytes = full.layers[0].keys.nbytes + full.layers[0].values.nbytes
    assert cache.nbytes() == 3 * layer_bytes * budget // length
    # While layer l is prefilled, layers < l are compressed and l is full.
    assert cache.peak_nbytes == layer_bytes + 2 * layer_bytes * budget // length


def test_cache_releases_its_hooks_when_garbage_collected():
    import gc

    from torch.nn.modules import module as torch_module

    before = len(torch_module._global_forward_hooks)
    model = tiny_model()
    cache = LookaheadCache(budget=16, scorer="knorm", window=4)
    assert len(torch_module._global_forward_hooks) == before + 1
    with torch.no_grad():
        model(prompt_ids(40), **{CACHE_ARGUMENT: cache})
    assert len(torch_module._global_forward_hooks) == before
    assert any(m._forward_pre_hooks for m in model.modules())
    del cache
    gc.collect()
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_cache_config_rebuilds_configured_instances_through_json(tmp_path):
    from lookahead_cache.allocation import PyramidAllocator
    from lookahead_cache.config import LookaheadCacheConfig
    from lookahead_cache.scorers import SnapKVScorer

    cache = LookaheadCache(
        budget=24, scorer=SnapKVScorer(window=8, kernel_size=3), allocation=PyramidAllocator(), sink=2, window=4
    )
    cache.cache_config.to_json_file(tmp_path / "cache.json")
    rebuilt = LookaheadCache.from_config(LookaheadCacheConfig.from_json_file(tmp_path / "cache.json"))
    assert rebuilt.cache_config.scorer == "snapkv" and rebuilt.cache_config.allocation == "pyramid"
    assert rebuilt.scorer == SnapKVScorer(window=8, kernel_size=3)
    assert isinstance(rebuilt.allocator, PyramidAllocator)
    model = tiny_model()
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
        model(prompt_ids(64), **{CACHE_ARGUMENT: rebuilt})
    assert torch.equal(cache.layers[0].keys, rebuilt.layers[0].keys)


@pytest.mark.slow
# dynamic=True (symbolic sizes, where the cache's byte accounting crashed) with the lookahead prefill, the longest.
@pytest.mark.parametrize(
    "scorer, dynamic", [("snapkv", None), ("lookahead", True)], ids=["snapkv", "lookahead-dynamic"]
)
def test_compiled_forward_evicts_and_decodes_like_eager(scorer, dynamic):
    """`torch.compile(model.forward)` runs the prefill's bookkeeping (and the lookahead rows' attention) eagerly and
    decodes from the compressed cache with the eager logits."""
    model = tiny_lookahead_model() if scorer == "lookahead" else tiny_model()
    input_ids = prompt_ids(60)

    def decode(forward, cache):
        logits = []
        tokens = input_ids
        with torch.no_grad():
            for _ in range(4):
                step = forward(input_ids=tokens, **{CACHE_ARGUMENT: cache}).logits[:, -1]
                logits.append(step)
                tokens = step.argmax(-1, keepdim=True)
        return torch.stack(logits)

    torch._dynamo.reset()
    compiled = torch.compile(model.forward, dynamic=dynamic)
    settings = dict(budget=16, scorer=scorer, window=4)
    cache, eager_cache = LookaheadCache(**settings), LookaheadCache(**settings)
    torch.testing.assert_close(decode(compiled, cache), decode(model.forward, eager_cache), atol=1e-5, rtol=1e-5)
    assert cache.is_compressed
    assert torch.equal(cache.kept_tokens(), eager_cache.kept_tokens())
    assert cache.peak_nbytes == eager_cache.peak_nbytes
    for layer, eager_layer in zip(cache.layers, eager_cache.layers):
        torch.testing.assert_close(layer.keys, eager_layer.keys, atol=1e-5, rtol=1e-5)
