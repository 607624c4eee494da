"""Finding a model's attention modules during a cache's prefill, with no model code modified.

A cache passed to `generate` meets the model only inside its forward: transformers hands the cache to each attention
module as a keyword argument (`cache=`, or `past_key_values=` before 5.24), and the module calls `cache.update`
with its layer's keys and values, but nothing tells the cache which module that was. The only way to learn it
without wrapping the model is a process-wide forward hook (`torch.nn.modules.module.register_module_forward_hook`):
after `update(layer_idx)`, the first module called with this cache that returns is that layer's attention module.
This module owns that hook; one `AttentionWatch` lives from a cache's arming to the end of its prefill (or the
cache's collection) and sees only forwards that carry its cache.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from torch import nn
from transformers import PreTrainedModel

from .prefill import cache_argument


class AttentionWatch:
    """Reports each attention module of a prefill through `cache`, right after it ran, and the end of the model's
    forward.

    Args:
        cache: The cache whose forwards are watched (held weakly).
        on_attention_done: Called with `(layer_idx, module, args, kwargs)` when the attention module of a layer
            whose keys were just stored returns.
        on_model_done: Called when a transformers model (`PreTrainedModel`) called with `cache` returns while no
            layer is pending.
    """

    def __init__(
        self,
        cache,
        on_attention_done: Callable[[int, nn.Module, tuple, dict], None],
        on_model_done: Callable[[], None],
    ):
        cache_ref = weakref.ref(cache)
        # Weak, so that the process-wide hook never keeps a cache alive.
        on_attention_done, on_model_done = weakref.WeakMethod(on_attention_done), weakref.WeakMethod(on_model_done)
        self.pending_layer: int | None = None

        def hook(module, args, kwargs, output):
            if cache_ref() is None or cache_argument(kwargs) is not cache_ref():
                return
            if self.pending_layer is not None:
                # The innermost module that received the cache and returned after `update` is the attention module.
                layer_idx, self.pending_layer = self.pending_layer, None
                on_attention_done()(layer_idx, module, args, kwargs)
            elif isinstance(module, PreTrainedModel):
                on_model_done()()

        handle = nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        # Removed with the cache at the latest; `remove` runs it earlier, which also drops it from the finalizers, so
        # that a cache watching many prefills (a long session) does not pile them up.
        self._remove = weakref.finalize(cache, handle.remove)

    def layer_stored(self, layer_idx: int) -> None:
        """`cache.update` stored layer `layer_idx`'s keys: its attention module is the next to return."""
        if self.pending_layer is not None:
            raise attention_not_found(self.pending_layer)
        self.pending_layer = layer_idx

    def remove(self) -> None:
        self._remove()


def attention_not_found(layer_idx: int) -> RuntimeError:
    return RuntimeError(
        f"LookaheadCache could not find the attention module of layer {layer_idx}: it stored keys but no module "
        "that received the cache as its `cache` (or `past_key_values`) keyword argument returned afterwards. "
        "LookaheadCache supports transformers models whose attention modules take the cache as a keyword argument "
        "(Llama, Qwen2/3, Mistral, Gemma 3 and other models written in the transformers v5 style)."
    )
