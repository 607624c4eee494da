"""Decode attention over a KV cache whose heads keep different numbers of tokens.

The kernel reads, for every (row b, KV head h), a prompt segment of flat buffers ``prompt_keys`` / ``prompt_values``
``[tokens, head_dim]`` (segment start ``prompt_starts[b, h]``, length ``prompt_lengths[b, h]``), followed by the
tokens decoded since, in ``tail_keys`` / ``tail_values`` ``[batch, kv_heads, capacity, head_dim]`` (the first
``tail_length`` slots; any strides). A compressed layer with head-level budgets
(`lookahead_cache.storage.PackedLayer`) hands over its row buffers as such views, without copying: the flattened
row buffers with row-offset starts, and the interleaved tail viewed per head. One decoding query per query head,
``query`` ``[batch, q_heads, head_dim]``, attends to the prompt segment and the tail of its KV head (grouped-query
attention: query head ``q`` reads KV head ``q // (q_heads // kv_heads)``)::

    out[b, q] = softmax((query[b, q] . K_bh^T) * scaling) V_bh

with logits and softmax in float32 and the output in the query's dtype.

``varlen_decode_attention`` runs the Triton kernel on CUDA tensors (or on any tensors under
``TRITON_INTERPRET=1``) and the torch reference otherwise. The kernel reads each key and value once for the
whole GQA group; each (row, KV head) is split flash-decoding style over the prompt segment so that a single
sequence still occupies the GPU, and the splits are merged by their softmax statistics. No padding is read.
"""

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs ship without Triton.
    triton = None

# See attention_scores.py: the interpreter is only in effect if TRITON_INTERPRET was set before triton.language.
_INTERPRETED = triton is not None and triton.knobs.runtime.interpret and not isinstance(tl.sum, triton.JITFunction)

__all__ = ["varlen_decode_attention", "varlen_decode_attention_reference", "varlen_decode_attention_triton"]

_LOG2E = math.log2(math.e)
_BLOCK_N = 64
# Splits of each prompt segment, until roughly this many programs run (one sequence has only a few KV heads).
_TARGET_PROGRAMS = 256
_MAX_SPLITS = 32


def _validate(query, prompt_keys, prompt_values, prompt_starts, prompt_lengths, tail_keys, tail_values, tail_length):
    if query.dim() != 3:
        raise ValueError(
            f"query must be [batch, q_heads, head_dim] (one decoding token), got shape {list(query.shape)}; pass "
            "query[:, :, 0] for a [batch, q_heads, 1, head_dim] decoding query."
        )
    batch, q_heads, head_dim = query.shape
    if prompt_lengths.shape != prompt_starts.shape or prompt_lengths.dim() != 2 or prompt_lengths.shape[0] != batch:
        raise ValueError(
            f"prompt_starts and prompt_lengths must both be [batch, kv_heads] with batch {batch}, got "
            f"{list(prompt_starts.shape)} and {list(prompt_lengths.shape)}."
        )
    for name, tensor in (("prompt_starts", prompt_starts), ("prompt_lengths", prompt_lengths)):
        if tensor.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must hold int32 or int64 token counts, got {tensor.dtype}; cast it with .long().")
    kv_heads = prompt_lengths.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads are not a multiple of the {kv_heads} KV heads (GQA groups).")
    if prompt_keys.shape != prompt_values.shape or prompt_keys.dim() != 2 or prompt_keys.shape[1] != head_dim:
        raise ValueError(
            f"prompt_keys and prompt_values must both be [kept, head_dim={head_dim}], got "
            f"{list(prompt_keys.shape)} and {list(prompt_values.shape)}."
        )
    expected_tail = (batch, kv_heads)
    if tail_keys.shape[:2] != expected_tail or tail_keys.shape != tail_values.shape or tail_keys.shape[-1] != head_dim:
        raise ValueError(
            f"tail_keys and tail_values must both be [batch, kv_heads, capacity, head_dim] = {[batch, kv_heads]} + "
            f"[capacity, {head_dim}], got {list(tail_keys.shape)} and {list(tail_values.shape)}."
        )
    if not 0 <= tail_length <= tail_keys.shape[2]:
        raise ValueError(f"tail_length={tail_length} is outside the tail's capacity of {tail_keys.shape[2]} slots.")
    for name, tensor in (("prompt_keys", prompt_keys), ("prompt_values", prompt_values), ("tail_keys", tail_keys)):
        if tensor.dtype != query.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but query has {query.dtype}; cast one to match.")
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device} but query is on {query.device}; move it there.")


def varlen_decode_attention_reference(
    query: torch.Tensor,
    prompt_keys: torch.Tensor,
    prompt_values: torch.Tensor,
    prompt_starts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_length: int,
    scaling: float,
) -> torch.Tensor:
    """Torch reference of :func:`varlen_decode_attention`: one (row, KV head) at a time, on views of its prompt
    segment and tail. (A model decoding on CPU attends with `lookahead_cache.decoding.packed_decode_attention`,
    one masked attention per layer, rather than this loop.)"""
    _validate(query, prompt_keys, prompt_values, prompt_starts, prompt_lengths, tail_keys, tail_values, tail_length)
    batch, q_heads, head_dim = query.shape
    kv_heads = prompt_lengths.shape[1]
    group = q_heads // kv_heads
    out = torch.empty(batch, q_heads, head_dim, dtype=torch.float32, device=query.device)
    starts, lengths = prompt_starts.tolist(), prompt_lengths.tolist()
    for b in range(batch):
        for h in range(kv_heads):
            segment = slice(starts[b][h], starts[b][h] + lengths[b][h])
            q = query[b, h * group : (h + 1) * group].float()
            prompt_k, prompt_v = prompt_keys[segment].float(), prompt_values[segment].float()
            tail_k, tail_v = tail_keys[b, h, :tail_length].float(), tail_values[b, h, :tail_length].float()
            logits = torch.cat([q @ prompt_k.T, q @ tail_k.T], dim=-1) * scaling
            probs = torch.softmax(logits, dim=-1)
            out[b, h * group : (h + 1) * group] = (
                probs[:, : prompt_k.shape[0]] @ prompt_v + probs[:, prompt_k.shape[0] :] @ tail_v
            )
    return out.to(query.dtype)


if triton is not None:

    @triton.jit
    def _attend_block(
        q,
        k_ptrs,
        v_ptrs,
        ok,
        d_ok,
        m_i,
        l_i,
        acc,
        qk_scale,
        UPCAST: tl.constexpr,
    ):
        """Online-softmax update of the group's rows with one block of keys and values (base 2)."""
        # Columns past head_dim belong to the next row (or lie past the buffer): read as zeros, never as whatever is
        # there, which a zero query column times a NaN would turn into a NaN logit.
        mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=mask, other=0.0)
        v = tl.load(v_ptrs, mask=mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps max -inf; shifting by 0 avoids exp2(-inf - -inf) = NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i, acc

    @triton.jit
    def _varlen_decode_kernel(
        q_ptr,
        pk_ptr,
        pv_ptr,
        starts_ptr,
        lengths_ptr,
        tk_ptr,
        tv_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        stride_qb,
        stride_qh,
        stride_qd,
        stride_pn,
        stride_pd,
        stride_tb,
        stride_th,
        stride_tn,
        stride_td,
        kv_heads,
        group,
        head_dim,
        tail_length,
        blocks_per_split,
        num_splits,
        qk_scale,
        UPCAST: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One (row, KV head, split): its share of the prompt segment, and the tail for split 0."""
        pid_bh = tl.program_id(0)
        split = tl.program_id(1)
        b = (pid_bh // kv_heads).to(tl.int64)
        h = pid_bh % kv_heads
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        g_ok = offs_g < group
        d_ok = offs_d < head_dim
        q = tl.load(
            q_ptr + b * stride_qb + (h * group + offs_g)[:, None] * stride_qh + offs_d[None, :] * stride_qd,
            mask=g_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        start = tl.load(starts_ptr + pid_bh).to(tl.int64)
        length = tl.load(lengths_ptr + pid_bh)

        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        lo = split * blocks_per_split * BLOCK_N
        hi = tl.minimum(lo + blocks_per_split * BLOCK_N, length)
        for block in range(lo, hi, BLOCK_N):
            n = block + offs_n
            rows = (start + n)[:, None] * stride_pn + offs_d[None, :] * stride_pd
            m_i, l_i, acc = _attend_block(
                q, pk_ptr + rows, pv_ptr + rows, n < hi, d_ok, m_i, l_i, acc, qk_scale, UPCAST
            )
        if split == 0:
            tail = b * stride_tb + h * stride_th
            for block in range(0, tail_length, BLOCK_N):
                n = block + offs_n
                rows = tail + n[:, None] * stride_tn + offs_d[None, :] * stride_td
                m_i, l_i, acc = _attend_block(
                    q, tk_ptr + rows, tv_ptr + rows, n < tail_length, d_ok, m_i, l_i, acc, qk_scale, UPCAST
                )
        stat = (pid_bh * num_splits + split) * BLOCK_G + offs_g
        tl.store(m_ptr + stat, m_i)
        tl.store(l_ptr + stat, l_i)
        tl.store(acc_ptr + stat[:, None] * BLOCK_D + offs_d[None, :], acc)

    @triton.jit
    def _merge_splits_kernel(
        m_ptr,
        l_ptr,
        acc_ptr,
        out_ptr,
        group,
        head_dim,
        num_splits,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One (row, KV head): its splits merged by their softmax statistics, written as the output rows of its
        query heads in the output's dtype (a split that saw no key has max -inf and weight 0)."""
        pid_bh = tl.program_id(0)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        first = pid_bh * num_splits * BLOCK_G + offs_g
        top = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for split in range(num_splits):
            top = tl.maximum(top, tl.load(m_ptr + first + split * BLOCK_G))
        top = tl.where(top == float("-inf"), 0.0, top)
        numerator = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        denominator = tl.zeros([BLOCK_G], tl.float32)
        for split in range(num_splits):
            stat = first + split * BLOCK_G
            weight = tl.exp2(tl.load(m_ptr + stat) - top)
            denominator += tl.load(l_ptr + stat) * weight
            numerator += tl.load(acc_ptr + stat[:, None] * BLOCK_D + offs_d[None, :]) * weight[:, None]
        out = numerator / denominator[:, None]
        rows = pid_bh * group + offs_g
        mask = (offs_g < group)[:, None] & (offs_d < head_dim)[None, :]
        tl.store(out_ptr + rows[:, None] * head_dim + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def varlen_decode_attention_triton(
    query: torch.Tensor,
    prompt_keys: torch.Tensor,
    prompt_values: torch.Tensor,
    prompt_starts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_length: int,
    scaling: float,
    max_prompt_length: int | None = None,
) -> torch.Tensor:
    """The Triton kernel of :func:`varlen_decode_attention` (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    `max_prompt_length`, the longest prompt segment when the caller knows it, spares a device-to-host sync."""
    if triton is None:
        raise RuntimeError("Triton is not installed: use varlen_decode_attention_reference (or pip install triton).")
    _validate(query, prompt_keys, prompt_values, prompt_starts, prompt_lengths, tail_keys, tail_values, tail_length)
    batch, q_heads, head_dim = query.shape
    kv_heads = prompt_lengths.shape[1]
    group = q_heads // kv_heads
    # tl.dot needs tiles of at least 16 rows and columns.
    block_g = max(16, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    if max_prompt_length is None:
        max_prompt_length = int(prompt_lengths.max()) if prompt_lengths.numel() else 0
    blocks = max(1, triton.cdiv(max_prompt_length, _BLOCK_N))
    num_splits = min(blocks, _MAX_SPLITS, max(1, _TARGET_PROGRAMS // max(1, batch * kv_heads)))
    blocks_per_split = triton.cdiv(blocks, num_splits)
    num_splits = triton.cdiv(blocks, blocks_per_split)
    programs = batch * kv_heads
    m = torch.empty(programs, num_splits, block_g, device=query.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(programs, num_splits, block_g, block_d, device=query.device, dtype=torch.float32)
    # Read as they come (any integer dtype): a cast would be one more launch per layer and step.
    starts, lengths = prompt_starts.contiguous(), prompt_lengths.contiguous()
    _varlen_decode_kernel[(programs, num_splits)](
        query, prompt_keys, prompt_values, starts, lengths, tail_keys, tail_values,
        m, l, acc,
        *query.stride(),
        *prompt_keys.stride(),
        *tail_keys.stride(),
        kv_heads, group, head_dim, tail_length, blocks_per_split, num_splits, scaling * _LOG2E,
        UPCAST=query.dtype != torch.float32, BLOCK_G=block_g, BLOCK_N=_BLOCK_N, BLOCK_D=block_d,
    )  # fmt: skip
    # One launch merges and writes the final layout and dtype: decoding is bound by launches, not by this work.
    out = torch.empty(batch, q_heads, head_dim, device=query.device, dtype=query.dtype)
    _merge_splits_kernel[(programs,)](m, l, acc, out, group, head_dim, num_splits, BLOCK_G=block_g, BLOCK_D=block_d)
    return out


def varlen_decode_attention(
    query: torch.Tensor,
    prompt_keys: torch.Tensor,
    prompt_values: torch.Tensor,
    prompt_starts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_length: int,
    scaling: float,
    max_prompt_length: int | None = None,
) -> torch.Tensor:
    """`[batch, q_heads, head_dim]` attention output of one decoding query per query head over each KV head's
    packed prompt segment and tail (see the module docstring): the Triton kernel on CUDA or under the Triton
    interpreter, the torch reference otherwise."""
    args = (query, prompt_keys, prompt_values, prompt_starts, prompt_lengths, tail_keys, tail_values, tail_length)
    if triton is not None and (query.is_cuda or _INTERPRETED):
        return varlen_decode_attention_triton(*args, scaling, max_prompt_length)
    return varlen_decode_attention_reference(*args, scaling)
