"""Lookahead adapters: the learned LookaheadKV scorer's modules, through PEFT, from a folder or the Hub."""

from .config import LOOKAHEAD_CONFIG_NAME, LOOKAHEAD_WEIGHTS_NAME, BaseModelSignature, LookaheadConfig
from .hub import load_lookahead, push_lookahead_to_hub, save_lookahead
from .lookahead import LookaheadAdapter, add_lookahead, get_lookahead

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
