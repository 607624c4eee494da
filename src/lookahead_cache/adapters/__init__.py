"""Lookahead adapters: the learned LookaheadKV scorer's modules, through PEFT, from a folder or the Hub.

Split as PEFT splits its tuners: `config` (what an adapter is, and its PEFT LoRA config), `model` (the adapter as a
module: embeddings, the LoRA on the lookahead rows, running them), `injection` (adding or loading one into a model)
and `serialization` (its files, locally and on the Hub); `checks` validates files before anything is loaded.
Importing this package imports none of them: names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazy_attributes

_EXPORTS = {
    "LOOKAHEAD_CONFIG_NAME": ".config",
    "LOOKAHEAD_WEIGHTS_NAME": ".config",
    "BaseModelSignature": ".config",
    "LookaheadConfig": ".config",
    "LookaheadAdapter": ".model",
    "get_lookahead": ".model",
    "add_lookahead": ".injection",
    "load_lookahead": ".injection",
    "push_lookahead_to_hub": ".serialization",
    "save_lookahead": ".serialization",
}

if TYPE_CHECKING:
    from .config import LOOKAHEAD_CONFIG_NAME, LOOKAHEAD_WEIGHTS_NAME, BaseModelSignature, LookaheadConfig
    from .injection import add_lookahead, load_lookahead
    from .model import LookaheadAdapter, get_lookahead
    from .serialization import push_lookahead_to_hub, save_lookahead

__getattr__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "LOOKAHEAD_CONFIG_NAME",
    "LOOKAHEAD_WEIGHTS_NAME",
    "BaseModelSignature",
    "LookaheadAdapter",
    "LookaheadConfig",
    "add_lookahead",
    "get_lookahead",
    "load_lookahead",
    "push_lookahead_to_hub",
    "save_lookahead",
]
