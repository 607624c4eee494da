"""lookahead-cache: shrink the KV cache of any transformers causal LM at the end of prefill."""

from .adapters import LookaheadAdapter, LookaheadConfig, add_lookahead, get_lookahead, load_lookahead
from .allocation import ALLOCATIONS, Allocator
from .cache import LookaheadCache
from .config import LookaheadCacheConfig
from .default_model import load_default_model
from .pipelines import LookaheadTextGenerationPipeline
from .scorers import SCORERS, Scorer

__version__ = "0.1.0"


def available_scorers() -> list[str]:
    return list(SCORERS)


def available_allocations() -> list[str]:
    return list(ALLOCATIONS)


__all__ = [
    "Allocator",
    "LookaheadAdapter",
    "LookaheadConfig",
    "add_lookahead",
    "get_lookahead",
    "load_lookahead",
    "LookaheadCache",
    "LookaheadCacheConfig",
    "LookaheadTextGenerationPipeline",
    "Scorer",
    "available_allocations",
    "available_scorers",
    "load_default_model",
]
