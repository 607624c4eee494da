"""lookahead-cache: shrink the KV cache of any transformers causal LM at the end of prefill.

Public names are imported on first use (as transformers does), so that `import lookahead_cache` and the command
line's `--help` stay quick; `from lookahead_cache import LookaheadCache` imports the cache as usual, and with it
registers the `lookahead_varlen` attention implementation with transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import lazy_attributes

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "Allocator": ".allocation",
    "LookaheadAdapter": ".adapters",
    "LookaheadCache": ".cache",
    "LookaheadCacheConfig": ".config",
    "LookaheadConfig": ".adapters",
    "LookaheadTextGenerationPipeline": ".pipelines",
    "Scorer": ".scorers",
    "add_lookahead": ".adapters",
    "get_lookahead": ".adapters",
    "load_default_model": ".default_model",
    "load_lookahead": ".adapters",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports these on first use
    from .adapters import LookaheadAdapter, LookaheadConfig, add_lookahead, get_lookahead, load_lookahead
    from .allocation import Allocator
    from .cache import LookaheadCache
    from .config import LookaheadCacheConfig
    from .default_model import load_default_model
    from .pipelines import LookaheadTextGenerationPipeline
    from .scorers import Scorer


__getattr__ = lazy_attributes(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def available_scorers() -> list[str]:
    from .scorers import SCORERS

    return list(SCORERS)


def available_allocations() -> list[str]:
    from .allocation import ALLOCATIONS

    return list(ALLOCATIONS)


__all__ = [*sorted(_EXPORTS), "available_allocations", "available_scorers"]
