"""Attention implementations of lookahead-cache, registered with transformers' `AttentionInterface`.

`lookahead_varlen`: decoding reads per-head packed layers in place.

Importing this module (which `from lookahead_cache import LookaheadCache` does) registers it with transformers'
`AttentionInterface` (and SDPA's mask function under the same name); pick it when loading a model,
`from_pretrained(..., attn_implementation="lookahead_varlen")`, or later with
`model.set_attn_implementation("lookahead_varlen")`. It is SDPA everywhere but in one place: a decoding step
(one new token) through a layer that a `LookaheadCache` stored packed (`lookahead_cache.packed.PackedLayer`, for
head-level budgets such as `adakv` and `lukv`). There it attends to the packed buffers in place (the Triton varlen
decode kernel on GPU, one masked attention call on CPU: `packed_decode_attention`) instead of to a padded copy.

`lookahead_prefill|<implementation>` (not for users to pick): the lookahead adapter's hooks switch a model to it
for the one prefill that carries lookahead rows after the prompt. The prompt rows then attend exactly as
`<implementation>` would on the prompt alone, in a call of the same shapes, so their keys, values and the first
token's logits are the base model's bit for bit (attention kernels round differently with the number of query
rows); the lookahead rows attend in a second call, to the prompt and to each other.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .kernels.varlen_decode import varlen_decode_attention
from .packed import PackedLayer

VARLEN_ATTENTION = "lookahead_varlen"
LOOKAHEAD_PREFILL = "lookahead_prefill|"
# The implementations a LookaheadCache works with; a lookahead prefill wraps each of them.
SUPPORTED_ATTENTION = ("sdpa", "eager", VARLEN_ATTENTION)

# Post-RoPE queries of the lookahead rows, by attention module, from a lookahead prefill's attention to the end of
# its layer: the cache scores the layer with them rather than recomputing them.
_LOOKAHEAD_QUERIES: weakref.WeakKeyDictionary[nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def base_implementation(implementation: str | None) -> str | None:
    """The implementation a model attends with outside a lookahead prefill."""
    return implementation.removeprefix(LOOKAHEAD_PREFILL) if implementation else implementation


@dataclass
class PackedAttention:
    """What a `LookaheadCache` passes as `attention_mask` to the attention of a packed layer under
    `lookahead_varlen`: the layer itself, and for several new tokens the mask of its padded layout."""

    layer: PackedLayer
    padded_mask: torch.Tensor | None = None


def lookahead_varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | PackedAttention | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if not isinstance(attention_mask, PackedAttention):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = attention_mask.layer
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.shape[2] > 1:
        # Several new tokens (a new turn on a compressed cache): causal among themselves, on the padded layout.
        keys, values = layer.padded()
        return sdpa_attention_forward(
            module, query, keys, values, attention_mask.padded_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return packed_decode_attention(layer, query, module.num_key_value_groups, scaling), None


def packed_decode_attention(
    layer: PackedLayer, query: torch.Tensor, num_key_value_groups: int, scaling: float
) -> torch.Tensor:
    """`[batch, 1, q_heads, head_dim]` attention of one decoding query per query head (`[batch, q_heads, 1,
    head_dim]`) over the tokens `layer` keeps for its KV head, read in place.

    On GPU, the Triton varlen decode kernel. On CPU, one attention per layer whose query rows are all the query
    heads of a batch row and whose keys are the whole row buffer, with `layer.decode_mask` hiding the other heads'
    tokens: three ops per layer instead of a few per head, at the price of scoring every query head against every
    head's keys (a kv_heads-fold of the logits, cheap at the sizes a CPU decodes).
    """
    if query.is_cuda:
        output = varlen_decode_attention(
            query[:, :, 0], *layer.varlen_inputs(), scaling, max_prompt_length=layer.prompt_slots
        )
        return output[:, None]
    used = layer.used_slots
    keys, values = layer.row_keys[:, :used], layer.row_values[:, :used]
    mask = layer.decode_mask(num_key_value_groups, query.dtype)[..., :used]
    if query.dtype != torch.float32:
        # SDPA computes the softmax of half-precision inputs in float32.
        return torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), keys[:, None], values[:, None], attn_mask=mask, scale=scaling
        )
    # Three plain ops are a quarter faster than SDPA's masked CPU kernel for a single query row per head.
    logits = torch.baddbmm(mask[:, 0], query[:, :, 0], keys.transpose(1, 2), alpha=scaling)
    return torch.bmm(logits.softmax(-1), values)[:, None]


# Eager under torch.compile: traced by dynamo (torch 2.13), the prompt rows' outputs came out unlike the base model's.
@torch.compiler.disable
def lookahead_prefill_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of a prefill whose last rows are the lookahead tokens: the prompt rows alone first, as the base
    implementation computes them, then the lookahead rows over every key."""
    from .adapters.lookahead import get_lookahead

    implementation = base_implementation(module.config._attn_implementation)
    attend = _implementation_function(module, implementation)
    rows = get_lookahead(module).config.num_tokens
    prompt = query.shape[2] - rows
    _LOOKAHEAD_QUERIES[module] = query[:, :, prompt:].clone()
    prompt_mask = None if attention_mask is None else attention_mask[:, :, :prompt, :prompt]
    prompt_output, _ = attend(
        module, query[:, :, :prompt], key[:, :, :prompt], value[:, :, :prompt], prompt_mask, **kwargs
    )
    if attention_mask is not None:
        lookahead_mask = attention_mask[:, :, prompt:]
    else:
        # SDPA skipped the mask (causal, no padding); the lookahead rows need one, its is_causal aligns top-left.
        query_positions = torch.arange(prompt, prompt + rows, device=query.device)[:, None]
        key_positions = torch.arange(prompt + rows, device=query.device)
        lookahead_mask = key_positions <= query_positions
        window = kwargs.get("sliding_window")
        if window is not None:
            lookahead_mask &= key_positions > query_positions - window
        lookahead_mask = lookahead_mask[None, None]
    if implementation == "eager":
        lookahead_output, _ = attend(module, query[:, :, prompt:], key, value, lookahead_mask, **kwargs)
    else:
        lookahead_output = grouped_query_attention(
            query[:, :, prompt:], key, value, lookahead_mask, kwargs.get("scaling"), kwargs.get("dropout", 0.0)
        )
    return torch.cat([prompt_output, lookahead_output], dim=1), None


def grouped_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float | None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """SDPA of a few query rows `[batch, q_heads, rows, head_dim]` over every key, `[batch, rows, q_heads, head_dim]`
    out, with the query heads of each GQA group stacked as rows of their KV head rather than the keys repeated.

    SDPA with a mask repeats the keys and values per query head (transformers' `repeat_kv`): a copy of the whole
    layer's keys and values for a handful of rows. Each row's result is the same computation either way.
    """
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    packed_query = query.reshape(batch, kv_heads, groups * rows, dim)
    packed_mask = attention_mask.expand(batch, heads, rows, -1).reshape(batch, kv_heads, groups * rows, -1)
    output = torch.nn.functional.scaled_dot_product_attention(
        packed_query, key, value, attn_mask=packed_mask, dropout_p=dropout, scale=scaling
    )
    return output.reshape(batch, heads, rows, dim).transpose(1, 2).contiguous()


def take_lookahead_queries(module: nn.Module) -> torch.Tensor:
    """The post-RoPE queries `[batch, q_heads, num_tokens, head_dim]` of the lookahead rows that just attended in
    `module` during a lookahead prefill (handed over once)."""
    queries = _LOOKAHEAD_QUERIES.pop(module, None)
    if queries is None:
        raise RuntimeError(
            f"{type(module).__name__} attended without the lookahead prefill attention, so the lookahead rows' queries "
            f"were not seen; LookaheadCache supports attn_implementation {', '.join(map(repr, SUPPORTED_ATTENTION))}."
        )
    return queries


def _implementation_function(module: nn.Module, implementation: str) -> Callable:
    if implementation == "eager":
        # Each model defines its own eager attention (softcapping, sinks, ...), as the attention module picks it.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


AttentionInterface.register(VARLEN_ATTENTION, lookahead_varlen_attention)
AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
for _implementation in SUPPORTED_ATTENTION:
    AttentionInterface.register(LOOKAHEAD_PREFILL + _implementation, lookahead_prefill_attention)
    AttentionMaskInterface.register(LOOKAHEAD_PREFILL + _implementation, ALL_MASK_ATTENTION_FUNCTIONS[_implementation])
