"""The cache on the embedded, trained SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads)."""

import pydoc_data.topics

import pytest
import torch
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.storage import PaddedLayer

pytestmark = pytest.mark.slow

TOPICS = pydoc_data.topics.topics


def chat_ids(tokenizer, question: str, context_chars: int = 0, topic: str = "for") -> torch.Tensor:
    context = TOPICS[topic][:context_chars] if context_chars else ""
    messages = [{"role": "user", "content": f"{context}\n\n{question}".strip()}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


def greedy(model, input_ids, cache, new_tokens=12, **kwargs):
    return model.generate(
        input_ids,
        attention_mask=kwargs.pop("attention_mask", torch.ones_like(input_ids)),
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=new_tokens,
        do_sample=False,
        **kwargs,
    )


def test_answer_matches_dynamic_cache_when_budget_covers_prompt(default_model):
    model, tokenizer = default_model
    input_ids = chat_ids(tokenizer, "What is the capital of France?")
    expected = greedy(model, input_ids, DynamicCache())
    assert "Paris" in tokenizer.decode(expected[0, input_ids.shape[1] :])
    assert torch.equal(
        greedy(model, input_ids, LookaheadCache(budget=input_ids.shape[1], scorer="snapkv", window=8)), expected
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_first_token_logits_identical_and_budget_kept_after_eviction(default_model, attn):
    model, tokenizer = default_model
    model.set_attn_implementation(attn)
    try:
        input_ids = chat_ids(tokenizer, "Summarise the text above.", context_chars=2500)
        with torch.no_grad():
            full = model(input_ids, **{CACHE_ARGUMENT: DynamicCache()}).logits[:, -1]
            cache = LookaheadCache(budget=128, scorer="snapkv")
            evicted = model(input_ids, **{CACHE_ARGUMENT: cache}).logits[:, -1]
        assert torch.equal(full, evicted)
        assert input_ids.shape[1] > 400
        assert torch.equal(cache.kept_tokens(), torch.full((30, 1, 3), 128))
        assert all(layer.keys.shape == (1, 3, 128, 64) for layer in cache.layers)
        assert cache.get_seq_length() == input_ids.shape[1]
        assert greedy(model, input_ids, LookaheadCache(budget=128, scorer="snapkv")).shape[1] == input_ids.shape[1] + 12
    finally:
        model.set_attn_implementation("sdpa")


def test_left_padded_batch_equals_each_prompt_alone(default_model):
    model, tokenizer = default_model
    prompts = [
        chat_ids(tokenizer, "What does the text say about loops?", context_chars=900, topic="for")[0],
        chat_ids(tokenizer, "When is the else clause run?", context_chars=450, topic="while")[0],
    ]
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((2, longest), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = prompt
        attention_mask[row, longest - len(prompt) :] = 1
    settings = dict(budget=96, scorer="snapkv")
    batched = greedy(model, input_ids, LookaheadCache(**settings), attention_mask=attention_mask, new_tokens=8)
    for row, prompt in enumerate(prompts):
        alone = greedy(model, prompt[None], LookaheadCache(**settings), new_tokens=8)
        assert torch.equal(batched[row, longest:], alone[0, len(prompt) :])


def test_second_turn_continues_the_evicted_cache(default_model):
    model, tokenizer = default_model
    first = chat_ids(tokenizer, "Read this.", context_chars=2000)
    cache = LookaheadCache(budget=128, scorer="snapkv")
    first_out = greedy(model, first, cache, new_tokens=8)
    turn = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    conversation = torch.cat([first_out, turn], dim=1)
    second_out = greedy(model, conversation, cache, new_tokens=12)
    answer = tokenizer.decode(second_out[0, conversation.shape[1] :])
    assert "Paris" in answer
    assert cache.get_seq_length() == second_out.shape[1] - 1
    # Physically: the 128 kept prompt tokens plus every token after the first prompt, except the last sampled one.
    physical = 128 + second_out.shape[1] - 1 - first.shape[1]
    assert all(isinstance(layer, PaddedLayer) and layer.keys.shape[-2] == physical for layer in cache.layers)


def test_beam_search_after_eviction(default_model):
    model, tokenizer = default_model
    input_ids = chat_ids(tokenizer, "Summarise the text above.", context_chars=1500)
    output = greedy(model, input_ids, LookaheadCache(budget=128, scorer="snapkv"), num_beams=2, new_tokens=6)
    assert output.shape == (1, input_ids.shape[1] + 6)


def test_shipped_lookahead_adapter_keeps_the_base_model_exact_and_finds_the_needle(default_model):
    import copy

    from lookahead_cache import get_lookahead, load_lookahead
    from lookahead_cache.default_model import DEFAULT_ADAPTER_DIR
    from lookahead_cache.evaluation.documents import build_needle_task

    base, tokenizer = default_model
    model = load_lookahead(copy.deepcopy(base), DEFAULT_ADAPTER_DIR, tokenizer=tokenizer)
    assert get_lookahead(model).config.num_tokens == 32
    input_ids = chat_ids(tokenizer, "Which loop statement does this text describe?", context_chars=3000)
    expected = greedy(base, input_ids, DynamicCache())
    # The LoRA idles outside the lookahead rows: plain generate, and a budget covering the prompt, are the base model.
    assert torch.equal(greedy(model, input_ids, None), expected)
    assert torch.equal(greedy(model, input_ids, LookaheadCache(budget=1.0)), expected)
    reference = base(input_ids).logits[:, -1]
    cache = LookaheadCache(budget=128)
    assert torch.equal(model(input_ids, **{CACHE_ARGUMENT: cache}).logits[:, -1], reference)
    assert cache.kept_tokens().max() == 128

    task = build_needle_task(tokenizer, 2000, seed=0)
    needle_ids = task.prompt_ids(tokenizer)
    answer = greedy(model, needle_ids, LookaheadCache(budget=256), new_tokens=24)
    assert task.code in tokenizer.decode(answer[0, needle_ids.shape[1] :])

    # The LU-KV profiles shipped beside the adapter: per-head budgets that differ, with the uniform total.
    for scorer in ("lookahead", "snapkv"):
        cache = LookaheadCache(budget=256, scorer=scorer, allocation="lukv")
        with torch.no_grad():
            model(needle_ids, **{CACHE_ARGUMENT: cache})
        kept = cache.kept_tokens()[:, 0]
        assert int(kept.sum()) == 256 * kept.numel() and int(kept.max()) > 2 * int(kept.min()), scorer


def test_converted_checkpoint_is_the_gguf_file_de_quantised_bit_for_bit(default_model):
    """`load_default_model` reads the checkpoint converted once from the GGUF file: same weights, config and
    tokenizer as de-quantising the GGUF file anew."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lookahead_cache.default_model import default_model_path

    model, tokenizer = default_model
    path = default_model_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    converted, expected = model.state_dict(), gguf_model.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[name], expected[name]) for name in expected)
    gguf_config = gguf_model.config.to_diff_dict()
    assert gguf_config.pop("quantization_config")["quant_method"] == "gguf"
    assert model.config.to_diff_dict() == gguf_config
    assert model.generation_config.to_diff_dict() == gguf_model.generation_config.to_diff_dict()
    assert tokenizer.get_vocab() == gguf_tokenizer.get_vocab()
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert tokenizer.special_tokens_map == gguf_tokenizer.special_tokens_map
