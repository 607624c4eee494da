"""What every layer of a `LookaheadCache` offers the cache, whatever its layout."""

from __future__ import annotations

from abc import abstractmethod

import torch
from transformers.cache_utils import CacheLayerMixin


class StoredLayer(CacheLayerMixin):
    """A transformers cache layer as a `LookaheadCache` stores it: the growing layer of a prefill, a compressed layer
    (padded or packed) after it, or a sliding window.

    Attributes:
        is_compressed: True once eviction kept a subset of the prompt: attention to it then needs the masks of
            its slots (`slot_valid`), which the model's own mask cannot express.
        attends_packed: True when attention reads the layer's own buffers in place (`lookahead_varlen`).
    """

    is_compressed = False
    attends_packed = False

    @property
    @abstractmethod
    def batch_size(self) -> int: ...

    @abstractmethod
    def kept_tokens(self) -> torch.Tensor:
        """`[batch, kv_heads]` stored tokens that attention reads (padding slots excluded)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes its keys and values hold."""

    @abstractmethod
    def full_nbytes(self) -> int:
        """Bytes the model's own cache layer (`DynamicCache`) would hold after the same tokens."""

    @abstractmethod
    def slot_valid(self) -> torch.Tensor | None:
        """`[batch, kv_heads, slots]` of the padded layout, False on padding slots; None when every slot is read."""

    @abstractmethod
    def to_padded(self) -> StoredLayer:
        """The layer in the padded `[batch, kv_heads, slots, head_dim]` layout (itself when it already is)."""

    def appended(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[batch, kv_heads, tokens, head_dim]` of the tokens a compressed layer stored after its
        prompt (later turns, generated tokens), in the order they came; every one of them is real."""
        raise NotImplementedError(f"{type(self).__name__} keeps no compressed prompt with tokens appended after it.")

    def keep_appended(self, positions: torch.Tensor) -> None:
        """Keep, of the tokens appended after the prompt, those at `positions` (`[batch, kv_heads, kept]`, indices
        into `appended()`, increasing), as many for every head; the others are freed."""
        raise NotImplementedError(f"{type(self).__name__} keeps no compressed prompt with tokens appended after it.")
