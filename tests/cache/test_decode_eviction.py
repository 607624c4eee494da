"""Decode-time eviction: `generation_budget` bounds the tokens after the prompt, however many are generated."""

import pytest
import torch
from conftest import ARCHITECTURES, prompt_ids, tiny_model

from lookahead_cache import LookaheadCache, LookaheadCacheConfig
from lookahead_cache.prefill import CACHE_ARGUMENT

PROMPT, BUDGET, GENERATION_BUDGET, INTERVAL, WINDOW = 48, 16, 20, 8, 4
SETTINGS = dict(
    budget=BUDGET, scorer="snapkv", sink=2, window=WINDOW, generation_budget=GENERATION_BUDGET,
    generation_interval=INTERVAL,
)  # fmt: skip


@torch.no_grad()
def decode(model, cache, steps: int, input_ids=None, on_step=None) -> torch.Tensor:
    """Greedy decoding by hand, one forward per token; `on_step(cache, step)` after each forward."""
    tokens = prompt_ids(PROMPT) if input_ids is None else input_ids
    generated = []
    for step in range(steps):
        logits = model(input_ids=tokens, **{CACHE_ARGUMENT: cache}).logits[:, -1]
        tokens = logits.argmax(-1, keepdim=True)
        generated.append(tokens)
        if on_step is not None:
            on_step(cache, step)
    return torch.cat(generated, dim=-1)


def appended_counts(cache) -> set[int]:
    return {layer.appended()[0].shape[-2] for layer in cache.layers if layer.is_compressed}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_long_generation_stays_within_prompt_budget_plus_generation_budget(architecture):
    model = tiny_model(architecture)
    cache = LookaheadCache(**SETTINGS)
    seen = []

    def check(cache, step):
        # Every forward after the prefill appends one token; the layer never holds more than the generation budget
        # (it attends to that many, then evicts down to budget - interval in the same forward).
        counts = appended_counts(cache)
        assert max(counts) <= GENERATION_BUDGET, (step, counts)
        seen.append(max(counts))
        assert int(cache.kept_tokens().max()) <= BUDGET + GENERATION_BUDGET

    decode(model, cache, steps=120, on_step=check)
    # The generated part fills to the budget, falls back by an interval, and refills: it cycles, bounded.
    assert max(seen) == GENERATION_BUDGET - 1 and GENERATION_BUDGET - INTERVAL in seen[40:]
    # Positions go on from every token seen: the prompt and all generated tokens but the last.
    assert cache.get_seq_length() == PROMPT + 119


def test_below_the_generation_budget_decoding_is_that_of_the_cache_without_one():
    model = tiny_model()
    steps = GENERATION_BUDGET  # the prompt's last token and 19 generated ones: one short of an eviction
    bounded = decode(model, LookaheadCache(**SETTINGS), steps)
    unbounded_settings = {k: v for k, v in SETTINGS.items() if not k.startswith("generation")}
    assert torch.equal(bounded, decode(model, LookaheadCache(**unbounded_settings), steps))


def test_the_streaming_scorer_keeps_the_latest_generated_tokens():
    """StreamingLLM ranks by recency: with it the generated part is a sliding window over the last tokens."""
    model = tiny_model()
    cache = LookaheadCache(**{**SETTINGS, "scorer": "streaming"})
    before = {}

    def check(cache, step):
        layer = cache.layers[0]
        keys = layer.appended()[0]
        if keys.shape[-2] == GENERATION_BUDGET - INTERVAL and step > GENERATION_BUDGET:
            # Evicted in this forward: the kept keys are the last ones of what the layer held before it.
            kept_from = before["keys"].shape[-2] + 1 - keys.shape[-2]
            assert torch.equal(keys[:, :, :-1], before["keys"][:, :, kept_from:])
            before["evictions"] = before.get("evictions", 0) + 1
        before["keys"] = keys.clone()

    decode(model, cache, steps=60, on_step=check)
    assert before["evictions"] >= 3


def test_snapkv_keeps_the_generated_tokens_its_recent_queries_attend_to_and_the_window():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS)
    previous = {}
    checked = []

    def check(cache, step):
        layer = cache.layers[1]
        keys = layer.appended()[0]
        if "keys" in previous and keys.shape[-2] < previous["keys"].shape[-2]:
            # The kept keys are some of the held ones (and the new one), in order; the last `window` always.
            held = torch.cat([previous["keys"], keys[:, :, -1:]], dim=-2)
            matches = torch.isclose(keys[:, :, :, None], held[:, :, None], atol=0, rtol=0).all(-1)
            assert bool((matches.sum(-1) == 1).all())
            index = matches.float().argmax(-1)
            assert bool((index.diff(dim=-1) > 0).all())
            last = torch.arange(held.shape[-2] - WINDOW, held.shape[-2])
            assert torch.equal(index[..., -WINDOW:], last.expand_as(index[..., -WINDOW:]))
            checked.append(step)
        previous["keys"] = keys.clone()

    decode(model, cache, steps=50, on_step=check)
    assert len(checked) >= 3


def test_heads_keep_different_generated_tokens_with_packed_prompts():
    """Per-head prompt budgets (adakv) store the prompt packed; the generated part stays bounded there too, and the
    packed layout attends like the padded copy of the same tokens."""
    packed = tiny_model(attn_implementation="lookahead_varlen")
    padded = tiny_model()
    settings = {**SETTINGS, "allocation": "adakv"}
    caches = LookaheadCache(**settings), LookaheadCache(**settings)
    outputs = [decode(model, cache, steps=60) for model, cache in zip((packed, padded), caches)]
    assert torch.equal(*outputs)
    for cache in caches:
        assert max(appended_counts(cache)) <= GENERATION_BUDGET
    assert torch.equal(caches[0].kept_tokens(), caches[1].kept_tokens())


def test_beam_search_and_a_batch_keep_the_generation_budget():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS)
    input_ids = prompt_ids(PROMPT, batch=2)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=60,
        num_beams=2,
        do_sample=False,
    )
    assert output.shape == (2, PROMPT + 60)
    assert max(appended_counts(cache)) <= GENERATION_BUDGET


def test_a_session_budget_and_a_generation_budget_together():
    """A later turn evicts the whole layer again (prompt, answer and turn); the generated part then starts anew."""
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS, evict_every_prefill=True)
    decode(model, cache, steps=40)
    decode(model, cache, steps=30, input_ids=prompt_ids(24, seed=1))
    assert max(appended_counts(cache)) <= GENERATION_BUDGET
    assert int(cache.kept_tokens().max()) <= BUDGET + GENERATION_BUDGET


def test_the_lookahead_scorer_scores_generated_tokens_with_snapkv():
    from lookahead_cache.adapters import LookaheadConfig, add_lookahead

    model = add_lookahead(tiny_model(), LookaheadConfig(num_tokens=4)).eval()
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    decode(model, cache, steps=50)
    assert max(appended_counts(cache)) <= GENERATION_BUDGET


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(generation_budget=30, generation_interval=8, window=32), "must hold generation_interval"),
        (dict(generation_budget=0), "positive int"),
        (dict(generation_budget=2.5), "positive int"),
        (dict(generation_budget=64, generation_interval=0), "generation_interval=0"),
    ],
)
def test_bad_generation_budgets_are_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        LookaheadCache(budget=128, **settings)


def test_generation_settings_round_trip_through_the_config(tmp_path):
    cache = LookaheadCache(**SETTINGS)
    cache.cache_config.to_json_file(tmp_path / "cache.json")
    rebuilt = LookaheadCache.from_config(LookaheadCacheConfig.from_json_file(tmp_path / "cache.json"))
    assert rebuilt.cache_config == cache.cache_config
    assert rebuilt.fresh().cache_config.generation_budget == GENERATION_BUDGET
