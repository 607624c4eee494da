"""Decoding on a compressed cache: the attention masks of compressed layers, and `lookahead_varlen`.

A compressed layer's slots are not the model's idea of them: heads and rows keep different numbers of prompt
tokens, left-padded with masked slots, which the 2D padding mask a model builds its 4D mask from cannot say. A
`LookaheadCache` therefore hands each compressed layer's attention module the mask of its slots
(`compressed_layer_mask`), through a forward pre-hook on that module (`DecodeMaskHook`), registered when the layer
is compressed and removed with the cache.

`lookahead_varlen`: an attention implementation registered with transformers' `AttentionInterface` (and SDPA's
mask function under the same name) when this module is imported, which `from lookahead_cache import LookaheadCache`
does. Pick it when loading a model, `from_pretrained(..., attn_implementation="lookahead_varlen")`, or later with
`model.set_attn_implementation("lookahead_varlen")`. It is SDPA everywhere but in one place: a decoding step (one
new token) through a layer that a `LookaheadCache` stored packed (`lookahead_cache.storage.PackedLayer`, for
head-level budgets such as `adakv` and `lukv`). There it attends to the packed buffers in place (the Triton varlen
decode kernel on GPU, one masked attention call on CPU: `packed_decode_attention`) instead of to a padded copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .kernels.varlen_decode import varlen_decode_attention
from .prefill import attention_input, cache_argument
from .storage import PackedLayer, StoredLayer

VARLEN_ATTENTION = "lookahead_varlen"
# The implementations a LookaheadCache works with; a lookahead prefill wraps each of them.
SUPPORTED_ATTENTION = ("sdpa", "eager", VARLEN_ATTENTION)


def check_supported_attention(implementation: str | None) -> None:
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"LookaheadCache supports attn_implementation 'sdpa', 'eager' and '{VARLEN_ATTENTION}', but the model "
            f"uses {implementation!r}. Load it with `attn_implementation='sdpa'`."
        )


def compressed_layer_mask(layer: StoredLayer, module: nn.Module, attention_mask, hidden_states: torch.Tensor):
    """The attention mask of a compressed layer for `module` (its attention module): its own padding slots, then the
    new tokens' mask; None when nothing needs masking."""
    slot_valid = layer.slot_valid()
    batch, query_length = hidden_states.shape[:2]
    if slot_valid is None and attention_mask is None and query_length == 1:
        return None
    slots = layer.get_mask_sizes(0)[0]
    device = hidden_states.device
    if attention_mask is None:
        new = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()[None, None]
    else:
        new = attention_mask[..., -query_length:]
        new = new if new.dtype == torch.bool else new == 0
    past = (
        torch.ones(batch, 1, 1, slots, dtype=torch.bool, device=device)
        if slot_valid is None
        else slot_valid[:, :, None]
    )
    heads = max(past.shape[1], new.shape[1])
    mask = torch.cat(
        [past.expand(batch, heads, query_length, slots), new.expand(batch, heads, query_length, query_length)],
        dim=-1,
    )
    if heads > 1:
        mask = mask.repeat_interleave(module.num_key_value_groups, dim=1)
    if module.config._attn_implementation == "eager":
        dtype = (
            attention_mask.dtype if attention_mask is not None and attention_mask.is_floating_point() else layer.dtype
        )
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def decode_mask_hook(cache, layer_idx: int) -> Callable:
    """A forward pre-hook for the attention module of layer `layer_idx`: in every forward with `cache` once that
    layer is compressed, its `attention_mask` becomes the mask of the layer's slots. Holds the cache weakly, so a
    hook outliving its cache does nothing."""
    cache_ref = weakref.ref(cache)

    def hook(module, args, kwargs):
        cache = cache_ref()
        if cache is None or cache_argument(kwargs) is not cache:
            return None
        stored = cache.layers[layer_idx]
        if not stored.is_compressed:
            return None
        hidden_states = attention_input(args, kwargs)
        if stored.attends_packed:
            # The varlen attention reads the packed layer itself; several new tokens also need the padded mask.
            mask = None
            if hidden_states.shape[1] > 1:
                mask = compressed_layer_mask(stored, module, kwargs.get("attention_mask"), hidden_states)
            kwargs["attention_mask"] = PackedAttention(stored, mask)
        else:
            kwargs["attention_mask"] = compressed_layer_mask(
                stored, module, kwargs.get("attention_mask"), hidden_states
            )
        return args, kwargs

    return hook


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


AttentionInterface.register(VARLEN_ATTENTION, lookahead_varlen_attention)
AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
