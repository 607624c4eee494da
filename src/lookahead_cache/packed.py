"""Storage of a compressed layer whose KV heads keep different numbers of prompt tokens, without padding.

Head-level allocations (`adakv`, `lukv`) give every KV head its own count. Padding each head to the longest one,
as masking implementations do, keeps the bytes of the longest head for every head. `PackedLayer` stores the kept
prompt tokens of all (row, KV head) pairs back to back in one flat buffer, so its bytes are the kept tokens'
bytes, and appends decoded tokens to a per-head tail that grows `growth` slots at a time, so a decoding step
writes its new token in place instead of copying the layer.

Attention reads it in one of two ways:

* `sdpa` / `eager` (any device): `update` returns the layer gathered into the padded `[batch, kv_heads, slots,
  head_dim]` layout those implementations expect, with the padding masked, a transient copy per step;
* the `lookahead_varlen` attention implementation (see `lookahead_cache.attention`): attention runs on the flat
  buffer and the tail directly (the Triton varlen decode kernel on GPU), with no copy.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

DEFAULT_GROWTH = 16


class PackedLayer(CacheLayerMixin):
    """A compressed layer stored per (row, KV head) without padding.

    Attributes:
        prompt_keys: `[kept, head_dim]`, the kept prompt keys of every (row, KV head), in row-major (row, head)
            order and in prompt order within each; `prompt_values` alike.
        prompt_lengths: `[batch, kv_heads]` prompt tokens kept per (row, KV head).
        prompt_starts: `[batch, kv_heads]` offset of each (row, KV head) in `prompt_keys`.
        tail_keys: `[batch, kv_heads, capacity, head_dim]` keys appended after the prompt; the first
            `tail_length` slots hold tokens, the rest is the slack new tokens are written into.
        growth: Slots the tail gains when it is full, so the slack never exceeds `growth` tokens per head.
    """

    is_compileable = False
    is_sliding = False
    is_compressed = True
    is_croppable = False

    def __init__(
        self,
        prompt_keys: torch.Tensor,
        prompt_values: torch.Tensor,
        prompt_lengths: torch.Tensor,
        cumulative_length: int,
        growth: int = DEFAULT_GROWTH,
    ):
        super().__init__()
        if growth < 1:
            raise ValueError(f"growth={growth} must be at least 1 slot.")
        self.prompt_keys, self.prompt_values = prompt_keys, prompt_values
        self.growth = growth
        self.cumulative_length = cumulative_length
        self.dtype, self.device = prompt_keys.dtype, prompt_keys.device
        self.is_initialized = True
        self._set_lengths(prompt_lengths.to(self.device))
        batch, kv_heads = prompt_lengths.shape
        self.tail_keys = prompt_keys.new_empty(batch, kv_heads, 0, prompt_keys.shape[-1])
        self.tail_values = prompt_values.new_empty(batch, kv_heads, 0, prompt_values.shape[-1])
        self.tail_length = 0
        # Set by the cache when the model attends with `lookahead_varlen`: `update` then skips the padded copy.
        self.attends_packed = False

    @classmethod
    def from_selection(
        cls,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        slot_valid: torch.Tensor,
        cumulative_length: int,
        growth: int = DEFAULT_GROWTH,
    ) -> PackedLayer:
        """Pack the prompt tokens at `positions` (`[batch, kv_heads, slots]`, those where `slot_valid` is True) of
        the full prompt `keys` / `values` (`[batch, kv_heads, prompt_len, head_dim]`)."""
        rows, heads, slots = slot_valid.nonzero(as_tuple=True)
        kept = positions[rows, heads, slots]
        return cls(keys[rows, heads, kept], values[rows, heads, kept], slot_valid.sum(-1), cumulative_length, growth)

    def _set_lengths(self, prompt_lengths: torch.Tensor) -> None:
        self.prompt_lengths = prompt_lengths
        flat = prompt_lengths.flatten()
        self.prompt_starts = (flat.cumsum(0) - flat).view_as(prompt_lengths)
        self.prompt_slots = int(prompt_lengths.max()) if prompt_lengths.numel() else 0
        # The padded layout puts each head's kept tokens last, after its padding slots, as EvictingLayer does.
        slot = torch.arange(self.prompt_slots, device=self.device)
        first_kept = (self.prompt_slots - prompt_lengths)[..., None]
        valid = slot >= first_kept
        self._padded_index = (self.prompt_starts[..., None] + slot - first_kept).masked_fill(~valid, 0)
        self.prompt_slot_valid = None if bool(valid.all()) else valid

    @property
    def batch_size(self) -> int:
        return self.prompt_lengths.shape[0]

    # ----- Cache layer API ---------------------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("A PackedLayer is built from a compressed prompt (PackedLayer.from_selection).")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        end = self.tail_length + new
        if end > self.tail_keys.shape[-2]:
            self._grow(end + self.growth - 1)
        self.tail_keys[:, :, self.tail_length : end] = key_states
        self.tail_values[:, :, self.tail_length : end] = value_states
        self.tail_length = end
        self.cumulative_length += new
        if self.attends_packed:
            return self.prompt_keys, self.prompt_values
        return self.padded()

    def _grow(self, capacity: int) -> None:
        """Move the tail to a buffer of `capacity` slots: the only copy decoding makes, of the tail alone."""
        for name in ("tail_keys", "tail_values"):
            old = getattr(self, name)
            grown = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            grown[:, :, : self.tail_length] = old[:, :, : self.tail_length]
            setattr(self, name, grown)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[batch, kv_heads, prompt_slots + tail_length, head_dim]` in the padded layout, padding
        slots first (they hold arbitrary kept tokens and must be masked: see `slot_valid`)."""
        return self._padded(self.prompt_keys, self.tail_keys), self._padded(self.prompt_values, self.tail_values)

    def _padded(self, prompt: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        # index_select on the flat index: advanced indexing with a [batch, heads, slots] index is ~5x slower on CPU.
        gathered = prompt.index_select(0, self._padded_index.flatten()).view(*self._padded_index.shape, -1)
        return torch.cat([gathered, tail[:, :, : self.tail_length]], dim=-2)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        physical = self.prompt_slots + self.tail_length
        return physical + query_length, self.cumulative_length - physical

    def slot_valid(self) -> torch.Tensor | None:
        """`[batch, kv_heads, prompt_slots + tail_length]` for the padded layout, False on padding slots; None when
        every head keeps as many prompt tokens."""
        if self.prompt_slot_valid is None:
            return None
        tail = self.prompt_slot_valid.new_ones(*self.prompt_slot_valid.shape[:2], self.tail_length)
        return torch.cat([self.prompt_slot_valid, tail], dim=-1)

    def kept_tokens(self) -> torch.Tensor:
        """`[batch, kv_heads]` number of stored tokens that attention reads."""
        return (self.prompt_lengths + self.tail_length).cpu()

    def nbytes(self) -> int:
        """Bytes held: the kept prompt tokens, the decoded tokens and the tail's slack (at most `growth` slots)."""
        return sum(t.nbytes for t in (self.prompt_keys, self.prompt_values, self.tail_keys, self.tail_values))

    def to_padded(self):
        """The same layer as an `EvictingLayer` in the padded layout (to stack it with other caches' layers)."""
        from .layers import EvictingLayer

        layer = EvictingLayer()
        keys, values = self.padded()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        layer.cumulative_length = self.cumulative_length
        layer.is_compressed, layer.is_croppable = True, False
        layer.prompt_slots = self.prompt_slots
        layer.prompt_slot_valid = self.prompt_slot_valid
        return layer

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "crop() cannot be applied to a LookaheadCache after eviction: the evicted prompt tokens are gone and "
            "cannot be restored. Keep a DynamicCache for workflows that roll back (e.g. assisted generation)."
        )

    def _select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (indices, repeats allowed), in that order, repacking the prompt buffer."""
        rows = rows.to(self.device)
        valid = (
            torch.ones_like(self._padded_index, dtype=torch.bool)
            if self.prompt_slot_valid is None
            else self.prompt_slot_valid
        )
        flat_index = self._padded_index[rows][valid[rows]]
        self.prompt_keys, self.prompt_values = self.prompt_keys[flat_index], self.prompt_values[flat_index]
        self.tail_keys, self.tail_values = self.tail_keys[rows], self.tail_values[rows]
        self._set_lengths(self.prompt_lengths[rows])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_rows(torch.arange(self.batch_size, device=self.device).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        self._select_rows(indices)

    def reset(self) -> None:
        raise RuntimeError("A PackedLayer holds a compressed prompt; start a new LookaheadCache for a new prompt.")

    def offload(self):
        for name in ("prompt_keys", "prompt_values", "tail_keys", "tail_values"):
            setattr(self, name, getattr(self, name).to("cpu", non_blocking=True))

    def prefetch(self):
        for name in ("prompt_keys", "prompt_values", "tail_keys", "tail_values"):
            setattr(self, name, getattr(self, name).to(self.device, non_blocking=True))
