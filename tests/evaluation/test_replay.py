"""Replaying one recorded prefill for many methods gives what each method would give on its own."""

import pytest
import torch
from conftest import ARCHITECTURES, prompt_ids, synthetic_profile, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead
from lookahead_cache.config import DEFAULT_SINK, DEFAULT_WINDOW
from lookahead_cache.evaluation import methods
from lookahead_cache.evaluation.methods import METHODS, SampleRun, get_method
from lookahead_cache.evaluation.replay import dynamic_cache_from, future_queries, record_prefill
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import FutureQueriesScorer, get_scorer

SETTINGS = dict(budget=16, window=4, sink=2)


def greedy(model, input_ids, cache, new_tokens=8):
    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=new_tokens,
        do_sample=False,
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("scorer, allocation", [("snapkv", "uniform"), ("knorm", "pyramid")])
def test_cache_from_recorded_prefill_equals_a_cache_that_ran_the_prefill(architecture, scorer, allocation):
    model = tiny_model(architecture)
    input_ids = prompt_ids(60)
    live = LookaheadCache(**SETTINGS, scorer=scorer, allocation=allocation)
    expected = greedy(model, input_ids, live)

    recording = record_prefill(model, input_ids)
    replayed = LookaheadCache.from_prefill(recording.prefills, **SETTINGS, scorer=scorer, allocation=allocation)
    assert torch.equal(replayed.kept_tokens(), live_kept := _kept_after_prefill(model, input_ids, scorer, allocation))
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    assert torch.equal(greedy(model, torch.cat([input_ids, first], -1), replayed, new_tokens=7), expected)
    assert live_kept.shape[0] == model.config.num_hidden_layers


def _kept_after_prefill(model, input_ids, scorer, allocation):
    cache = LookaheadCache(**SETTINGS, scorer=scorer, allocation=allocation)
    with torch.no_grad():
        model(input_ids, **{CACHE_ARGUMENT: cache})
    return cache.kept_tokens()


def test_recording_leaves_the_full_cache_intact_for_every_replay():
    model = tiny_model("llama")
    input_ids = prompt_ids(50)
    recording = record_prefill(model, input_ids)
    full_logits = model(input_ids, **{CACHE_ARGUMENT: DynamicCache()}).logits[:, -1]
    torch.testing.assert_close(recording.next_token_logits, full_logits)
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    expected = greedy(model, input_ids, DynamicCache())
    for _ in range(2):  # a second replay sees the same recording
        LookaheadCache.from_prefill(recording.prefills, **SETTINGS, scorer="snapkv")
        assert torch.equal(
            greedy(model, torch.cat([input_ids, first], -1), dynamic_cache_from(recording.prefills), 7), expected
        )


def test_future_queries_score_the_attention_the_answer_pays_to_the_prompt():
    model = tiny_model("llama", attn_implementation="eager")
    input_ids = prompt_ids(40)
    answer = greedy(model, input_ids, DynamicCache(), new_tokens=5)[:, 40:]
    recording = record_prefill(model, input_ids)
    scorer = FutureQueriesScorer(future_queries(model, recording.prefills, answer))

    with torch.no_grad():
        attentions = model(
            answer, **{CACHE_ARGUMENT: dynamic_cache_from(recording.prefills)}, output_attentions=True
        ).attentions
    for prefill, attention in zip(recording.prefills, attentions):
        on_prompt = attention[..., :40]
        on_prompt = on_prompt / on_prompt.sum(-1, keepdim=True)  # the scorer's softmax spans the prompt keys only
        groups = model.config.num_attention_heads // model.config.num_key_value_heads
        expected = on_prompt.mean(2).view(1, -1, groups, 40).mean(2)
        torch.testing.assert_close(scorer.score(prefill), expected, rtol=1e-4, atol=1e-6)


def test_future_queries_scorer_needs_queries():
    with pytest.raises(ValueError, match="future_queries"):
        get_scorer("future_queries")


@pytest.mark.parametrize("question_aware", [True, False])
def test_every_method_answers_from_one_recording(question_aware, tmp_path):
    # With a (new, idle) lookahead adapter, so that the lookahead methods run too, and LU-KV profiles beside it.
    model = add_lookahead(tiny_model("qwen3"), LookaheadConfig(num_tokens=8)).eval()
    for scorer in ("snapkv", "lookahead"):
        # The evaluation's methods protect the default sink and window.
        synthetic_profile(scorer=scorer, model=model, sink=DEFAULT_SINK, window=DEFAULT_WINDOW).save_pretrained(
            tmp_path
        )
    get_lookahead(model).source = str(tmp_path)
    context, question = prompt_ids(70), prompt_ids(6, seed=1)
    prefilled = torch.cat([context, question], -1) if question_aware else context
    run = SampleRun(
        model=model,
        prefilled_ids=prefilled,
        question_ids=question[:, :0] if question_aware else question,
        recording=record_prefill(model, prefilled),
        max_new_tokens=6,
        eos_token_id=None,
    )
    expected = greedy(model, torch.cat([context, question], -1), DynamicCache(), new_tokens=6)[:, 76:]
    run.full_answer_ids = run.answer(get_method("full")(run, None))
    assert torch.equal(run.full_answer_ids, expected)
    for name in METHODS:
        if name == "full":
            continue
        cache = get_method(name)(run, 40)
        assert cache.kept_tokens().float().mean() == 40, name
        assert run.answer(cache).shape == (1, 6), name
        if question_aware:  # the first token comes from the full prompt, whatever is evicted
            assert run.answer(get_method(name)(run, 40))[0, 0] == expected[0, 0]


def test_lookahead_tokens_run_once_per_sample_for_every_method_and_budget(monkeypatch, tmp_path):
    model = add_lookahead(tiny_model("llama"), LookaheadConfig(num_tokens=8)).eval()
    torch.nn.init.normal_(get_lookahead(model).embeddings, std=1.0)
    synthetic_profile(scorer="lookahead", model=model, sink=DEFAULT_SINK, window=DEFAULT_WINDOW).save_pretrained(
        tmp_path
    )
    get_lookahead(model).source = str(tmp_path)
    input_ids = prompt_ids(70)
    recording = record_prefill(model, input_ids)
    calls = []
    original = methods.lookahead_queries
    monkeypatch.setattr(methods, "lookahead_queries", lambda *args: calls.append(1) or original(*args))
    run = SampleRun(model, input_ids, input_ids[:, :0], recording, max_new_tokens=4, eos_token_id=None)
    names = ("lookahead", "lookahead-adakv", "lookahead-lukv")
    caches = {(name, budget): get_method(name)(run, budget) for name in names for budget in (40, 48)}
    assert len(calls) == 1
    fresh = SampleRun(model, input_ids, input_ids[:, :0], recording, max_new_tokens=4, eos_token_id=None)
    for (name, budget), cache in caches.items():
        assert torch.equal(cache.kept_tokens(), get_method(name)(fresh, budget).kept_tokens()), (name, budget)
    assert len(calls) == 2


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_stacked_caches_decode_each_row_as_its_cache_alone(architecture):
    # Different scorers, budgets and allocations: rows keep different slot counts per layer and head.
    model = tiny_model(architecture)
    input_ids = prompt_ids(60)
    recording = record_prefill(model, input_ids)
    settings = [
        dict(SETTINGS, scorer="snapkv"),
        dict(SETTINGS, budget=24, scorer="knorm", allocation="pyramid"),
        dict(SETTINGS, budget=12, scorer="streaming"),
    ]
    caches = [LookaheadCache.from_prefill(recording.prefills, **s) for s in settings]
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    fed = torch.cat([input_ids, first], -1)
    alone = [greedy(model, fed, LookaheadCache.from_prefill(recording.prefills, **s), new_tokens=7) for s in settings]

    sizes = [cache.nbytes() for cache in caches]
    stacked = LookaheadCache.stack(caches)
    assert stacked.kept_tokens().sum((0, 2)).tolist() == [c.kept_tokens().sum().item() for c in caches]
    together = greedy(model, fed.expand(3, -1), stacked, new_tokens=7)
    for row, expected in zip(together, alone):
        assert torch.equal(row[None], expected)
    assert [cache.nbytes() for cache in caches] == sizes  # the stacked rows are copies


def test_batched_answers_stop_at_each_rows_end_of_sequence():
    model = tiny_model("llama")
    input_ids = prompt_ids(50)
    recording = record_prefill(model, input_ids)
    run = SampleRun(model, input_ids, input_ids[:, :0], recording, max_new_tokens=8, eos_token_id=None)
    settings = [dict(SETTINGS, budget=budget, scorer="snapkv") for budget in (8, 16, 32)]
    alone = [run.answer(LookaheadCache.from_prefill(recording.prefills, **s)) for s in settings]
    # An end-of-sequence token that the first row produces and the others never do.
    others = {int(token) for answer in alone[1:] for token in answer[0]}
    unique = [int(token) for token in alone[0][0, 1:-1] if int(token) not in others]
    if not unique:
        pytest.skip("the first row has no token of its own")
    run.eos_token_id = unique[0]
    answers = run.answers([LookaheadCache.from_prefill(recording.prefills, **s) for s in settings])
    length = alone[0][0].tolist().index(unique[0]) + 1
    assert torch.equal(answers[0], alone[0][:, :length])
    assert all(torch.equal(together, expected) for together, expected in zip(answers[1:], alone[1:]))


def test_stack_needs_compressed_caches_of_one_prompt():
    model = tiny_model("llama")
    short, long = record_prefill(model, prompt_ids(40)), record_prefill(model, prompt_ids(50))
    with pytest.raises(ValueError, match="same prompt"):
        LookaheadCache.stack(
            [LookaheadCache.from_prefill(r.prefills, **SETTINGS, scorer="snapkv") for r in (short, long)]
        )
    with pytest.raises(ValueError, match="prefill has ended"):
        LookaheadCache.stack([LookaheadCache(**SETTINGS, scorer="snapkv")])
