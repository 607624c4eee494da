"""Prompts read in chunks and sessions of several turns, evicted at every prefill so the cache stays bounded."""

import pytest
import torch
from conftest import ARCHITECTURES, decoder_input_lengths, kept_positions, prompt_ids, tiny_lookahead_model, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT

BUDGET = 24
SETTINGS = dict(budget=BUDGET, scorer="snapkv", sink=2, window=4)
QUESTION = 5  # tokens of the question that a chunked prefill is told


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


def test_a_session_peak_restarts_from_the_bytes_held_and_bounds_the_later_turn():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS, evict_every_prefill=True)
    with torch.no_grad():
        model(prompt_ids(40), **{CACHE_ARGUMENT: cache})
        assert cache.peak_nbytes > cache.nbytes()  # the prefill held a whole layer before its eviction
        cache.reset_peak()
        assert cache.peak_nbytes == cache.nbytes()
        model(prompt_ids(40, seed=1), **{CACHE_ARGUMENT: cache})
    layers, kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    # While the turn went through a layer: that layer's budget and turn, every other layer's budget.
    assert cache.peak_nbytes == (layers * BUDGET + 40) * kv_heads * bytes_per_token(model)


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
    ],
)
def test_what_cannot_be_evicted_again_is_refused_naming_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        LookaheadCache(**settings, sink=2, window=4, evict_every_prefill=True)
    cache = LookaheadCache(**settings, sink=2, window=4)
    with pytest.raises(ValueError, match=rf"generate\(prefill_chunk_size=...\) in 3 chunks .*{message}"):
        generate(tiny_model(), prompt_ids(96), cache, prefill_chunk_size=32)
    assert not cache.is_compressed


def test_the_lookahead_scorer_in_one_chunk_as_long_as_the_prompt_is_the_one_shot_eviction():
    model = tiny_lookahead_model()
    settings = {**SETTINGS, "scorer": "lookahead"}
    chunked, whole = LookaheadCache(**settings), LookaheadCache(**settings)
    output = generate(model, prompt_ids(96), chunked, prefill_chunk_size=96)
    assert torch.equal(output, generate(model, prompt_ids(96), whole))
    assert torch.equal(chunked.kept_tokens(), whole.kept_tokens())
    for layer, whole_layer in zip(chunked.layers, whole.layers):
        assert torch.equal(layer.keys, whole_layer.keys)


def test_the_lookahead_scorer_appends_its_rows_to_every_chunk_and_keeps_the_bound():
    model = tiny_lookahead_model()
    chunk, length, rows, layers = 16, 96, 4, model.config.num_hidden_layers
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    seen_inputs, output = decoder_input_lengths(
        model, lambda: generate(model, prompt_ids(length), cache, new_tokens=3, prefill_chunk_size=chunk)
    )
    # The adapter's hook runs first (registered first): every chunk that the cache evicts carries the rows, from the
    # second chunk on (the first fits the budget, kept whole without scoring); decoding steps do not.
    assert seen_inputs == [chunk] + [chunk + rows] * (length // chunk - 1) + [1, 1]
    kv_heads = model.config.num_key_value_heads
    assert cache.peak_nbytes <= (layers * BUDGET + chunk + rows) * kv_heads * bytes_per_token(model)
    assert int(cache.kept_tokens().max()) <= BUDGET + 2
    assert cache.get_seq_length() == length + 2
    assert output.shape == (1, length + 3)


@pytest.mark.parametrize("with_question", [False, True])
def test_the_lookahead_rows_leave_the_prompt_tokens_as_the_base_model_makes_them(with_question):
    """The LoRA runs on the rows only: the first layer's kept keys are the base model's keys of those prompt tokens
    (its keys depend on the token and its position alone), whichever chunk they came in, and the question's rows
    leave no key behind nor shift the positions of the chunks after them."""
    model = tiny_lookahead_model()
    prompt = prompt_ids(96)
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    if with_question:
        cache.set_question(prompt_ids(QUESTION, seed=7))
    generate(model, prompt, cache, new_tokens=1, prefill_chunk_size=32 if with_question else 16)
    full = DynamicCache()
    with torch.no_grad(), model.disable_adapter():
        model(prompt, **{CACHE_ARGUMENT: full})
    keys = cache.layers[0].keys
    matches = torch.isclose(keys[:, :, :, None], full.layers[0].keys[:, :, None], rtol=1e-4, atol=1e-5).all(-1)
    assert bool((matches.sum(-1) == 1).all())


def test_a_session_with_the_lookahead_scorer_stays_within_budget_plus_turn():
    model = tiny_lookahead_model()
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"}, evict_every_prefill=True)
    with torch.no_grad():
        for turn in range(3):
            model(prompt_ids(40, seed=turn), **{CACHE_ARGUMENT: cache})
            assert cache.kept_tokens().eq(BUDGET).all()
    assert cache.get_seq_length() == 120


def test_the_lookahead_scorer_refuses_later_prefills_of_models_with_sliding_window_layers():
    model = tiny_lookahead_model("gemma3")
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    with pytest.raises(ValueError, match="sliding-window layers would keep the lookahead rows"):
        generate(model, prompt_ids(96), cache, prefill_chunk_size=32)


@pytest.mark.parametrize("length", [96, 97])  # 97: the last chunk is one token, read as a decoding step
def test_a_streaming_budget_holds_more_while_streaming_and_the_budget_after_the_last_chunk(length):
    model = tiny_model()
    chunk, layers, streaming_budget = 16, model.config.num_hidden_layers, 40
    cache = LookaheadCache(**SETTINGS, streaming_budget=streaming_budget)
    generate(model, prompt_ids(length), cache, new_tokens=1, prefill_chunk_size=chunk)
    kv_heads = model.config.num_key_value_heads
    assert cache.peak_nbytes <= (layers * streaming_budget + chunk) * kv_heads * bytes_per_token(model)
    # More than the plain budget was held on the way (one layer at least kept streaming_budget tokens) ...
    assert cache.peak_nbytes > (layers * BUDGET + chunk) * kv_heads * bytes_per_token(model)
    # ... and the last evicting chunk went back to the budget (plus the one-token chunk read as a decoding step).
    assert int(cache.kept_tokens().max()) == BUDGET + (length - 96)


def test_a_streaming_budget_equal_to_the_budget_changes_nothing():
    model = tiny_model()
    plain, same = LookaheadCache(**SETTINGS), LookaheadCache(**SETTINGS, streaming_budget=BUDGET)
    output = generate(model, prompt_ids(96), plain, prefill_chunk_size=16)
    assert torch.equal(output, generate(model, prompt_ids(96), same, prefill_chunk_size=16))
    for layer, same_layer in zip(plain.layers, same.layers):
        assert torch.equal(layer.keys, same_layer.keys)


@pytest.mark.parametrize(
    ("settings", "message"),
    [(dict(budget=24, streaming_budget=16), "no smaller than budget"), (dict(budget=0.5, streaming_budget=64), "int")],
)
def test_bad_streaming_budgets_are_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        LookaheadCache(**settings, sink=2, window=4)


def test_a_question_rides_every_chunk_but_the_last_and_leaves_the_cache():
    model = tiny_lookahead_model()
    chunk, length, rows, layers = 32, 96, 4, model.config.num_hidden_layers
    question = prompt_ids(QUESTION, seed=7)
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    cache.set_question(question)
    seen, _ = decoder_input_lengths(
        model, lambda: generate(model, prompt_ids(length), cache, new_tokens=3, prefill_chunk_size=chunk)
    )
    # The last chunk ends with the question itself: it carries the lookahead rows alone.
    assert seen == [chunk + QUESTION + rows] * (length // chunk - 1) + [chunk + rows, 1, 1]
    kv_heads = model.config.num_key_value_heads
    assert cache.peak_nbytes <= (layers * BUDGET + chunk + QUESTION + rows) * kv_heads * bytes_per_token(model)
    assert int(cache.kept_tokens().max()) <= BUDGET + 2
    assert cache.get_seq_length() == length + 2
    # The question guided that prompt only.
    assert cache.question_for_prefill() is None


def test_with_a_question_a_chunks_lookahead_rows_vote_as_after_the_question_in_one_forward():
    """The first chunk's lookahead rows follow the chunk and the question, as in a one-shot prefill of the chunk
    followed by the question: their queries agree (up to rounding), so each chunk's eviction is question-aware."""
    model = tiny_lookahead_model()
    chunk, question = 32, prompt_ids(QUESTION, seed=7)
    prompt = prompt_ids(96)
    chunked_queries, one_shot_queries = {}, {}
    chunked = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    chunked.set_question(question)
    chunked.observe_prefill(lambda layer: chunked_queries.setdefault(layer.layer_idx, layer.lookahead_queries))
    generate(model, prompt, chunked, new_tokens=1, prefill_chunk_size=chunk)
    one_shot = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    one_shot.observe_prefill(lambda layer: one_shot_queries.setdefault(layer.layer_idx, layer.lookahead_queries))
    generate(model, torch.cat([prompt[:, :chunk], question], dim=-1), one_shot, new_tokens=1)
    assert chunked_queries.keys() == one_shot_queries.keys() == set(range(model.config.num_hidden_layers))
    for layer_idx, queries in chunked_queries.items():
        torch.testing.assert_close(queries, one_shot_queries[layer_idx], rtol=1e-4, atol=1e-4)
    # Without the question, the first chunk's rows see the chunk alone: other queries.
    unguided_queries = {}
    unguided = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    unguided.observe_prefill(lambda layer: unguided_queries.setdefault(layer.layer_idx, layer.lookahead_queries))
    generate(model, prompt, unguided, new_tokens=1, prefill_chunk_size=chunk)
    assert not torch.allclose(unguided_queries[1], one_shot_queries[1], rtol=1e-4, atol=1e-4)


def test_bad_questions_are_refused_naming_the_fix():
    question = prompt_ids(QUESTION)
    with pytest.raises(ValueError, match="guides the lookahead scorer"):
        LookaheadCache(**SETTINGS).set_question(question)
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    with pytest.raises(ValueError, match="tensor of token ids"):
        cache.set_question(question.float())
    with pytest.raises(ValueError, match="m > 0"):
        cache.set_question(question[:, :0])
    model = tiny_lookahead_model()
    two_questions = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    two_questions.set_question(prompt_ids(QUESTION, batch=2))
    with pytest.raises(ValueError, match="2 rows for a batch of 3"):
        generate(model, prompt_ids(96, batch=3), two_questions, prefill_chunk_size=32)
    read = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"})
    generate(model, prompt_ids(96), read, new_tokens=1)
    with pytest.raises(ValueError, match="before the prompt's prefill"):
        read.set_question(question)


def test_a_question_without_a_lookahead_adapter_is_refused():
    cache = LookaheadCache(budget=BUDGET, sink=2, window=4)  # scorer="auto"
    cache.set_question(prompt_ids(QUESTION))
    with pytest.raises(ValueError, match="no lookahead adapter"):
        generate(tiny_model(), prompt_ids(96), cache, prefill_chunk_size=32)


def test_a_question_in_a_loop_of_forwards_is_refused():
    """Outside generate's chunked prefill no forward says it ends the prompt, so the question could not be placed."""
    model = tiny_lookahead_model()
    cache = LookaheadCache(**{**SETTINGS, "scorer": "lookahead"}, evict_every_prefill=True)
    cache.set_question(prompt_ids(QUESTION))
    with torch.no_grad(), pytest.raises(ValueError, match="cannot tell which forward ends the prompt"):
        model(prompt_ids(40), **{CACHE_ARGUMENT: cache})
