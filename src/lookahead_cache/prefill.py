"""What a scorer sees of one attention layer at the end of prefill."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property

import torch
import transformers
from packaging import version
from torch import nn
from transformers import GenerationMixin

# The keyword under which transformers models take a cache: renamed from `past_key_values` in 5.24, whose alias goes
# away in 5.40 for `forward` (6.0 for `generate`).
CACHE_ARGUMENT = (
    "cache" if version.parse(transformers.__version__) >= version.parse("5.24.0.dev0") else "past_key_values"
)


def cache_argument(kwargs: dict):
    """The cache a transformers module was called with: `cache=` since transformers 5.24, `past_key_values=` before
    (still accepted by the models' forward until its removal)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def attention_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The `hidden_states` a transformers attention module was called with (by keyword, or first positional)."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def generate_prefill_chunk() -> tuple[int, list[int]]:
    """`(index, lengths)`: which chunk of transformers' `generate(prefill_chunk_size=...)` the forward that calls
    this reads, and the token counts of all its chunks; `(0, [])` outside such a prefill.

    `generate` tells the model nothing of the chunks: each is an ordinary forward, so its prefill frame (where the
    chunks are a local, `input_chunks`, and the one being read `input_chunk`, in transformers 5.19 to 5.25) is the
    only place they can be seen.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_prefill" and isinstance(frame.f_locals.get("self"), GenerationMixin):
            chunks = frame.f_locals.get("input_chunks")
            if chunks is None:
                return 0, []
            current = frame.f_locals.get("input_chunk")
            index = next((i for i, chunk in enumerate(chunks) if chunk is current), 0)
            return index, [chunk.shape[-1] for chunk in chunks]
        frame = frame.f_back
    return 0, []


def generate_prefill_chunks() -> int:
    """Into how many chunks `generate(prefill_chunk_size=...)` splits the prefill that calls this (1 outside one)."""
    return max(1, len(generate_prefill_chunk()[1]))


@dataclass
class LayerPrefill:
    """The prompt of one attention layer, right after its attention ran on the full prompt.

    Attributes:
        module: The attention module (it owns `q_proj`, `scaling`, ...).
        layer_idx: Index of the layer in the cache.
        keys: Post-RoPE prompt keys, `[batch, kv_heads, prompt_len, head_dim]`.
        values: Prompt values, same shape.
        hidden_states: Input of the attention module, `[batch, prompt_len, hidden]`; None where only the keys and
            values were kept (stored training prompts), which leaves the prompt's own queries unavailable.
        position_embeddings: The `(cos, sin)` pair the module applied, or None for models without RoPE.
        valid: `[batch, prompt_len]`, False on padding.
        lookahead_queries: Post-RoPE queries `[batch, q_heads, n, head_dim]` of the lookahead tokens that ran
            after the prompt with the lookahead adapter, for the `lookahead` scorer; None otherwise.
        query_start: Index among `keys` of the first token of `hidden_states`: 0 for a whole prompt; for a later
            prefill of a cache that evicts every prefill (a chunk, a new turn), the tokens it kept before, whose
            queries are gone.
        tokens_seen: Tokens the layer has seen, evicted ones included (the positions of the tokens to come);
            None: `prompt_length`.
    """

    module: nn.Module
    layer_idx: int
    keys: torch.Tensor
    values: torch.Tensor
    hidden_states: torch.Tensor | None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    valid: torch.Tensor
    lookahead_queries: torch.Tensor | None = None
    query_start: int = 0
    tokens_seen: int | None = None

    @property
    def prompt_length(self) -> int:
        return self.keys.shape[-2]

    @property
    def scaling(self) -> float:
        scaling = getattr(self.module, "scaling", None)
        return scaling if scaling is not None else self.keys.shape[-1] ** -0.5

    @cached_property
    def real_lengths(self) -> torch.Tensor:
        return self.valid.sum(-1)

    def queries(self, start: int, end: int | None = None) -> torch.Tensor:
        """Post-RoPE queries of prompt positions `start:end` (indices among `keys`, from `query_start` on),
        `[batch, q_heads, n, head_dim]`.

        They are recomputed from the attention input the way the module computes them, so no model code
        is modified to expose them.
        """
        if start < self.query_start:
            raise ValueError(
                f"Layer {self.layer_idx} has queries from position {self.query_start} on (the tokens before were kept "
                f"from an earlier prefill); position {start} was asked for."
            )
        start, end = start - self.query_start, None if end is None else end - self.query_start
        if self.hidden_states is None:
            raise ValueError(
                f"Layer {self.layer_idx} kept only the prompt's keys and values, not its attention input, so its "
                "queries cannot be computed; score it from a live or recorded prefill instead."
            )
        position_embeddings = None
        if self.position_embeddings is not None:
            cos, sin = self.position_embeddings
            position_embeddings = (cos[:, start:end], sin[:, start:end])
        # Contiguous: the activated-LoRA layers of a model carrying a lookahead adapter view their input flat.
        hidden_states = self.hidden_states[:, start:end].contiguous()
        return attention_queries(self.module, hidden_states, position_embeddings, self.keys.shape[-1], self.layer_idx)


def attention_queries(
    module: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    head_dim: int,
    layer_idx: int,
) -> torch.Tensor:
    """Post-RoPE queries `[batch, q_heads, n, head_dim]` of an attention module for its input `hidden_states`."""
    q_proj = getattr(module, "q_proj", None)
    if q_proj is None:
        raise ValueError(
            f"{type(module).__name__} (layer {layer_idx}) has no `q_proj`, so its queries cannot be "
            "recomputed. Use a scorer that needs no queries (knorm, streaming, random)."
        )
    queries = q_proj(hidden_states).view(*hidden_states.shape[:-1], -1, head_dim).transpose(1, 2)
    q_norm = getattr(module, "q_norm", None)
    if q_norm is not None:
        queries = q_norm(queries)
    if position_embeddings is not None:
        cos, sin = position_embeddings
        queries, _ = _rotary_function(module)(queries, queries, cos, sin)
    return queries


def _rotary_function(module: nn.Module):
    modeling = sys.modules[type(module).__module__]
    apply_rotary = getattr(modeling, "apply_rotary_pos_emb", None)
    if apply_rotary is None:
        raise ValueError(
            f"{type(module).__name__} comes from {modeling.__name__}, which defines no `apply_rotary_pos_emb`; "
            "its queries cannot be recomputed. Use a scorer that needs no queries (knorm, streaming, random)."
        )
    return apply_rotary


def padding_from_mask(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Which prompt tokens are real, read from the 4D mask the model built for its prefill.

    The last query of a left-padded prompt is always real and attends to every real key, so its row of the
    mask is exactly the padding mask.
    """
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 4:
        raise ValueError(
            f"Expected the 4D attention mask transformers builds for eager/sdpa attention, got shape "
            f"{tuple(attention_mask.shape)}."
        )
    last_row = attention_mask[:, 0, -1, -length:]
    valid = last_row if last_row.dtype == torch.bool else last_row == 0
    return valid.expand(batch, length).clone()
