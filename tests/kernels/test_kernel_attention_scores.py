"""Tests for the fused attention-score kernel and its torch reference.

conftest.py turns the Triton interpreter on unless TRITON_INTERPRET is set already.

The Triton kernel runs on CPU through the Triton interpreter, so its shapes stay
small; on a CUDA machine with TRITON_INTERPRET=0 the same tests run on the GPU.
"""

import pytest
import torch

from lookahead_cache.kernels import attention_scores as kernel_module
from lookahead_cache.kernels.attention_scores import (
    attention_scores,
    attention_scores_reference,
    attention_scores_triton,
)

try:
    import triton
except ImportError:
    triton = None

if triton is None:
    TRITON_SKIP_REASON = "triton is not installed; the Triton kernel tests need it (with TRITON_INTERPRET=1 on CPU)"
elif not kernel_module._INTERPRETED and not torch.cuda.is_available():
    TRITON_SKIP_REASON = (
        "no CUDA device and the Triton interpreter is off: it needs TRITON_INTERPRET=1 before anything imports "
        "triton (a conftest importing transformers does); run with TRITON_INTERPRET=1 in the environment"
    )
else:
    TRITON_SKIP_REASON = ""
requires_triton = pytest.mark.skipif(bool(TRITON_SKIP_REASON), reason=TRITON_SKIP_REASON)
KERNEL_DEVICE = "cpu" if kernel_module._INTERPRETED else "cuda"

FP32_TOL = dict(rtol=1e-5, atol=1e-6)
BF16_TOL = dict(rtol=1e-3, atol=1e-5)


def make_inputs(batch, q_heads, kv_heads, num_queries, num_keys, head_dim, dtype, *, masked, device="cpu", seed=0):
    """Random queries/keys and, if masked, causal positions plus padding masks.

    Left padding differs per sequence; positions are spread over the keys so some
    queries see only a prefix (and, for long enough T, whole key splits are empty).
    """
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, q_heads, num_queries, head_dim, generator=gen).to(dtype)
    keys = torch.randn(batch, kv_heads, num_keys, head_dim, generator=gen).to(dtype)
    masks = {}
    if masked:
        masks["query_positions"] = torch.linspace(num_keys // 3, num_keys - 1, num_queries).long()
        key_valid = torch.ones(batch, num_keys, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : 11 + 6 * b] = False
        masks["key_valid"] = key_valid
        query_valid = torch.ones(batch, num_queries, dtype=torch.bool)
        query_valid[:, 1::3] = False
        masks["query_valid"] = query_valid
    moved = {name: t.to(device) for name, t in masks.items()}
    return queries.to(device), keys.to(device), moved


def naive_scores(queries, keys, scaling, query_positions=None, key_valid=None, query_valid=None):
    """Float64, loop-per-row spelling of the spec, independent of the reference's batching."""
    batch, q_heads, num_queries, _ = queries.shape
    kv_heads, num_keys = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    keys_per_q_head = keys.double().repeat_interleave(group, dim=1)
    logits = torch.einsum("bhnd,bhtd->bhnt", queries.double(), keys_per_q_head) * scaling
    out = torch.zeros(batch, kv_heads, num_keys, dtype=torch.float64)
    for b in range(batch):
        contributing = 0
        for h in range(q_heads):
            for i in range(num_queries):
                visible = torch.ones(num_keys, dtype=torch.bool)
                if query_positions is not None:
                    visible &= torch.arange(num_keys) <= query_positions[i]
                if key_valid is not None:
                    visible &= key_valid[b]
                if query_valid is not None and not query_valid[b, i]:
                    visible[:] = False
                if not visible.any():
                    continue
                row = logits[b, h, i][visible]
                probs = torch.exp(row - row.max())
                out[b, h // group, visible] += probs / probs.sum()
                contributing += 1
        if contributing:
            out[b] /= contributing / kv_heads
    return out


# (batch, q_heads, kv_heads, num_queries, num_keys, head_dim): GQA ratios 1, 3 and 4,
# T not a multiple of the 64-key block, Nq of 1, 7 and 32, D of 64, 48, 80 and 128.
KERNEL_SHAPES = {
    "mha-T100-Nq1-D64": (1, 2, 2, 1, 100, 64),
    "gqa3-T257-Nq7-D48": (2, 6, 2, 7, 257, 48),
    "gqa4-T130-Nq32-D80": (1, 4, 1, 32, 130, 80),
}


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize(
    "shape",
    [(1, 4, 4, 5, 33, 16), (2, 6, 2, 7, 70, 24), (2, 8, 2, 32, 129, 64), (1, 4, 1, 1, 300, 80)],
    ids=["mha", "gqa3", "gqa4-nq32", "gqa4-nq1"],
)
def test_reference_matches_naive_per_row_softmax(shape, masked):
    queries, keys, masks = make_inputs(*shape, torch.float32, masked=masked)
    scaling = shape[-1] ** -0.5
    expected = naive_scores(queries, keys, scaling, **masks)
    got = attention_scores_reference(queries, keys, scaling=scaling, **masks)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def test_reference_computes_in_fp32_for_bf16_inputs():
    queries, keys, masks = make_inputs(2, 6, 2, 7, 70, 32, torch.bfloat16, masked=True)
    expected = naive_scores(queries, keys, 32**-0.5, **masks)
    got = attention_scores_reference(queries, keys, scaling=32**-0.5, **masks)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def test_reference_single_query_single_head_is_the_softmax_row():
    queries, keys, _ = make_inputs(1, 1, 1, 1, 40, 16, torch.float32, masked=False)
    expected = torch.softmax((queries[0, 0] @ keys[0, 0].T) * 0.3, dim=-1)[0]
    got = attention_scores_reference(queries, keys, scaling=0.3)
    torch.testing.assert_close(got[0, 0], expected)


def test_reference_query_that_sees_no_key_contributes_nothing():
    queries, keys, _ = make_inputs(1, 2, 1, 2, 30, 16, torch.float32, masked=False)
    key_valid = torch.ones(1, 30, dtype=torch.bool)
    key_valid[0, :10] = False
    # Query 0 may only look at keys 0..5, all padding: it must drop out, not dilute the mean.
    positions = torch.tensor([5, 29])
    got = attention_scores_reference(queries, keys, scaling=0.25, query_positions=positions, key_valid=key_valid)
    only_second = attention_scores_reference(queries[:, :, 1:], keys, scaling=0.25, key_valid=key_valid)
    assert not got.isnan().any()
    torch.testing.assert_close(got, only_second)
    torch.testing.assert_close(got.sum(-1), torch.ones(1, 1))


# ----------------------------------------------------------------------------- triton kernel


@requires_triton
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(KERNEL_SHAPES.values()), ids=list(KERNEL_SHAPES))
def test_triton_matches_reference(shape, dtype, masked):
    queries, keys, masks = make_inputs(*shape, dtype, masked=masked, device=KERNEL_DEVICE)
    scaling = shape[-1] ** -0.5
    got = attention_scores_triton(queries, keys, scaling=scaling, **masks)
    expected = attention_scores_reference(queries, keys, scaling=scaling, **masks)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, **(FP32_TOL if dtype == torch.float32 else BF16_TOL))


@requires_triton
def test_triton_matches_reference_for_fp16_and_head_dim_128():
    queries, keys, masks = make_inputs(2, 4, 2, 3, 90, 128, torch.float16, masked=True, device=KERNEL_DEVICE)
    got = attention_scores_triton(queries, keys, scaling=128**-0.5, **masks)
    expected = attention_scores_reference(queries, keys, scaling=128**-0.5, **masks)
    torch.testing.assert_close(got, expected, **BF16_TOL)


@requires_triton
def test_triton_masked_keys_score_exactly_zero_and_rows_sum_to_one():
    queries, keys, masks = make_inputs(2, 6, 2, 7, 257, 48, torch.float32, masked=True, device=KERNEL_DEVICE)
    got = attention_scores_triton(queries, keys, scaling=0.2, **masks)
    never_visible = ~masks["key_valid"][:, None, :].expand_as(got).clone()
    never_visible[..., int(masks["query_positions"].max()) + 1 :] = True
    assert never_visible.any() and (~never_visible).any()
    assert torch.all(got[never_visible] == 0.0)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, device=KERNEL_DEVICE))


@requires_triton
def test_triton_query_that_sees_no_key_contributes_nothing():
    queries, keys, _ = make_inputs(1, 4, 2, 2, 100, 32, torch.float32, masked=False, device=KERNEL_DEVICE)
    key_valid = torch.ones(1, 100, dtype=torch.bool, device=KERNEL_DEVICE)
    key_valid[0, :40] = False
    positions = torch.tensor([20, 99], device=KERNEL_DEVICE)
    got = attention_scores_triton(queries, keys, scaling=0.2, query_positions=positions, key_valid=key_valid)
    expected = attention_scores_reference(queries, keys, scaling=0.2, query_positions=positions, key_valid=key_valid)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, **FP32_TOL)
    torch.testing.assert_close(got.sum(-1), torch.ones(1, 2, device=KERNEL_DEVICE))


@requires_triton
def test_triton_sequence_without_valid_queries_scores_all_zeros():
    queries, keys, _ = make_inputs(2, 2, 1, 3, 70, 16, torch.float32, masked=False, device=KERNEL_DEVICE)
    query_valid = torch.tensor([[True, False, True], [False, False, False]], device=KERNEL_DEVICE)
    got = attention_scores_triton(queries, keys, scaling=0.25, query_valid=query_valid)
    assert torch.all(got[1] == 0.0)
    torch.testing.assert_close(got[0].sum(-1), torch.ones(1, device=KERNEL_DEVICE))


@requires_triton
def test_triton_reads_strided_inputs():
    # transformers caches can hand out [B, T, H, D] storage viewed as [B, H, T, D].
    queries, keys, masks = make_inputs(1, 4, 2, 5, 77, 32, torch.float32, masked=True, device=KERNEL_DEVICE)
    strided_keys = keys.transpose(1, 2).contiguous().transpose(1, 2)
    strided_queries = queries.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided_keys.is_contiguous()
    got = attention_scores_triton(strided_queries, strided_keys, scaling=0.2, **masks)
    expected = attention_scores_reference(queries, keys, scaling=0.2, **masks)
    torch.testing.assert_close(got, expected, **FP32_TOL)


@requires_triton
def test_triton_without_queries_scores_all_zeros():
    queries = torch.zeros(1, 2, 0, 16, device=KERNEL_DEVICE)
    keys = torch.randn(1, 1, 10, 16, device=KERNEL_DEVICE)
    got = attention_scores_triton(queries, keys, scaling=0.25)
    assert got.shape == (1, 1, 10) and torch.all(got == 0.0)


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attention_scores_runs_triton_on_cuda(monkeypatch):
    queries, keys, masks = make_inputs(1, 2, 1, 3, 40, 16, torch.float32, masked=True, device="cuda")
    expected = attention_scores_reference(queries, keys, scaling=0.25, **masks)

    def fail(*args):
        raise AssertionError("CUDA tensors must take the Triton kernel, not the torch reference")

    monkeypatch.setattr(kernel_module, "_reference", fail)
    got = attention_scores(queries, keys, scaling=0.25, **masks)
    torch.testing.assert_close(got, expected, **FP32_TOL)


def test_attention_scores_uses_reference_for_cpu_tensors(monkeypatch):
    def fail(*args):
        raise AssertionError("CPU tensors must not reach the Triton kernel, even under the interpreter")

    monkeypatch.setattr(kernel_module, "_triton", fail)
    queries, keys, masks = make_inputs(1, 2, 1, 3, 40, 16, torch.float32, masked=True)
    got = attention_scores(queries, keys, scaling=0.25, **masks)
    torch.testing.assert_close(got, attention_scores_reference(queries, keys, scaling=0.25, **masks))


# ----------------------------------------------------------------------------- validation


def _valid_args():
    queries, keys, masks = make_inputs(2, 4, 2, 3, 10, 8, torch.float32, masked=True)
    return dict(queries=queries, keys=keys, scaling=0.5, **masks)


INVALID_CASES = {
    "queries-rank": (lambda a: a.update(queries=a["queries"][0]), r"queries must be 4-D"),
    "keys-rank": (lambda a: a.update(keys=a["keys"][:, :, :, None]), r"keys must be 4-D"),
    "unsupported-dtype": (
        lambda a: a.update(queries=a["queries"].double(), keys=a["keys"].double()),
        r"only float32, float16 and bfloat16",
    ),
    "dtype-mismatch": (lambda a: a.update(keys=a["keys"].half()), r"keys have dtype torch.float16 but queries"),
    "device-mismatch": (lambda a: a.update(keys=a["keys"].to("meta")), r"keys are on meta but queries are on cpu"),
    "batch-mismatch": (lambda a: a.update(keys=a["keys"][:1]), r"batch size 2 but keys have 1"),
    "head-dim-mismatch": (lambda a: a.update(keys=a["keys"][..., :4]), r"head_dim 8 but keys have 4"),
    "heads-not-multiple": (
        lambda a: a.update(queries=a["queries"][:, :3]),
        r"3 heads, which is not a multiple of the 2",
    ),
    "positions-shape": (
        lambda a: a.update(query_positions=a["query_positions"][:2]),
        r"query_positions must have shape \[num_queries\] = \[3\]",
    ),
    "positions-dtype": (
        lambda a: a.update(query_positions=a["query_positions"].float()),
        r"query_positions must hold integer key indices",
    ),
    "key-valid-shape": (
        lambda a: a.update(key_valid=a["key_valid"][:, :9]),
        r"key_valid must have shape \[batch, num_keys\] = \[2, 10\]",
    ),
    "key-valid-dtype": (lambda a: a.update(key_valid=a["key_valid"].int()), r"key_valid must be a bool mask"),
    "query-valid-shape": (
        lambda a: a.update(query_valid=a["query_valid"].T),
        r"query_valid must have shape \[batch, num_queries\] = \[2, 3\]",
    ),
    "mask-device": (lambda a: a.update(query_valid=a["query_valid"].to("meta")), r"query_valid is on meta"),
}


@pytest.mark.parametrize(
    "function", [attention_scores, attention_scores_reference, attention_scores_triton], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("case", list(INVALID_CASES.values()), ids=list(INVALID_CASES))
def test_invalid_inputs_raise_value_error_naming_the_problem(case, function):
    corrupt, message = case
    args = _valid_args()
    corrupt(args)
    with pytest.raises(ValueError, match=message):
        function(args.pop("queries"), args.pop("keys"), **args)
