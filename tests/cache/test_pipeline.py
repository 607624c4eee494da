"""Pipelines: every input gets its own fresh LookaheadCache."""

import pytest
import torch
from conftest import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, pipeline

from lookahead_cache import LookaheadCache, LookaheadTextGenerationPipeline
from lookahead_cache.prefill import CACHE_ARGUMENT


def word_tokenizer():
    words = [f"w{i}" for i in range(3, 128)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{word: i for i, word in enumerate(words, start=3)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def prompts():
    return [" ".join(f"w{3 + (7 * i + j) % 120}" for j in range(40 + 5 * i)) for i in range(3)]


@pytest.mark.parametrize("argument", sorted({"past_key_values", CACHE_ARGUMENT}))
def test_pipeline_gives_each_input_a_fresh_cache_and_matches_generate(argument):
    model, tokenizer = tiny_model(), word_tokenizer()
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, pipeline_class=LookaheadTextGenerationPipeline)
    template = LookaheadCache(budget=16, scorer="snapkv", window=4)
    outputs = pipe(prompts(), **{argument: template}, max_new_tokens=6, do_sample=False, return_full_text=False)

    assert not template.layers, "the template itself must stay unused"
    for prompt, output in zip(prompts(), outputs):
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            **{CACHE_ARGUMENT: LookaheadCache(budget=16, scorer="snapkv", window=4)},
            max_new_tokens=6,
            do_sample=False,
        )
        assert output[0]["generated_text"] == tokenizer.decode(expected[0, input_ids.shape[1] :])
