"""Storage of a compressed layer whose KV heads keep different numbers of prompt tokens, without padding.

Head-level allocations (`adakv`, `lukv`) give every KV head its own count. Padding each head to the longest one,
as masking implementations do, keeps the bytes of the longest head for every head. `PackedLayer` keeps one buffer
per batch row, `row_keys` / `row_values` `[batch, slots, head_dim]`:

* the row's kept prompt tokens, head after head (head h's segment starts at `prompt_starts[b, h]` and holds
  `prompt_lengths[b, h]` tokens, in prompt order), in the first `prompt_width` slots;
* then the tokens decoded since, interleaved by head (step t of head h in slot `prompt_width + t * kv_heads + h`),
  in a tail that grows `growth` steps at a time.

So its bytes are the kept tokens' bytes plus at most `growth` slots of slack per head, and a decoding step writes
its new tokens in place; only every `growth` steps does the layer move to larger buffers. Rows of a batch share
`prompt_width`, the largest row total: rows keep equal totals unless their budgets differ (a fractional budget over
prompts of different lengths), and only then does a row hold padding slots.

Attention reads it in one of two ways:

* `sdpa` / `eager` (any device): `update` returns the layer gathered into the padded `[batch, kv_heads, slots,
  head_dim]` layout those implementations expect, with the padding masked, a transient copy per step;
* the `lookahead_varlen` attention implementation (see `lookahead_cache.decoding`): attention runs on the row
  buffers in place, with the Triton varlen decode kernel on GPU and one masked SDPA call per layer on CPU
  (`decode_mask`).
"""

from __future__ import annotations

import torch

from .base import StoredLayer
from .padded import PaddedLayer

DEFAULT_GROWTH = 16


class PackedLayer(StoredLayer):
    """A compressed layer stored per batch row, its KV heads' kept tokens back to back without padding.

    Attributes:
        row_keys: `[batch, prompt_width + kv_heads * tail_capacity, head_dim]`, see the module docstring;
            `row_values` alike.
        prompt_lengths: `[batch, kv_heads]` prompt tokens kept per (row, KV head).
        prompt_starts: `[batch, kv_heads]` slot of each (row, KV head)'s first prompt token in its row buffer.
        prompt_width: Slots of the prompt part of the row buffers (the largest row total of `prompt_lengths`).
        tail_length: Tokens appended per head since the prompt; the tail holds room for `tail_capacity`.
        growth: Steps the tail gains when it is full, so the slack never exceeds `growth` tokens per head.
    """

    is_compileable = False
    is_sliding = False
    is_compressed = True
    is_croppable = False

    def __init__(
        self,
        row_keys: torch.Tensor,
        row_values: torch.Tensor,
        prompt_lengths: torch.Tensor,
        cumulative_length: int,
        growth: int = DEFAULT_GROWTH,
    ):
        super().__init__()
        if growth < 1:
            raise ValueError(f"growth={growth} must be at least 1 slot.")
        self.row_keys, self.row_values = row_keys, row_values
        self.growth = growth
        self.cumulative_length = cumulative_length
        self.dtype, self.device = row_keys.dtype, row_keys.device
        self.is_initialized = True
        self.prompt_width = row_keys.shape[1]
        self.tail_length = 0
        self._set_lengths(prompt_lengths.to(self.device))
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
        lengths = slot_valid.sum(-1)
        row_totals = lengths.sum(-1)
        # nonzero lists the kept tokens row after row, head after head: their slot is their rank within the row.
        row_slot = torch.arange(rows.numel(), device=rows.device) - (row_totals.cumsum(0) - row_totals)[rows]
        width = int(row_totals.max()) if row_totals.numel() else 0
        buffers = []
        for full in (keys, values):
            buffer = full.new_zeros(full.shape[0], width, full.shape[-1])
            buffer[rows, row_slot] = full[rows, heads, kept]
            buffers.append(buffer)
        return cls(*buffers, lengths, cumulative_length, growth)

    def _set_lengths(self, prompt_lengths: torch.Tensor) -> None:
        self.prompt_lengths = prompt_lengths
        self.prompt_starts = prompt_lengths.cumsum(-1) - prompt_lengths
        self.prompt_slots = int(prompt_lengths.max()) if prompt_lengths.numel() else 0
        # The padded layout puts each head's kept tokens last, after its padding slots, as EvictingLayer does.
        slot = torch.arange(self.prompt_slots, device=self.device)
        first_kept = (self.prompt_slots - prompt_lengths)[..., None]
        valid = slot >= first_kept
        self._padded_slots = (self.prompt_starts[..., None] + slot - first_kept).masked_fill(~valid, 0)
        self.prompt_slot_valid = None if bool(valid.all()) else valid
        self._on_new_buffers()

    def _on_new_buffers(self) -> None:
        """Recompute what depends on the buffers' size: flat indices and the decode masks."""
        row_offsets = torch.arange(self.batch_size, device=self.device) * self.row_keys.shape[1]
        self._padded_index = (self._padded_slots + row_offsets[:, None, None]).flatten()
        self.flat_prompt_starts = self.prompt_starts + row_offsets[:, None]
        self._decode_masks = {}

    @property
    def batch_size(self) -> int:
        return self.prompt_lengths.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.prompt_lengths.shape[1]

    @property
    def tail_capacity(self) -> int:
        return (self.row_keys.shape[1] - self.prompt_width) // self.kv_heads

    @property
    def used_slots(self) -> int:
        """Slots of the row buffers that hold tokens (or row padding): the prompt part and the decoded steps."""
        return self.prompt_width + self.kv_heads * self.tail_length

    def tail(self, buffer: torch.Tensor) -> torch.Tensor:
        """The tail of `buffer` (`row_keys` or `row_values`) as a `[batch, kv_heads, tail_capacity, head_dim]` view."""
        return buffer[:, self.prompt_width :].unflatten(1, (self.tail_capacity, self.kv_heads)).transpose(1, 2)

    def varlen_inputs(self) -> tuple:
        """The layer as the varlen decode kernel reads it, views without copies: `(prompt_keys, prompt_values,
        prompt_starts, prompt_lengths, tail_keys, tail_values, tail_length)` (see
        `lookahead_cache/kernels/varlen_decode.py`)."""
        return (
            self.row_keys.flatten(0, 1),
            self.row_values.flatten(0, 1),
            self.flat_prompt_starts,
            self.prompt_lengths,
            self.tail(self.row_keys),
            self.tail(self.row_values),
            self.tail_length,
        )

    # ----- Cache layer API ---------------------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("A PackedLayer is built from a compressed prompt (PackedLayer.from_selection).")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        end = self.tail_length + new
        if end > self.tail_capacity:
            self._grow(end + self.growth - 1)
        written = slice(self.used_slots, self.prompt_width + self.kv_heads * end)
        self.row_keys[:, written] = key_states.transpose(1, 2).flatten(1, 2)
        self.row_values[:, written] = value_states.transpose(1, 2).flatten(1, 2)
        self.tail_length = end
        self.cumulative_length += new
        if self.attends_packed:
            return self.row_keys, self.row_values
        return self.padded()

    def appended(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail(self.row_keys)[:, :, : self.tail_length], self.tail(self.row_values)[:, :, : self.tail_length]

    def keep_appended(self, positions: torch.Tensor) -> None:
        # In place: the kept tokens move to the front of each head's tail, where decoding goes on writing.
        index = positions.unsqueeze(-1).expand(-1, -1, -1, self.row_keys.shape[-1])
        kept = positions.shape[-1]
        for buffer in (self.row_keys, self.row_values):
            tail = self.tail(buffer)
            tail[:, :, :kept] = tail[:, :, : self.tail_length].gather(2, index)
        self.tail_length = kept

    def _grow(self, capacity: int) -> None:
        """Move the layer to buffers with room for `capacity` decoded steps: the only copy decoding makes."""
        for name in ("row_keys", "row_values"):
            old = getattr(self, name)
            grown = old.new_empty(old.shape[0], self.prompt_width + self.kv_heads * capacity, old.shape[-1])
            grown[:, : self.used_slots] = old[:, : self.used_slots]
            setattr(self, name, grown)
        self._on_new_buffers()

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[batch, kv_heads, prompt_slots + tail_length, head_dim]` in the padded layout, padding
        slots first (they hold arbitrary kept tokens and must be masked: see `slot_valid`)."""
        return self._padded(self.row_keys), self._padded(self.row_values)

    def _padded(self, buffer: torch.Tensor) -> torch.Tensor:
        # index_select on the flat index: advanced indexing with a [batch, heads, slots] index is ~5x slower on CPU.
        prompt = buffer.flatten(0, 1).index_select(0, self._padded_index)
        prompt = prompt.view(self.batch_size, self.kv_heads, self.prompt_slots, -1)
        return torch.cat([prompt, self.tail(buffer)[:, :, : self.tail_length]], dim=-2)

    def decode_mask(self, num_key_value_groups: int, dtype: torch.dtype) -> torch.Tensor:
        """`[batch, 1, q_heads, slots]` additive mask over the row buffers for one query per query head: 0 where the
        slot holds a token of the query head's KV head, -inf elsewhere (other heads' tokens, row padding). With it,
        attention over a row buffer is each head's attention over its own tokens; slice it to `used_slots`."""
        key = (num_key_value_groups, dtype)
        if key not in self._decode_masks:
            slots = torch.arange(self.prompt_width, device=self.device).expand(self.batch_size, -1)
            # A prompt slot belongs to the first head whose segment ends after it (kv_heads: row padding).
            prompt_ends = self.prompt_starts + self.prompt_lengths
            prompt_head = torch.searchsorted(prompt_ends, slots.contiguous(), right=True)
            tail_head = torch.arange(self.kv_heads, device=self.device).repeat(self.tail_capacity)
            slot_head = torch.cat([prompt_head, tail_head.expand(self.batch_size, -1)], dim=-1)
            query_head = torch.arange(self.kv_heads * num_key_value_groups, device=self.device) // num_key_value_groups
            visible = slot_head[:, None, None, :] == query_head[None, None, :, None]
            mask = torch.zeros(visible.shape, dtype=dtype, device=self.device)
            self._decode_masks[key] = mask.masked_fill_(~visible, float("-inf"))
        return self._decode_masks[key]

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
        """Bytes held: the kept prompt tokens, the decoded tokens, the tail's slack (at most `growth` steps) and the
        padding of rows that keep fewer prompt tokens than the row that keeps most (none when the totals agree)."""
        return self.row_keys.nbytes + self.row_values.nbytes

    def full_nbytes(self) -> int:
        head_dim = self.row_keys.shape[-1]
        return 2 * self.batch_size * self.kv_heads * self.cumulative_length * head_dim * self.row_keys.element_size()

    def to_padded(self) -> PaddedLayer:
        """The same tokens in the padded layout, a copy (to stack the layer with other caches' layers)."""
        layer = PaddedLayer._compressed(*self.padded(), self.prompt_slot_valid, self.cumulative_length)
        layer.prompt_slots = self.prompt_slots
        return layer

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "crop() cannot be applied to a LookaheadCache after eviction: the evicted prompt tokens are gone and "
            "cannot be restored. Keep a DynamicCache for workflows that roll back (e.g. assisted generation)."
        )

    def _select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (indices, repeats allowed), in that order."""
        rows = rows.to(self.device)
        self.row_keys, self.row_values = self.row_keys[rows], self.row_values[rows]
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
        self.row_keys, self.row_values = (
            self.row_keys.to("cpu", non_blocking=True),
            self.row_values.to("cpu", non_blocking=True),
        )

    def prefetch(self):
        self.row_keys = self.row_keys.to(self.device, non_blocking=True)
        self.row_values = self.row_values.to(self.device, non_blocking=True)
