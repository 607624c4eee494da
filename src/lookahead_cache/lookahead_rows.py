"""The lookahead rows of a prefill: how they attend, and how their queries reach the cache.

A prefill with the lookahead scorer carries the lookahead adapter's rows after the prompt (or, in training and
evaluation replay, runs them alone after a recorded prompt's cache). For that forward the model attends with
`lookahead_prefill|<implementation>`, registered here with transformers' `AttentionInterface`: the prompt rows
attend exactly as `<implementation>` would on the prompt alone, in a call of the same shapes, so their keys, values
and the first token's logits are the base model's bit for bit (attention kernels round differently with the number
of query rows); the lookahead rows attend in a second call, to the prompt and to each other, and their post-RoPE
queries are kept for scoring.

The attention function only receives what the attention module passes it, so the forward's `LookaheadRows` reach
it through a context variable, set for that one forward (`LookaheadRows.attending`) and read nowhere else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .decoding import SUPPORTED_ATTENTION, check_supported_attention

LOOKAHEAD_PREFILL = "lookahead_prefill|"


@dataclass
class LookaheadRows:
    """The `count` lookahead rows that end the inputs of one forward, after the `question` rows of a question that a
    streaming prefill's chunk carries (`LookaheadCache.set_question`), and, per attention module, the lookahead rows'
    post-RoPE queries `[batch, q_heads, count, head_dim]` once it attended.

    Question and lookahead rows attend alike (to the prompt and causally to each other) and leave the cache alike;
    only the lookahead rows carry the LoRA and vote."""

    count: int
    question: int = 0
    queries: dict[nn.Module, torch.Tensor] = field(default_factory=dict)

    @property
    def appended(self) -> int:
        """Rows after the prompt: the question's and the lookahead tokens'."""
        return self.question + self.count

    @contextmanager
    def attending(self, decoder: nn.Module) -> Iterator[LookaheadRows]:
        """Within the block, `decoder`'s attention layers attend with the lookahead prefill attention and record
        these rows' queries."""
        config = decoder.config
        implementation = config._attn_implementation
        check_supported_attention(implementation)
        token = _ATTENDING.set(self)
        config._attn_implementation = LOOKAHEAD_PREFILL + implementation
        try:
            yield self
        finally:
            config._attn_implementation = implementation
            _ATTENDING.reset(token)

    def take_queries(self, module: nn.Module) -> torch.Tensor:
        """The queries of these rows in attention module `module` (handed over once)."""
        queries = self.queries.pop(module, None)
        if queries is None:
            raise RuntimeError(
                f"{type(module).__name__} attended without the lookahead prefill attention, so the lookahead rows' "
                f"queries were not seen; lookahead-cache supports attn_implementation "
                f"{', '.join(map(repr, SUPPORTED_ATTENTION))}."
            )
        return queries


_ATTENDING: ContextVar[LookaheadRows | None] = ContextVar("lookahead_rows", default=None)


def base_implementation(implementation: str | None) -> str | None:
    """The implementation a model attends with outside a lookahead prefill."""
    return implementation.removeprefix(LOOKAHEAD_PREFILL) if implementation else implementation


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
    """Attention of a forward whose last query rows are the lookahead tokens: the other rows alone first, as the
    base implementation computes them, then the lookahead rows over every key."""
    rows = _ATTENDING.get()
    if rows is None:
        raise RuntimeError(
            f"attn_implementation {module.config._attn_implementation!r} is lookahead-cache's own, for a forward with "
            "lookahead rows; load the model with 'sdpa', 'eager' or 'lookahead_varlen'."
        )
    implementation = base_implementation(module.config._attn_implementation)
    attend = _implementation_function(module, implementation)
    prompt = query.shape[2] - rows.appended
    # The keys before the rows: this forward's prompt tokens, after those a later prefill's cache kept before it.
    before_rows = key.shape[2] - rows.appended
    rows.queries[module] = query[:, :, query.shape[2] - rows.count :].clone()
    outputs = []
    if prompt:
        prompt_mask = None if attention_mask is None else attention_mask[:, :, :prompt, :before_rows]
        outputs.append(
            attend(
                module,
                query[:, :, :prompt],
                key[:, :, :before_rows],
                value[:, :, :before_rows],
                prompt_mask,
                **kwargs,
            )[0]
        )
    if attention_mask is not None:
        lookahead_mask = attention_mask[:, :, prompt:]
    else:
        # SDPA skipped the mask (causal, no padding); the lookahead rows need one, its is_causal aligns top-left.
        query_positions = torch.arange(before_rows, before_rows + rows.appended, device=query.device)[:, None]
        key_positions = torch.arange(key.shape[2], device=query.device)
        lookahead_mask = key_positions <= query_positions
        window = kwargs.get("sliding_window")
        if window is not None:
            lookahead_mask &= key_positions > query_positions - window
        lookahead_mask = lookahead_mask[None, None]
    if implementation == "eager":
        outputs.append(attend(module, query[:, :, prompt:], key, value, lookahead_mask, **kwargs)[0])
    else:
        outputs.append(
            grouped_query_attention(
                query[:, :, prompt:], key, value, lookahead_mask, kwargs.get("scaling"), kwargs.get("dropout", 0.0)
            )
        )
    return torch.cat(outputs, dim=1), None


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


def _implementation_function(module: nn.Module, implementation: str) -> Callable:
    if implementation == "eager":
        # Each model defines its own eager attention (softcapping, sinks, ...), as the attention module picks it.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


for _implementation in SUPPORTED_ATTENTION:
    AttentionInterface.register(LOOKAHEAD_PREFILL + _implementation, lookahead_prefill_attention)
    AttentionMaskInterface.register(LOOKAHEAD_PREFILL + _implementation, ALL_MASK_ATTENTION_FUNCTIONS[_implementation])
