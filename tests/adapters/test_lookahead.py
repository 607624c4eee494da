"""The lookahead scorer end to end on tiny random-weight models: exactness, eviction, adapter files, bad input."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import ARCHITECTURES, prompt_ids, tiny_model
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.testing_utils import CaptureLogger

from lookahead_cache import LookaheadCache
from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead, load_lookahead
from lookahead_cache.adapters.config import INERT_INVOCATION_TOKENS
from lookahead_cache.evaluation.replay import lookahead_queries, record_prefill
from lookahead_cache.evaluation.timing import timed_generation
from lookahead_cache.lookahead_rows import grouped_query_attention
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import LookaheadScorer
from lookahead_cache.training import kl_loss

NUM_TOKENS = 8


def lookahead_model(architecture="llama", seed=0):
    """A tiny model with a lookahead adapter whose LoRA and embeddings are far from a no-op."""
    peft_model = add_lookahead(tiny_model(architecture, seed=seed), LookaheadConfig(num_tokens=NUM_TOKENS))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft_model.eval()


def padded_batch(length=48, pad=9):
    input_ids = prompt_ids(length, batch=2, seed=3)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :pad], attention_mask[1, :pad] = 0, 0
    return input_ids, attention_mask


def greedy(model, input_ids, attention_mask, cache=None, new_tokens=8):
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **{CACHE_ARGUMENT: cache},
        max_new_tokens=new_tokens,
        do_sample=False,
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_peft_model_without_our_cache_generates_like_the_base_model(architecture):
    base = tiny_model(architecture)
    model = lookahead_model(architecture)
    input_ids, attention_mask = padded_batch()
    assert torch.equal(greedy(model, input_ids, attention_mask), greedy(base, input_ids, attention_mask))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prompt_kv_and_first_token_logits_are_the_base_models_bit_for_bit(architecture):
    base = tiny_model(architecture)
    model = lookahead_model(architecture)
    input_ids, attention_mask = padded_batch()
    reference_cache = DynamicCache()
    reference = base(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: reference_cache}).logits
    # The first row (48 tokens) evicts, so the lookahead rows join the prefill; the second (39) is kept whole.
    cache = LookaheadCache(budget=40, scorer="lookahead", sink=0, window=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: cache}).logits
    assert cache.is_compressed
    assert torch.equal(logits, reference)
    real = attention_mask.bool()
    for layer, reference_layer in zip(cache.layers, reference_cache.layers):
        if not hasattr(layer, "prompt_slots"):  # sliding-window layers keep their window, as DynamicCache's
            continue
        for row in range(2):
            for head in range(layer.keys.shape[1]):
                kept_keys = layer.keys[row, head][-min(40, int(real[row].sum())) :]
                reference_keys = reference_layer.keys[row, head]
                # Each kept key is, bit for bit, the base model's key of one real prompt position, in prompt order.
                matches = (kept_keys[:, None] == reference_keys[None]).all(-1)
                assert bool((matches.sum(-1) == 1).all())
                positions = matches.int().argmax(-1)
                assert bool(real[row, positions].all()) and bool((positions.diff() > 0).all())
                kept_values = layer.values[row, head][-len(positions) :]
                assert torch.equal(kept_values, reference_layer.values[row, head][positions])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("length", [200, 800])
def test_long_prompts_keep_the_first_token_logits_bit_for_bit(attn, length):
    """Attention kernels round differently with the number of query rows (CPU SDPA does at these lengths): the
    prompt rows must not attend in the same call as the lookahead rows."""
    base = tiny_model("llama", attn)
    model = lookahead_model()
    model.get_base_model().set_attn_implementation(attn)
    input_ids = prompt_ids(length, seed=11)
    with torch.no_grad():
        reference = base(input_ids=input_ids).logits
        logits = model(input_ids=input_ids, **{CACHE_ARGUMENT: LookaheadCache(budget=64, scorer="lookahead")}).logits
    assert torch.equal(logits, reference)
    assert model.config._attn_implementation == attn


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_budget_of_the_whole_prompt_generates_exactly_the_base_text(architecture):
    base = tiny_model(architecture)
    model = lookahead_model(architecture)
    input_ids, attention_mask = padded_batch()
    expected = greedy(base, input_ids, attention_mask)
    assert torch.equal(greedy(model, input_ids, attention_mask, LookaheadCache(budget=1.0)), expected)
    # The first row (48 tokens) evicts, so the lookahead rows and their LoRA join the prefill; the second row (39
    # tokens) is within the budget and must still write the base model's text.
    generated = greedy(model, input_ids, attention_mask, LookaheadCache(budget=40, sink=2, window=4))
    assert torch.equal(generated[1], expected[1])


def test_lora_runs_on_the_lookahead_rows_once_and_never_while_decoding():
    """PEFT's aLoRA, left on, runs its LoRA on an empty row selection at every forward: ops for nothing while
    decoding and a host sync per layer on a GPU. Only the prefill that carries the lookahead rows may run it, on
    those rows alone."""
    model = lookahead_model()
    adapter = get_lookahead(model)
    layers = adapter.lora_layers(model)
    lora_A_weights = {id(layer.lora_A[adapter.adapter_name].weight) for layer in layers}
    calls = []

    class RecordLoraA(TorchFunctionMode):
        """Records the rows of every product with a lookahead LoRA's A matrix, called as a module or a function."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.linear and id(args[1]) in lora_A_weights:
                calls.append(args[0].shape[:-1].numel())
            return func(*args, **(kwargs or {}))

    input_ids, attention_mask = padded_batch()
    with RecordLoraA():
        greedy(model, input_ids, attention_mask)
        assert calls == []
        greedy(model, input_ids, attention_mask, LookaheadCache(budget=24, scorer="lookahead", sink=2, window=4))
        # One prefill of prompt + lookahead rows, the LoRA on the lookahead rows of both sequences; the scorer reads
        # the queries that prefill computed.
        assert calls == [2 * NUM_TOKENS] * len(layers)
        # A budget covering the prompt evicts nothing, so nothing is scored: no lookahead rows, no LoRA.
        calls.clear()
        greedy(model, input_ids, attention_mask, LookaheadCache(budget=48, scorer="lookahead", sink=2, window=4))
        assert calls == []


def test_timed_generation_writes_what_generate_writes_and_decodes_past_peft_as_generate_does():
    """The benchmark's hand-written loop gives generate's tokens; like PeftModel.generate, it runs the decoding
    steps on the wrapped model, so PEFT's per-call aLoRA bookkeeping is paid once, at the prefill."""
    model = lookahead_model()
    input_ids = prompt_ids(48, seed=3)
    settings = {"budget": 24, "scorer": "lookahead", "sink": 2, "window": 4}
    expected = greedy(model, input_ids, torch.ones_like(input_ids), LookaheadCache(**settings))[0, 48:].tolist()
    peft_calls = []
    handle = model.register_forward_pre_hook(lambda module, args: peft_calls.append(module))
    timed = timed_generation(model, input_ids, LookaheadCache(**settings), new_tokens=8)
    handle.remove()
    assert timed.tokens == expected
    assert len(peft_calls) == 1


@pytest.mark.parametrize("rows", [NUM_TOKENS, 48 + NUM_TOKENS])
def test_the_lookahead_lora_adds_what_peft_alora_adds_on_the_lookahead_rows(rows):
    """The hook that applies the LoRA with the layers switched off computes PEFT's aLoRA with offsets on the
    lookahead rows (the lookahead rows alone, as replay runs them, or after a prompt)."""
    model = lookahead_model()
    adapter = get_lookahead(model)
    layer = adapter.lora_layers(model)[0]
    x = torch.randn(2, rows, layer.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with adapter.lora_on_lookahead_rows(model):
            ours = layer(x)
        base = layer(x)
        layer.enable_adapters(True)
        peft = layer(x, alora_offsets=[NUM_TOKENS, NUM_TOKENS])
        layer.enable_adapters(False)
    assert torch.equal(ours[:, :-NUM_TOKENS], base[:, :-NUM_TOKENS])
    assert not torch.allclose(ours[:, -NUM_TOKENS:], base[:, -NUM_TOKENS:])
    torch.testing.assert_close(ours, peft, rtol=0, atol=1e-6)


def test_switching_the_lora_keeps_which_weights_train():
    model = add_lookahead(tiny_model(), LookaheadConfig(num_tokens=NUM_TOKENS))
    adapter = get_lookahead(model)
    trainable = {name for name, weight in model.named_parameters() if weight.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    input_ids, attention_mask = padded_batch()
    greedy(model, input_ids, attention_mask, LookaheadCache(budget=24, scorer="lookahead", sink=2, window=4))
    assert {name for name, weight in model.named_parameters() if weight.requires_grad} == trainable
    assert all(layer.disable_adapters for layer in adapter.lora_layers(model))


def test_lookahead_prefill_holds_at_most_one_uncompressed_layer_plus_its_lookahead_rows():
    model = lookahead_model()
    length, budget = 200, 16
    cache = LookaheadCache(budget=budget, scorer="lookahead", window=4)
    with torch.no_grad():
        model(prompt_ids(length), **{CACHE_ARGUMENT: cache})
        full = DynamicCache()
        model.get_base_model()(prompt_ids(length), **{CACHE_ARGUMENT: full})
    layer_bytes = full.layers[0].keys.nbytes + full.layers[0].values.nbytes
    assert cache.nbytes() == 3 * layer_bytes * budget // length
    # While layer l is prefilled, layers < l are compressed and l holds the prompt and the lookahead tokens.
    assert cache.peak_nbytes == layer_bytes * (length + NUM_TOKENS) // length + 2 * layer_bytes * budget // length


def test_decoder_outputs_have_the_prompt_rows_only():
    model = lookahead_model()
    base = tiny_model()
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **{CACHE_ARGUMENT: LookaheadCache(budget=16, scorer="lookahead", sink=2, window=4)},
            output_hidden_states=True,
        )
        reference = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(reference.hidden_states)
    for hidden, reference_hidden in zip(out.hidden_states, reference.hidden_states):
        assert torch.equal(hidden, reference_hidden)


def test_a_prefill_that_fails_leaves_the_lookahead_lora_off():
    model = lookahead_model()
    base = tiny_model()
    input_ids, attention_mask = padded_batch()
    attention = model.get_base_model().model.layers[1].self_attn

    def fail(module, args, kwargs):
        raise RuntimeError("interrupted")

    handle = attention.register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="interrupted"), torch.no_grad():
        model(input_ids=input_ids, **{CACHE_ARGUMENT: LookaheadCache(budget=16, scorer="lookahead", window=4)})
    handle.remove()
    assert model.config._attn_implementation == "sdpa"
    # The model PEFT wraps, called directly: no PEFT hook of its own decides the offsets there.
    with torch.no_grad():
        logits = model.get_base_model()(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(logits, base(input_ids=input_ids, attention_mask=attention_mask).logits)


def test_lookahead_queries_in_the_prefill_equal_those_run_after_a_recorded_prompt():
    """The live prefill carries the lookahead rows in the prompt's forward; training and replay run them after a
    recorded prompt. Both give the same queries, for every row of a left-padded batch."""
    model = lookahead_model()
    input_ids, attention_mask = padded_batch()
    live: dict[int, torch.Tensor] = {}

    class Recording(LookaheadScorer):
        def score(self, prefill):
            live[prefill.layer_idx] = prefill.lookahead_queries
            return super().score(prefill)

    # Positions as generate gives them: each row's real tokens from 0, so the lookahead rows follow at its length.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = LookaheadCache(budget=16, scorer=Recording(), sink=2, window=4)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **{CACHE_ARGUMENT: cache})
        for row in range(2):
            real = input_ids[row : row + 1, attention_mask[row].bool()]
            replayed = lookahead_queries(model, record_prefill(model.get_base_model(), real).prefills)
            for layer_idx, queries in enumerate(replayed):
                torch.testing.assert_close(live[layer_idx][row : row + 1], queries, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_heads", [1, 4])
def test_lookahead_rows_attend_as_sdpa_with_repeated_keys(mask_heads):
    """The lookahead rows' attention stacks each GQA group's query heads instead of repeating the keys; it gives
    what transformers' SDPA gives, padding and per-head masks included."""
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, rows, keys, dim = 2, 4, 2, 3, 11, 8
    query = torch.randn(batch, heads, rows, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, keys, dim, generator=generator) for _ in range(2))
    mask = torch.rand(batch, mask_heads, rows, keys, generator=generator) > 0.3
    mask[..., -1] = True  # every row attends somewhere
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(grouped_query_attention(query, key, value, mask, 0.3), expected, rtol=0, atol=1e-6)


def test_decoding_after_eviction_is_the_base_model_on_the_kept_tokens():
    """The live cache equals a replay of the same scores, and the base model decoding from the replay writes the
    same tokens: nothing of the adapter leaks into decoding."""
    base = tiny_model()
    model = lookahead_model()
    input_ids = prompt_ids(64, seed=5)
    live = LookaheadCache(budget=20, scorer="lookahead", sink=2, window=4)
    generated = greedy(model, input_ids, torch.ones_like(input_ids), live, new_tokens=6)

    recording = record_prefill(model.get_base_model(), input_ids)
    with torch.no_grad():
        queries = lookahead_queries(model, recording.prefills)
    prefills = [replace(prefill, lookahead_queries=q) for prefill, q in zip(recording.prefills, queries)]
    replayed = LookaheadCache.from_prefill(prefills, budget=20, scorer="lookahead", sink=2, window=4)
    base_cache = LookaheadCache.from_prefill(record_prefill(base, input_ids).prefills, budget=1.0, scorer="streaming")
    for replay_layer, base_layer in zip(replayed.layers, base_cache.layers):
        base_layer.keys, base_layer.values = replay_layer.keys.clone(), replay_layer.values.clone()
        base_layer.prompt_slots = replay_layer.prompt_slots
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    continued = base.generate(
        input_ids=torch.cat([input_ids, first], -1), **{CACHE_ARGUMENT: base_cache}, max_new_tokens=5, do_sample=False
    )
    assert torch.equal(generated, continued)
    for live_layer, replay_layer in zip(live.layers, replayed.layers):
        assert torch.equal(live_layer.keys[:, :, :20], replay_layer.keys)


def test_scores_follow_the_lookahead_attention():
    """Trained towards attention on three tokens, the lookahead tokens' attention moves there, and the cache keeps
    exactly the tokens that attention ranks highest."""
    model = lookahead_model()
    input_ids = prompt_ids(40, seed=7)
    recording = record_prefill(model.get_base_model(), input_ids)
    target = torch.zeros(3, 2, 40)
    target[..., [5, 17, 23]] = 1 / 3
    adapter = get_lookahead(model)
    parameters = [p for p in model.parameters() if p.requires_grad] + [adapter.embeddings]
    optimizer = torch.optim.Adam(parameters, lr=5e-2)
    losses = []
    for _ in range(60):
        loss = kl_loss(lookahead_queries(model, recording.prefills), recording.prefills, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    # Unpooled, to see the learned attention itself.
    cache = LookaheadCache(budget=3, scorer="lookahead", sink=0, window=0, scorer_kwargs={"kernel_size": 1})
    with torch.no_grad():
        model(input_ids=input_ids, **{CACHE_ARGUMENT: cache})
        queries = lookahead_queries(model, recording.prefills)
    for layer, prefill, layer_queries in zip(cache.layers, recording.prefills, queries):
        scores = LookaheadScorer(kernel_size=1).score(replace(prefill, lookahead_queries=layer_queries))[0]
        assert (scores[:, [5, 17, 23]].sum(-1) > 0.6).all()
        for head in range(2):
            top = scores[head].topk(3).indices.sort().values
            assert torch.equal(layer.keys[0, head], prefill.keys[0, head, top])


def test_only_the_lookahead_parameters_train():
    model = lookahead_model()
    adapter = get_lookahead(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert adapter.embeddings.requires_grad
    input_ids = prompt_ids(32, seed=2)
    recording = record_prefill(model.get_base_model(), input_ids)
    target = torch.full((3, 2, 32), 1 / 32)
    kl_loss(lookahead_queries(model, recording.prefills), recording.prefills, target).backward()
    assert adapter.embeddings.grad is not None and adapter.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if not p.requires_grad)


def saved_adapter(tmp_path, architecture="llama"):
    model = lookahead_model(architecture)
    get_lookahead(model).save_pretrained(tmp_path)
    return model


def test_save_then_load_gives_the_same_scores_and_text(tmp_path):
    model = saved_adapter(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "lookahead_config.json",
        "lookahead_embeddings.safetensors",
        "README.md",
    }
    loaded = load_lookahead(tiny_model(), tmp_path)
    input_ids, attention_mask = padded_batch()
    settings = dict(budget=20, scorer="lookahead", sink=2, window=4)
    assert torch.equal(
        greedy(loaded, input_ids, attention_mask, LookaheadCache(**settings)),
        greedy(model, input_ids, attention_mask, LookaheadCache(**settings)),
    )
    card = (tmp_path / "README.md").read_text()
    assert (
        card.startswith("---\nbase_model:") and "library_name: peft" in card and "pipeline_tag: text-generation" in card
    )


def test_peft_from_pretrained_alone_is_the_base_model_and_our_cache_explains_what_is_missing(tmp_path):
    saved_adapter(tmp_path)
    base = tiny_model()
    peft_only = PeftModel.from_pretrained(tiny_model(), str(tmp_path))
    input_ids, attention_mask = padded_batch()
    assert torch.equal(greedy(peft_only, input_ids, attention_mask), greedy(base, input_ids, attention_mask))
    with pytest.raises(ValueError, match="load_lookahead"):
        greedy(peft_only, input_ids, attention_mask, LookaheadCache(budget=20, scorer="lookahead", sink=2, window=4))


def test_lookahead_scorer_without_adapter_names_the_fix():
    input_ids, attention_mask = padded_batch()
    with pytest.raises(ValueError, match="lookahead adapter.*load_lookahead.*snapkv"):
        greedy(tiny_model(), input_ids, attention_mask, LookaheadCache(budget=20, scorer="lookahead", sink=2, window=4))


def test_default_scorer_is_the_lookahead_scorer_on_a_model_with_an_adapter():
    model = lookahead_model()
    input_ids, attention_mask = padded_batch()
    settings = dict(budget=20, sink=2, window=4)
    default = LookaheadCache(**settings)
    explicit = LookaheadCache(scorer="lookahead", **settings)
    assert torch.equal(
        greedy(model, input_ids, attention_mask, default), greedy(model, input_ids, attention_mask, explicit)
    )
    assert isinstance(default.scorer, LookaheadScorer)
    assert torch.equal(default.kept_tokens(), explicit.kept_tokens())
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(default.layers, explicit.layers))


def test_default_scorer_falls_back_to_snapkv_without_an_adapter_and_says_so_once():
    from transformers.utils import logging

    logging.get_logger("lookahead_cache").warning_once.cache_clear()
    input_ids, attention_mask = padded_batch()
    settings = dict(budget=20, sink=2, window=4)
    with CaptureLogger(logging.get_logger("lookahead_cache.cache")) as captured:
        default = LookaheadCache(**settings)
        text = greedy(tiny_model(), input_ids, attention_mask, default)
        greedy(tiny_model(), input_ids, attention_mask, LookaheadCache(**settings))
    assert captured.out.count("no lookahead adapter, so prompt tokens are scored with snapkv") == 1
    explicit = LookaheadCache(scorer="snapkv", **settings)
    assert torch.equal(text, greedy(tiny_model(), input_ids, attention_mask, explicit))
    assert torch.equal(default.kept_tokens(), explicit.kept_tokens())
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(default.layers, explicit.layers))
    # A fresh copy of a cache that fell back asks again: the next model may carry an adapter.
    assert default.fresh().cache_config.scorer == "auto"


def test_scorer_arguments_need_a_named_scorer():
    with pytest.raises(ValueError, match="scorer_kwargs.*need a named scorer"):
        LookaheadCache(budget=64, scorer_kwargs={"window": 8})


def test_adapter_for_another_base_model_is_refused_naming_both(tmp_path):
    saved_adapter(tmp_path, "qwen3")
    with pytest.raises(ValueError, match=r"model_type: adapter 'qwen3' vs model 'llama'"):
        load_lookahead(tiny_model("llama"), tmp_path)
    config = json.loads((tmp_path / "lookahead_config.json").read_text())
    config["base_model"]["model_type"] = "llama"
    config["base_model"]["num_hidden_layers"] = 5
    (tmp_path / "lookahead_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"num_hidden_layers: adapter 5 vs model 3"):
        load_lookahead(tiny_model("llama"), tmp_path)


def test_tokenizer_mismatch_is_refused(tmp_path):
    saved_adapter(tmp_path)
    config = json.loads((tmp_path / "lookahead_config.json").read_text())
    config["base_model"]["tokenizer_sha256"] = "0" * 64
    (tmp_path / "lookahead_config.json").write_text(json.dumps(config))

    class Tokenizer:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    with pytest.raises(ValueError, match="tokenizer_sha256"):
        load_lookahead(tiny_model(), tmp_path, tokenizer=Tokenizer())


@pytest.mark.parametrize(
    "missing", ["adapter_model.safetensors", "lookahead_embeddings.safetensors", "lookahead_config.json"]
)
def test_missing_file_is_named(tmp_path, missing):
    saved_adapter(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_lookahead(tiny_model(), tmp_path)


def test_pickled_weights_are_never_loaded(tmp_path):
    saved_adapter(tmp_path)
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save(weights, tmp_path / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
        load_lookahead(tiny_model(), tmp_path)


@pytest.mark.parametrize("corrupted", ["adapter_model.safetensors", "lookahead_embeddings.safetensors"])
def test_corrupted_weights_are_refused(tmp_path, corrupted):
    saved_adapter(tmp_path)
    data = (tmp_path / corrupted).read_bytes()
    (tmp_path / corrupted).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{corrupted} is not a valid safetensors file"):
        load_lookahead(tiny_model(), tmp_path)


def test_embeddings_of_the_wrong_shape_or_non_finite_are_refused(tmp_path):
    saved_adapter(tmp_path)
    save_file({"embeddings": torch.zeros(NUM_TOKENS + 1, 64)}, str(tmp_path / "lookahead_embeddings.safetensors"))
    with pytest.raises(ValueError, match=r"shape \(9, 64\), expected \(8, 64\)"):
        load_lookahead(tiny_model(), tmp_path)
    embeddings = torch.zeros(NUM_TOKENS, 64)
    embeddings[0, 0] = float("nan")
    save_file({"embeddings": embeddings}, str(tmp_path / "lookahead_embeddings.safetensors"))
    with pytest.raises(ValueError, match="non-finite"):
        load_lookahead(tiny_model(), tmp_path)


def test_a_plain_lora_is_not_taken_for_a_lookahead_lora(tmp_path):
    saved_adapter(tmp_path)
    plain = get_peft_model(tiny_model(), LoraConfig(r=8, target_modules=["q_proj"]))
    plain.save_pretrained(tmp_path / "plain")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "plain" / name, tmp_path / name)
    with pytest.raises(ValueError, match="not a lookahead LoRA"):
        load_lookahead(tiny_model(), tmp_path)
    assert INERT_INVOCATION_TOKENS == [-1]


def test_bad_config_file_is_refused(tmp_path):
    saved_adapter(tmp_path)
    (tmp_path / "lookahead_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable lookahead config"):
        load_lookahead(tiny_model(), tmp_path)


def test_load_from_the_hub_honours_the_revision(tmp_path, local_hub):
    first = saved_adapter(tmp_path / "v1", "llama")
    sha1 = local_hub.publish("lookahead-org/tiny-llama", tmp_path / "v1")
    with torch.no_grad():
        get_lookahead(first).embeddings.mul_(-1)
    get_lookahead(first).save_pretrained(tmp_path / "v2")
    local_hub.publish("lookahead-org/tiny-llama", tmp_path / "v2")

    old = load_lookahead(tiny_model(), "lookahead-org/tiny-llama", revision=sha1)
    new = load_lookahead(tiny_model(), "lookahead-org/tiny-llama")
    saved_v1 = load_file(str(tmp_path / "v1" / "lookahead_embeddings.safetensors"))["embeddings"]
    assert torch.equal(get_lookahead(old).embeddings, saved_v1)
    assert torch.equal(get_lookahead(new).embeddings, -saved_v1)
    peft_only = PeftModel.from_pretrained(tiny_model(), "lookahead-org/tiny-llama", revision=sha1)
    lora = load_file(str(tmp_path / "v1" / "adapter_model.safetensors"))
    name = next(iter(lora))
    loaded = dict(peft_only.named_parameters())[name.replace(".weight", ".default.weight")]
    assert torch.equal(loaded, lora[name])
    with pytest.raises(FileNotFoundError, match="lookahead-org/absent"):
        load_lookahead(tiny_model(), "lookahead-org/absent")
