"""Per-head packed storage: exact bytes, in-place appends, and attention equal to the full cache restricted to the
kept tokens of every head."""

import copy

import pytest
import torch
from conftest import kept_positions, prompt_ids, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.decoding import packed_decode_attention
from lookahead_cache.kernels import varlen_decode as kernel_module
from lookahead_cache.kernels.varlen_decode import varlen_decode_attention_triton
from lookahead_cache.prefill import CACHE_ARGUMENT, cache_argument
from lookahead_cache.storage import DEFAULT_GROWTH, PackedLayer

BUDGET = dict(budget=20, scorer="snapkv", allocation="adakv", sink=2, window=4)


def padded_batch(length=48, pad=9):
    input_ids = prompt_ids(length, batch=2, seed=3)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :pad], attention_mask[1, :pad] = 0, 0
    return input_ids, attention_mask


@pytest.mark.parametrize("attn", ["sdpa", "eager", "lookahead_varlen"])
def test_attention_over_packed_heads_equals_full_attention_restricted_to_each_heads_kept_tokens(attn):
    """Every attention module's output while decoding from the packed cache equals the same module reading the
    full cache with every evicted (row, head, token) masked out, on a left-padded batch with GQA."""
    model = tiny_model("llama", attn)
    input_ids, attention_mask = padded_batch()
    cache, full = LookaheadCache(**BUDGET), DynamicCache()
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: cache})
        model(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: full})
    assert isinstance(cache.layers[0], PackedLayer)  # its heads keep different counts
    kept = [kept_positions(layer, full_layer.keys) for layer, full_layer in zip(cache.layers, full.layers)]

    attentions = [layer.self_attn for layer in model.model.layers]
    captured = {}

    def capture(index):
        def hook(module, args, kwargs, output):
            if cache_argument(kwargs) is cache:
                captured[index] = (kwargs["hidden_states"], kwargs["position_embeddings"], output[0])

        return hook

    handles = [module.register_forward_hook(capture(i), with_kwargs=True) for i, module in enumerate(attentions)]
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    position = attention_mask.sum(-1, keepdim=True)
    mask = attention_mask.clone()
    try:
        for step in range(3):
            token = prompt_ids(1, batch=2, seed=10 + step)
            mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
            with torch.no_grad():
                model(input_ids=token, attention_mask=mask, position_ids=position + step, **{CACHE_ARGUMENT: cache})
                for index, module in enumerate(attentions):
                    hidden_states, position_embeddings, output = captured[index]
                    # The full cache, every head reading its kept prompt tokens plus every token decoded since.
                    decoded = torch.ones(2, kept[index].shape[1], step + 1, dtype=torch.bool)
                    allowed = torch.cat([kept[index], decoded], dim=-1).repeat_interleave(groups, dim=1)[:, :, None]
                    if attn == "eager":
                        allowed = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
                    reference, _ = module(
                        hidden_states=hidden_states,
                        position_embeddings=position_embeddings,
                        attention_mask=allowed,
                        **{CACHE_ARGUMENT: full},
                    )
                    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-6)
    finally:
        for handle in handles:
            handle.remove()


def test_bytes_are_the_kept_tokens_bytes_and_decoding_appends_in_place():
    model = tiny_model("llama")
    input_ids, attention_mask = padded_batch()
    cache = LookaheadCache(**BUDGET)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask, **{CACHE_ARGUMENT: cache})
    head_dim = cache.layers[0].row_keys.shape[-1]
    token_bytes = 2 * head_dim * 4  # a key and a value in float32
    assert cache.nbytes() == int(cache.kept_tokens().sum()) * token_bytes
    packed = [layer for layer in cache.layers if isinstance(layer, PackedLayer)]
    assert packed
    # The padded layout would hold every head at its layer's longest head.
    padded = sum(layer.prompt_slots * layer.prompt_lengths.numel() for layer in packed) * token_bytes
    assert sum(layer.nbytes() for layer in packed) < padded

    buffers = [{layer.row_keys.data_ptr()} for layer in packed]
    steps = DEFAULT_GROWTH * 2 + 3
    mask = attention_mask
    for step in range(steps):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=-1)
        with torch.no_grad():
            model(input_ids=prompt_ids(1, batch=2, seed=step), attention_mask=mask, **{CACHE_ARGUMENT: cache})
        for layer, seen in zip(packed, buffers):
            seen.add(layer.row_keys.data_ptr())
            slack = layer.nbytes() - int(layer.kept_tokens().sum()) * token_bytes
            assert 0 <= slack < layer.prompt_lengths.numel() * DEFAULT_GROWTH * token_bytes
    # Decoding writes in place; the layer moves only when the tail's slack runs out, every DEFAULT_GROWTH steps.
    assert all(len(seen) == 1 + -(-steps // DEFAULT_GROWTH) for seen in buffers)


def packed_layer(seed=0, growth=2):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(3, 2, 10, 4, generator=generator)
    values = torch.randn(3, 2, 10, 4, generator=generator)
    counts = torch.tensor([[3, 5], [6, 1], [4, 4]])
    positions = torch.zeros(3, 2, 6, dtype=torch.long)
    slot_valid = torch.zeros(3, 2, 6, dtype=torch.bool)
    for b in range(3):
        for h in range(2):
            n = int(counts[b, h])
            positions[b, h, 6 - n :] = torch.randperm(10, generator=generator)[:n].sort().values
            slot_valid[b, h, 6 - n :] = True
    layer = PackedLayer.from_selection(keys, values, positions, slot_valid, cumulative_length=10, growth=growth)
    return layer, keys.gather(2, positions[..., None].expand(-1, -1, -1, 4)), slot_valid


def test_padded_view_holds_each_heads_kept_tokens_after_its_padding():
    layer, expected, slot_valid = packed_layer()
    assert layer.row_keys.shape == (3, 8, 4)  # rows keep 8, 7 and 8 tokens
    assert layer.nbytes() == 3 * 8 * 4 * 2 * 4
    new_keys = torch.randn(3, 2, 3, 4)
    keys, _ = layer.update(new_keys, new_keys)
    assert keys.shape == (3, 2, 9, 4)
    assert torch.equal(keys[:, :, :6][slot_valid], expected[slot_valid])
    assert torch.equal(keys[:, :, 6:], new_keys)
    assert torch.equal(layer.slot_valid(), torch.cat([slot_valid, torch.ones(3, 2, 3, dtype=torch.bool)], -1))
    assert layer.get_seq_length() == 13 and layer.get_mask_sizes(1) == (10, 4)


@pytest.mark.parametrize(
    "select",
    [
        lambda layer: (layer.reorder_cache(torch.tensor([2, 0, 0])), [2, 0, 0]),
        lambda layer: (layer.batch_repeat_interleave(2), [0, 0, 1, 1, 2, 2]),
        lambda layer: (layer.batch_select_indices(torch.tensor([True, False, True])), [0, 2]),
    ],
)
def test_batch_operations_repack_the_selected_rows(select):
    layer, _, _ = packed_layer()
    layer.update(torch.randn(3, 2, 3, 4), torch.randn(3, 2, 3, 4))
    keys, values = layer.padded()
    slot_valid, lengths = layer.slot_valid(), layer.prompt_lengths
    _, rows = select(layer)
    new_keys, new_values = layer.padded()
    assert torch.equal(layer.prompt_lengths, lengths[rows])
    assert layer.prompt_slots == int(lengths[rows].max())  # the padded view fits the rows kept
    assert torch.equal(new_keys[layer.slot_valid()], keys[rows][slot_valid[rows]])
    assert torch.equal(new_values[layer.slot_valid()], values[rows][slot_valid[rows]])
    assert layer.nbytes() == len(rows) * (8 + 2 * layer.tail_capacity) * 4 * 2 * 4


def test_packed_caches_stack_with_padded_ones():
    model = tiny_model("llama")
    input_ids = prompt_ids(48, seed=4)
    caches = []
    for allocation in ("adakv", "uniform"):
        cache = LookaheadCache(budget=20, scorer="snapkv", allocation=allocation, sink=2, window=4)
        with torch.no_grad():
            model(input_ids=input_ids, **{CACHE_ARGUMENT: cache})
        caches.append(cache)
    assert isinstance(caches[0].layers[0], PackedLayer)
    stacked = LookaheadCache.stack(caches)
    assert torch.equal(stacked.kept_tokens(), torch.cat([cache.kept_tokens() for cache in caches], dim=1))
    token = prompt_ids(1, seed=9)
    with torch.no_grad():
        together = model(input_ids=token.expand(2, 1), **{CACHE_ARGUMENT: stacked}).logits
        alone = [model(input_ids=token, **{CACHE_ARGUMENT: cache}).logits for cache in caches]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", ["llama", "qwen3", "gemma3"])
def test_varlen_attention_generates_what_sdpa_generates(architecture):
    """Under `lookahead_varlen` decoding reads the packed layers in place (one masked SDPA call per layer on CPU);
    the text equals SDPA's over the padded copy, on a left-padded batch, across a second turn."""
    input_ids, attention_mask = padded_batch()
    outputs = {}
    for attn in ("sdpa", "lookahead_varlen"):
        model = tiny_model(architecture, attn)
        cache = LookaheadCache(**BUDGET)
        first = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **{CACHE_ARGUMENT: cache},
            max_new_tokens=4,
            do_sample=False,
        )
        assert any(isinstance(layer, PackedLayer) for layer in cache.layers)
        assert all(
            layer.attends_packed == (attn == "lookahead_varlen")
            for layer in cache.layers
            if isinstance(layer, PackedLayer)
        )
        turn = torch.cat([first, prompt_ids(5, batch=2, seed=8)], dim=-1)
        mask = torch.cat([attention_mask, torch.ones(2, turn.shape[1] - input_ids.shape[1], dtype=torch.long)], -1)
        outputs[attn] = model.generate(
            input_ids=turn, attention_mask=mask, **{CACHE_ARGUMENT: cache}, max_new_tokens=4, do_sample=False
        )
    assert torch.equal(outputs["lookahead_varlen"], outputs["sdpa"])


@pytest.mark.parametrize("steps", [0, 3])
def test_decode_attention_over_the_row_buffers_is_each_heads_attention_over_its_kept_tokens(steps):
    """The CPU path (one masked attention over the row buffers) and the Triton kernel (interpreted on CPU) read the
    layer in place; both equal softmax attention of each query head over its KV head's tokens alone."""
    layer, _, _ = packed_layer(growth=4)
    if steps:
        layer.update(torch.randn(3, 2, steps, 4), torch.randn(3, 2, steps, 4))
    group, scaling = 3, 0.5
    query = torch.randn(3, 2 * group, 1, 4)
    bfloat16 = PackedLayer(
        layer.row_keys.bfloat16(), layer.row_values.bfloat16(), layer.prompt_lengths, layer.cumulative_length
    )
    keys, values = layer.padded()
    valid = layer.slot_valid()
    expected = torch.empty(3, 2 * group, 4)
    for b in range(3):
        for h in range(2):
            kept = slice(None) if valid is None else valid[b, h]
            q = query[b, h * group : (h + 1) * group, 0]
            probs = torch.softmax(q @ keys[b, h, kept].T * scaling, dim=-1)
            expected[b, h * group : (h + 1) * group] = probs @ values[b, h, kept]

    torch.testing.assert_close(packed_decode_attention(layer, query, group, scaling)[:, 0], expected)
    if not steps:  # the half-precision path (SDPA), on the same tokens rounded
        output = packed_decode_attention(bfloat16, query.bfloat16(), group, scaling)[:, 0]
        torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)
    if torch.cuda.is_available():  # on a GPU the layer is read by the Triton kernel
        on_gpu = copy.copy(layer)
        on_gpu.row_keys, on_gpu.row_values = layer.row_keys.cuda(), layer.row_values.cuda()
        on_gpu.device = on_gpu.row_keys.device
        on_gpu._set_lengths(layer.prompt_lengths.cuda())
        output = packed_decode_attention(on_gpu, query.cuda(), group, scaling)[:, 0]
        torch.testing.assert_close(output.cpu(), expected, rtol=1e-4, atol=1e-4)
    if kernel_module._INTERPRETED:  # the kernel itself, under the Triton interpreter
        kernel = varlen_decode_attention_triton(query[:, :, 0], *layer.varlen_inputs(), scaling)
        torch.testing.assert_close(kernel, expected)
