"""Fused attention scores: how much attention each cached key receives.

Both eviction policies of lookahead-cache rank prompt keys by the attention a
small set of queries pays them:

* SnapKV scores keys with the queries of the last prompt tokens (the
  observation window);
* LookaheadKV scores keys with its learned lookahead queries.

Both reduce to the same computation, implemented here:

    queries x prompt keys -> softmax over keys -> mean over queries
    -> per-KV-head score

For queries ``[B, Hq, Nq, D]`` and keys ``[B, Hkv, T, D]`` (grouped-query
attention: query head ``h`` reads KV head ``h // (Hq // Hkv)``) the result is a
float32 ``[B, Hkv, T]`` tensor: for each KV head, the softmax probability of
each key, averaged over the ``Hq // Hkv`` query heads of its group and over the
contributing queries. Logits ``(q . k) * scaling`` and the softmax are computed
in float32 whatever the input dtype.

Optional masks:

* ``query_positions`` ``[Nq]`` (causal): query ``i`` sees keys ``j <= query_positions[i]``;
* ``key_valid`` ``[B, T]``: ``False`` keys (padding) are never attended;
* ``query_valid`` ``[B, Nq]``: ``False`` queries contribute nothing.

A query row contributes when it is valid and sees at least one key; the mean is
taken over contributing rows only, so each ``(b, kv head)`` row of the result
sums to 1 whenever one exists, and is all zeros otherwise. Invisible keys score
exactly 0.

``attention_scores`` runs the fused Triton kernel on CUDA tensors (or on any
tensors under ``TRITON_INTERPRET=1``) and the torch reference otherwise.
"""

import math
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (macOS, Windows, slim images) ship without Triton.
    triton = None

# triton.jit picks the interpreter when a function is defined, and tl.sum / tl.max
# are jit functions themselves: interpreting only works if TRITON_INTERPRET was set
# before anything (transformers, torch._dynamo) first imported triton.language.
_INTERPRETED = triton is not None and triton.knobs.runtime.interpret and not isinstance(tl.sum, triton.JITFunction)

__all__ = ["attention_scores", "attention_scores_reference", "attention_scores_triton"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The kernels work in base 2 (exp2 is the native instruction); folding log2(e)
# into the logit scale keeps probabilities identical to the natural-base softmax.
_LOG2E = math.log2(math.e)

_BLOCK_N = 64
# Pass 1 streams every key once per (batch, KV head, row tile): with few of those
# (one sequence, Llama-8B has 8 KV heads) most SMs would idle, so the key axis is
# split flash-decoding style until roughly this many programs run.
_TARGET_PROGRAMS = 512
_MAX_SPLITS = 64
# Splitting below a couple of key blocks per program costs more in merging than it gains.
_MIN_BLOCKS_PER_SPLIT = 2


def _check_optional(
    name: str,
    tensor: Optional[torch.Tensor],
    expected_shape: tuple,
    dims: str,
    device: torch.device,
    want_bool: bool,
) -> None:
    if tensor is None:
        return
    if tuple(tensor.shape) != expected_shape:
        raise ValueError(
            f"{name} must have shape {dims} = {list(expected_shape)} to match queries/keys, "
            f"got {list(tensor.shape)}; build it from the same batch, number of queries and keys."
        )
    if want_bool and tensor.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool mask, got dtype {tensor.dtype}; pass {name}.bool().")
    if not want_bool and (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool):
        raise ValueError(
            f"{name} must hold integer key indices, got dtype {tensor.dtype}; pass {name}.long()."
        )
    if tensor.device != device:
        raise ValueError(
            f"{name} is on {tensor.device} but queries are on {device}; move it with {name}.to(queries.device)."
        )


def _validate_inputs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_positions: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
    query_valid: Optional[torch.Tensor],
) -> None:
    if queries.dim() != 4:
        raise ValueError(
            f"queries must be 4-D [batch, q_heads, num_queries, head_dim], got shape {list(queries.shape)}; "
            "reshape it (e.g. queries.unsqueeze(0) for a single sequence)."
        )
    if keys.dim() != 4:
        raise ValueError(
            f"keys must be 4-D [batch, kv_heads, num_keys, head_dim], got shape {list(keys.shape)}; "
            "pass one layer's key cache as stored by transformers' Cache."
        )
    if queries.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"queries have dtype {queries.dtype}; only float32, float16 and bfloat16 are supported, "
            "cast with queries.to(torch.float32)."
        )
    if keys.dtype != queries.dtype:
        raise ValueError(
            f"keys have dtype {keys.dtype} but queries have {queries.dtype}; cast one to match, "
            "e.g. queries.to(keys.dtype)."
        )
    if keys.device != queries.device:
        raise ValueError(
            f"keys are on {keys.device} but queries are on {queries.device}; "
            "move them with keys.to(queries.device)."
        )
    batch, q_heads, num_queries, head_dim = queries.shape
    kv_heads, num_keys = keys.shape[1], keys.shape[2]
    if keys.shape[0] != batch:
        raise ValueError(
            f"queries have batch size {batch} but keys have {keys.shape[0]}; both must come from the same batch."
        )
    if keys.shape[3] != head_dim:
        raise ValueError(
            f"queries have head_dim {head_dim} but keys have {keys.shape[3]}; "
            "pass queries and keys of the same attention layer (after RoPE)."
        )
    if kv_heads == 0 or q_heads % kv_heads != 0:
        raise ValueError(
            f"queries have {q_heads} heads, which is not a multiple of the {kv_heads} KV heads of keys; "
            "pass the un-repeated KV heads (grouped-query attention needs q_heads = group * kv_heads)."
        )
    _check_optional(
        "query_positions", query_positions, (num_queries,), "[num_queries]", queries.device, want_bool=False
    )
    _check_optional("key_valid", key_valid, (batch, num_keys), "[batch, num_keys]", queries.device, want_bool=True)
    _check_optional(
        "query_valid", query_valid, (batch, num_queries), "[batch, num_queries]", queries.device, want_bool=True
    )


def _reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    query_positions: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
    query_valid: Optional[torch.Tensor],
) -> torch.Tensor:
    batch, q_heads, num_queries, head_dim = queries.shape
    kv_heads, num_keys = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    out = []
    key_index = torch.arange(num_keys, device=queries.device)
    # One sequence at a time bounds the float32 logits to [Hq, Nq, T] (64 MiB for
    # 32 heads x 64 queries x 8k keys) instead of B times that.
    for b in range(batch):
        visible = torch.ones(num_queries, num_keys, dtype=torch.bool, device=queries.device)
        if query_positions is not None:
            visible &= key_index[None, :] <= query_positions[:, None]
        if key_valid is not None:
            visible &= key_valid[b][None, :]
        if query_valid is not None:
            visible &= query_valid[b][:, None]
        contributes = visible.any(dim=-1)
        # Scaling the queries rather than the logits touches Nq x D values instead of Nq x T.
        q = queries[b].float().reshape(kv_heads, group * num_queries, head_dim) * scaling
        logits = torch.matmul(q, keys[b].float().transpose(-1, -2))
        if not bool(visible.all()):
            # Invisible keys get -inf logits, so their probability is exactly 0. A row that contributes nothing
            # keeps finite logits (its softmax would be NaN otherwise) and weight 0 in the mean below.
            bias = torch.zeros(num_queries, num_keys, device=queries.device).masked_fill_(
                ~visible & contributes[:, None], float("-inf")
            )
            logits = logits.view(kv_heads, group, num_queries, num_keys).add_(bias)
        probs = torch.softmax(logits.view(kv_heads, group * num_queries, num_keys), dim=-1)
        # Mean over the contributing rows (query heads of the group x queries) as one matrix-vector product; with
        # none, the weights are all zero and so is the score.
        row_weights = (contributes.float() / (group * contributes.sum()).clamp(min=1)).repeat(group)
        out.append(torch.matmul(row_weights, probs))
    return torch.stack(out)


if triton is not None:

    @triton.jit
    def _key_mask(key_valid_ptr, b, offs_n, num_keys, stride_kvb, stride_kvt, HAS_KEY_VALID: tl.constexpr):
        ok = offs_n < num_keys
        if HAS_KEY_VALID:
            valid = tl.load(key_valid_ptr + b * stride_kvb + offs_n * stride_kvt, mask=ok, other=0)
            ok = ok & (valid != 0)
        return ok

    @triton.jit
    def _load_query_rows(
        q_ptr, b, kv_head, rows, group, num_queries, head_dim,
        stride_qb, stride_qh, stride_qn, stride_qd,
        BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    ):
        # The group's (query head, query) pairs are flattened into one row axis so
        # that a handful of queries still fills a tensor-core tile.
        row_in = rows < group * num_queries
        head = kv_head * group + rows // num_queries
        query = rows % num_queries
        offs_d = tl.arange(0, BLOCK_D)
        q_rows = q_ptr + b * stride_qb + head * stride_qh + query * stride_qn
        q = tl.load(
            q_rows[:, None] + offs_d[None, :] * stride_qd,
            mask=row_in[:, None] & (offs_d[None, :] < head_dim),
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        return q, row_in, head, query

    @triton.jit
    def _load_key_block(
        k_ptr, b, kv_head, offs_n, key_ok, head_dim,
        stride_kb, stride_kh, stride_kt, stride_kd,
        BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    ):
        offs_d = tl.arange(0, BLOCK_D)
        # Masking with key_ok (not just bounds) skips the memory traffic of padded keys.
        k = tl.load(
            k_ptr + b * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
            mask=key_ok[:, None] & (offs_d[None, :] < head_dim),
            other=0.0,
        )
        if UPCAST:
            k = k.to(tl.float32)
        return k

    @triton.jit
    def _split_softmax_stats_kernel(
        q_ptr, k_ptr, positions_ptr, key_valid_ptr, query_valid_ptr, m_ptr, l_ptr,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_kvb, stride_kvt, stride_qvb, stride_qvn,
        q_heads, kv_heads, num_queries, num_keys, head_dim, group,
        qk_scale, blocks_per_split, num_splits,
        HAS_POSITIONS: tl.constexpr, HAS_KEY_VALID: tl.constexpr, HAS_QUERY_VALID: tl.constexpr,
        UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Pass 1: running max and sum of exp2 of each row over one split of the keys."""
        pid_bh = tl.program_id(0)
        split = tl.program_id(1)
        # int64 so that offsets of long multi-sequence caches cannot overflow.
        b = (pid_bh // kv_heads).to(tl.int64)
        kv_head = pid_bh % kv_heads
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        q, row_in, head, query = _load_query_rows(
            q_ptr, b, kv_head, rows, group, num_queries, head_dim,
            stride_qb, stride_qh, stride_qn, stride_qd, BLOCK_D, UPCAST,
        )
        row_live = row_in
        if HAS_QUERY_VALID:
            query_ok = tl.load(query_valid_ptr + b * stride_qvb + query * stride_qvn, mask=row_in, other=0)
            row_live = row_live & (query_ok != 0)

        lo = split * blocks_per_split * BLOCK_N
        hi = tl.minimum(lo + blocks_per_split * BLOCK_N, num_keys)
        if HAS_POSITIONS:
            positions = tl.load(positions_ptr + query, mask=row_in, other=-1)
            # Keys past the furthest position in the tile are invisible to all its rows.
            hi = tl.minimum(hi, tl.max(tl.where(row_live, positions, -1), 0) + 1)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            key_ok = _key_mask(key_valid_ptr, b, offs_n, num_keys, stride_kvb, stride_kvt, HAS_KEY_VALID)
            k = _load_key_block(
                k_ptr, b, kv_head, offs_n, key_ok, head_dim,
                stride_kb, stride_kh, stride_kt, stride_kd, BLOCK_D, UPCAST,
            )
            # ieee: TF32 would cost float32 inputs ~3 digits versus the reference.
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            visible = row_live[:, None] & key_ok[None, :]
            if HAS_POSITIONS:
                visible = visible & (offs_n[None, :] <= positions[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has not seen a visible key yet still has max -inf; shifting
            # by 0 instead avoids exp2(-inf - -inf) = NaN and keeps its sum at 0.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - shift) + tl.sum(tl.exp2(s - shift[:, None]), 1)
            m_i = m_new

        stat = ((b * q_heads + head) * num_queries + query) * num_splits + split
        tl.store(m_ptr + stat, m_i, mask=row_in)
        tl.store(l_ptr + stat, l_i, mask=row_in)

    @triton.jit
    def _merge_splits_kernel(
        m_part_ptr, l_part_ptr, m_ptr, l_ptr, num_rows, num_splits,
        BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
    ):
        """Combine the per-split (max, sum) of each row into the row's softmax statistics."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        splits = tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < num_rows) & (splits[None, :] < num_splits)
        offs = rows[:, None].to(tl.int64) * num_splits + splits[None, :]
        m_part = tl.load(m_part_ptr + offs, mask=mask, other=float("-inf"))
        l_part = tl.load(l_part_ptr + offs, mask=mask, other=0.0)
        m = tl.max(m_part, 1)
        shift = tl.where(m == float("-inf"), 0.0, m)
        l = tl.sum(l_part * tl.exp2(m_part - shift[:, None]), 1)
        tl.store(m_ptr + rows, m, mask=rows < num_rows)
        tl.store(l_ptr + rows, l, mask=rows < num_rows)

    @triton.jit
    def _group_mean_probs_kernel(
        q_ptr, k_ptr, positions_ptr, key_valid_ptr, m_ptr, l_ptr, out_ptr,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_kvb, stride_kvt,
        q_heads, kv_heads, num_queries, num_keys, head_dim, group, qk_scale,
        HAS_POSITIONS: tl.constexpr, HAS_KEY_VALID: tl.constexpr,
        UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Pass 2: one key block, read once, scored against every row of its KV head's group."""
        pid_bh = tl.program_id(0)
        b = (pid_bh // kv_heads).to(tl.int64)
        kv_head = pid_bh % kv_heads
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = _key_mask(key_valid_ptr, b, offs_n, num_keys, stride_kvb, stride_kvt, HAS_KEY_VALID)
        k_t = tl.trans(
            _load_key_block(
                k_ptr, b, kv_head, offs_n, key_ok, head_dim,
                stride_kb, stride_kh, stride_kt, stride_kd, BLOCK_D, UPCAST,
            )
        )

        acc = tl.zeros([BLOCK_N], tl.float32)
        live_rows = tl.zeros([BLOCK_M], tl.float32)
        for row_start in range(0, group * num_queries, BLOCK_M):
            rows = row_start + tl.arange(0, BLOCK_M)
            q, row_in, head, query = _load_query_rows(
                q_ptr, b, kv_head, rows, group, num_queries, head_dim,
                stride_qb, stride_qh, stride_qn, stride_qd, BLOCK_D, UPCAST,
            )
            stat = (b * q_heads + head) * num_queries + query
            m = tl.load(m_ptr + stat, mask=row_in, other=0.0)
            l = tl.load(l_ptr + stat, mask=row_in, other=0.0)
            # Pass 1 leaves l = 0 exactly for invalid queries and for queries that
            # see no key, so l > 0 is the "row contributes" test.
            row_live = l > 0.0
            inv_l = 1.0 / tl.where(row_live, l, 1.0)

            s = tl.dot(q, k_t, input_precision="ieee") * qk_scale
            visible = row_live[:, None] & key_ok[None, :]
            if HAS_POSITIONS:
                positions = tl.load(positions_ptr + query, mask=row_in, other=-1)
                visible = visible & (offs_n[None, :] <= positions[:, None])
            p = tl.where(visible, tl.exp2(s - m[:, None]) * inv_l[:, None], 0.0)
            acc += tl.sum(p, 0)
            live_rows += row_live.to(tl.float32)

        # Averaging over contributing rows only keeps each (b, kv head) row a
        # distribution; with none, acc is 0 and the max() avoids 0 / 0.
        acc = acc / tl.maximum(tl.sum(live_rows, 0), 1.0)
        tl.store(out_ptr + (b * kv_heads + kv_head) * num_keys + offs_n, acc, mask=offs_n < num_keys)


def _triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    query_positions: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
    query_valid: Optional[torch.Tensor],
) -> torch.Tensor:
    batch, q_heads, num_queries, head_dim = queries.shape
    kv_heads, num_keys = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    out = torch.empty(batch, kv_heads, num_keys, dtype=torch.float32, device=queries.device)
    if out.numel() == 0 or num_queries == 0:
        return out.zero_()

    rows_per_group = group * num_queries
    # tl.dot needs every tile dimension >= 16.
    block_m = min(64, max(16, triton.next_power_of_2(rows_per_group)))
    block_d = max(16, triton.next_power_of_2(head_dim))
    row_tiles = triton.cdiv(rows_per_group, block_m)
    key_blocks = triton.cdiv(num_keys, _BLOCK_N)
    splits = max(
        1,
        min(
            _MAX_SPLITS,
            triton.cdiv(_TARGET_PROGRAMS, batch * kv_heads * row_tiles),
            key_blocks // _MIN_BLOCKS_PER_SPLIT,
        ),
    )
    blocks_per_split = triton.cdiv(key_blocks, splits)
    splits = triton.cdiv(key_blocks, blocks_per_split)

    # Absent masks still need a pointer argument; their constexpr flags keep it unread.
    positions_arg = out
    if query_positions is not None:
        # Positions >= T already mean "every key": clamping lets the kernel use int32.
        positions_arg = query_positions.clamp(-1, num_keys).to(torch.int32).contiguous()
    # Triton has no portable bool pointer; the bytes of a bool tensor are 0/1.
    key_valid_arg = out if key_valid is None else key_valid.view(torch.uint8)
    query_valid_arg = out if query_valid is None else query_valid.view(torch.uint8)
    key_valid_strides = (0, 0) if key_valid is None else key_valid.stride()
    query_valid_strides = (0, 0) if query_valid is None else query_valid.stride()
    # The interpreter multiplies bfloat16 dot operands as raw uint16 bits
    # (triton-lang/triton#11584); upcasting is exact since bf16 products fit in fp32.
    upcast = _INTERPRETED and queries.dtype == torch.bfloat16
    qk_scale = float(scaling) * _LOG2E

    num_rows = batch * q_heads * num_queries
    m_part = torch.empty(num_rows * splits, dtype=torch.float32, device=queries.device)
    l_part = torch.empty_like(m_part)
    _split_softmax_stats_kernel[(batch * kv_heads, splits, row_tiles)](
        queries, keys, positions_arg, key_valid_arg, query_valid_arg, m_part, l_part,
        *queries.stride(), *keys.stride(), *key_valid_strides, *query_valid_strides,
        q_heads, kv_heads, num_queries, num_keys, head_dim, group,
        qk_scale, blocks_per_split, splits,
        HAS_POSITIONS=query_positions is not None,
        HAS_KEY_VALID=key_valid is not None,
        HAS_QUERY_VALID=query_valid is not None,
        UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=_BLOCK_N, BLOCK_D=block_d,
    )
    if splits == 1:
        row_max, row_sum = m_part, l_part
    else:
        row_max = torch.empty(num_rows, dtype=torch.float32, device=queries.device)
        row_sum = torch.empty_like(row_max)
        block_s = triton.next_power_of_2(splits)
        block_r = 4096 // block_s
        _merge_splits_kernel[(triton.cdiv(num_rows, block_r),)](
            m_part, l_part, row_max, row_sum, num_rows, splits, BLOCK_R=block_r, BLOCK_S=block_s,
        )
    _group_mean_probs_kernel[(batch * kv_heads, key_blocks)](
        queries, keys, positions_arg, key_valid_arg, row_max, row_sum, out,
        *queries.stride(), *keys.stride(), *key_valid_strides,
        q_heads, kv_heads, num_queries, num_keys, head_dim, group, qk_scale,
        HAS_POSITIONS=query_positions is not None,
        HAS_KEY_VALID=key_valid is not None,
        UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=_BLOCK_N, BLOCK_D=block_d,
    )
    return out


def attention_scores_reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    scaling: float,
    query_positions: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
    query_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain-torch attention scores (see the module docstring); runs on any device.

    Works one sequence at a time in float32, so peak extra memory is about three
    ``[Hq, Nq, T]`` float32 buffers. Differentiable: training the lookahead
    scorer backpropagates through it.
    """
    _validate_inputs(queries, keys, query_positions, key_valid, query_valid)
    return _reference(queries, keys, scaling, query_positions, key_valid, query_valid)


def attention_scores_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    scaling: float,
    query_positions: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
    query_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention scores from the fused Triton kernel (see the module docstring).

    Needs CUDA tensors, or ``TRITON_INTERPRET=1`` set before Triton is first imported
    (which transformers and ``torch._dynamo`` do early).
    """
    _validate_inputs(queries, keys, query_positions, key_valid, query_valid)
    if triton is None:
        raise RuntimeError(
            "attention_scores_triton needs Triton, which is not installed; install it (pip install triton) "
            "or call attention_scores, which falls back to the torch reference."
        )
    if not (queries.is_cuda or _INTERPRETED):
        raise RuntimeError(
            f"attention_scores_triton got {queries.device.type} tensors, which need the Triton interpreter: "
            "set TRITON_INTERPRET=1 in the environment before anything imports triton (transformers and "
            "torch._dynamo do), or pass CUDA tensors."
        )
    return _triton(queries, keys, scaling, query_positions, key_valid, query_valid)


def attention_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    scaling: float,
    query_positions: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
    query_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-KV-head attention scores of ``keys`` under ``queries``: float32 ``[B, Hkv, T]``.

    Args:
        queries: ``[B, Hq, Nq, D]`` float32, float16 or bfloat16.
        keys: ``[B, Hkv, T, D]``, same dtype and device; ``Hq`` a multiple of ``Hkv``.
        scaling: logit scale, usually ``D ** -0.5``.
        query_positions: optional integer ``[Nq]``; query ``i`` sees keys ``j <= query_positions[i]``.
        key_valid: optional bool ``[B, T]``; ``False`` keys are never attended.
        query_valid: optional bool ``[B, Nq]``; ``False`` queries contribute nothing.

    Runs the Triton kernel on CUDA tensors and the torch reference otherwise; the interpreter is far
    slower than the reference, so CPU tensors reach Triton only through ``attention_scores_triton``.
    """
    _validate_inputs(queries, keys, query_positions, key_valid, query_valid)
    if triton is not None and queries.is_cuda:
        return _triton(queries, keys, scaling, query_positions, key_valid, query_valid)
    return _reference(queries, keys, scaling, query_positions, key_valid, query_valid)
