"""The varlen decode-attention kernel against its torch reference, and the reference against plain attention.

conftest.py turns the Triton interpreter on, so the kernel runs on CPU with small shapes; on a CUDA machine with
TRITON_INTERPRET=0 the same tests run on the GPU.
"""

import pytest
import torch

from lookahead_cache.kernels import varlen_decode as kernel_module
from lookahead_cache.kernels.varlen_decode import (
    varlen_decode_attention,
    varlen_decode_attention_reference,
    varlen_decode_attention_triton,
)

try:
    import triton
except ImportError:
    triton = None

if triton is None:
    TRITON_SKIP_REASON = "triton is not installed; the Triton kernel tests need it (with TRITON_INTERPRET=1 on CPU)"
elif not kernel_module._INTERPRETED and not torch.cuda.is_available():
    TRITON_SKIP_REASON = "no CUDA device and the Triton interpreter is off: run with TRITON_INTERPRET=1"
else:
    TRITON_SKIP_REASON = ""
requires_triton = pytest.mark.skipif(bool(TRITON_SKIP_REASON), reason=TRITON_SKIP_REASON)
DEVICE = "cpu" if kernel_module._INTERPRETED or not torch.cuda.is_available() else "cuda"


def packed_inputs(lengths, q_heads, head_dim, tail_length, capacity, dtype=torch.float32, seed=0):
    """Random packed storage with per-(row, KV head) prompt `lengths` `[batch, kv_heads]`, and the dense
    `[batch, kv_heads, max_len + tail, head_dim]` keys/values plus mask a plain attention would read."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    batch, kv_heads = lengths.shape
    total = int(lengths.sum())
    prompt_keys = torch.randn(total, head_dim, generator=generator)
    prompt_values = torch.randn(total, head_dim, generator=generator)
    tail_keys = torch.randn(batch, kv_heads, capacity, head_dim, generator=generator)
    tail_values = torch.randn(batch, kv_heads, capacity, head_dim, generator=generator)
    query = torch.randn(batch, q_heads, head_dim, generator=generator)
    starts = (lengths.flatten().cumsum(0) - lengths.flatten()).view_as(lengths)
    inputs = dict(
        query=query,
        prompt_keys=prompt_keys,
        prompt_values=prompt_values,
        prompt_starts=starts,
        prompt_lengths=lengths,
        tail_keys=tail_keys,
        tail_values=tail_values,
        tail_length=tail_length,
        scaling=head_dim**-0.5,
    )
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def dense_attention(inputs):
    """softmax(q K^T) V per (row, query head) over its KV head's own tokens, one head at a time."""
    query, lengths, starts = inputs["query"].float(), inputs["prompt_lengths"], inputs["prompt_starts"]
    batch, q_heads, head_dim = query.shape
    kv_heads = lengths.shape[1]
    out = torch.empty(batch, q_heads, head_dim)
    for b in range(batch):
        for q in range(q_heads):
            h = q // (q_heads // kv_heads)
            segment = slice(int(starts[b, h]), int(starts[b, h] + lengths[b, h]))
            tail = slice(0, inputs["tail_length"])
            keys = torch.cat([inputs["prompt_keys"][segment], inputs["tail_keys"][b, h, tail]]).float()
            values = torch.cat([inputs["prompt_values"][segment], inputs["tail_values"][b, h, tail]]).float()
            weights = torch.softmax(keys @ query[b, q] * inputs["scaling"], dim=0)
            out[b, q] = weights @ values
    return out


def test_reference_is_attention_over_each_heads_own_tokens():
    inputs = packed_inputs([[5, 17, 1], [9, 2, 30]], q_heads=6, head_dim=8, tail_length=3, capacity=5)
    torch.testing.assert_close(varlen_decode_attention_reference(**inputs), dense_attention(inputs))


CASES = {
    # Lengths spanning several key blocks and splits, GQA group 3 padded to a tile, a tail in a larger buffer.
    "gqa-splits": dict(lengths=[[70, 130, 9]], q_heads=9, head_dim=64, tail_length=5, capacity=16),
    "batch-no-tail": dict(lengths=[[3, 64], [65, 1], [12, 40]], q_heads=4, head_dim=16, tail_length=0, capacity=0),
    "mha": dict(lengths=[[20, 7]], q_heads=2, head_dim=24, tail_length=70, capacity=80),
}


@requires_triton
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(case):
    inputs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in packed_inputs(**CASES[case]).items()}
    torch.testing.assert_close(
        varlen_decode_attention_triton(**inputs), varlen_decode_attention_reference(**inputs), rtol=1e-5, atol=1e-5
    )


@requires_triton
def test_kernel_reads_nothing_past_head_dim():
    # head_dim 24 runs in 32-wide tiles: the buffers are views whose memory after the last row holds NaN, which the
    # kernel would pick up if it read the tile's spare columns.
    inputs = packed_inputs(**CASES["mha"])
    for name in ("prompt_keys", "prompt_values", "tail_keys", "tail_values"):
        tensor = inputs[name]
        buffer = torch.full((tensor.numel() + 64,), float("nan"))
        buffer[: tensor.numel()] = tensor.flatten()
        inputs[name] = buffer[: tensor.numel()].view_as(tensor)
    expected = dense_attention(inputs)
    inputs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in inputs.items()}
    output = varlen_decode_attention_triton(**inputs)
    assert not output.isnan().any()
    torch.testing.assert_close(output, expected.to(DEVICE), rtol=1e-5, atol=1e-5)


@requires_triton
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_kernel_reads_int32_and_int64_segments(index_dtype):
    inputs = packed_inputs(**CASES["gqa-splits"])
    for name in ("prompt_starts", "prompt_lengths"):
        inputs[name] = inputs[name].to(index_dtype)
    inputs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in inputs.items()}
    torch.testing.assert_close(varlen_decode_attention_triton(**inputs), dense_attention(inputs).to(DEVICE))


@requires_triton
def test_kernel_matches_reference_in_bfloat16():
    inputs = packed_inputs(**CASES["gqa-splits"], dtype=torch.bfloat16)
    inputs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in inputs.items()}
    torch.testing.assert_close(
        varlen_decode_attention_triton(**inputs).float(),
        varlen_decode_attention_reference(**inputs).float(),
        rtol=2e-2,
        atol=2e-2,
    )


def test_dispatch_uses_the_kernel_where_triton_runs():
    inputs = packed_inputs(**CASES["batch-no-tail"])
    torch.testing.assert_close(varlen_decode_attention(**inputs), dense_attention(inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(query=torch.zeros(2, 6, 1, 8)), "one decoding token"),
        (dict(prompt_lengths=torch.ones(2, 4, dtype=torch.long)), "prompt_starts and prompt_lengths"),
        (dict(tail_length=9), "outside the tail's capacity"),
        (dict(prompt_lengths=torch.ones(2, 3)), "int32 or int64"),
        (dict(prompt_keys=torch.zeros(62, 8, dtype=torch.float64)), "dtype"),
    ],
)
def test_bad_input_is_named(change, message):
    inputs = packed_inputs([[5, 17, 1], [9, 2, 30]], q_heads=6, head_dim=8, tail_length=3, capacity=5)
    inputs.update(change)
    if "prompt_keys" in change:
        inputs["prompt_values"] = change["prompt_keys"]
    with pytest.raises(ValueError, match=message):
        varlen_decode_attention_reference(**inputs)
