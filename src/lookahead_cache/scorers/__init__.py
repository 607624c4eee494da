"""Token scorers: how much each prompt token matters to each KV head. One file each, registered by name.

Importing this package imports no scorer module (nor torch): the registry names each scorer's module and class.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from ..registry import Registry, lazy_attributes

if TYPE_CHECKING:
    from .base import Scorer

SCORERS = Registry(
    __name__,
    {
        "lookahead": ".lookahead:LookaheadScorer",
        "snapkv": ".snapkv:SnapKVScorer",
        "streaming": ".streaming:StreamingScorer",
        "knorm": ".knorm:KnormScorer",
        "random": ".random:RandomScorer",
        "future_queries": ".future_queries:FutureQueriesScorer",
    },
)
__getattr__ = lazy_attributes(__name__, {"Scorer": ".base", **SCORERS.modules_by_class()})


def get_scorer(scorer: str | Scorer, **kwargs: Any) -> Scorer:
    """Build a scorer from its registered name, or return a given :class:`Scorer` instance as is."""
    from .base import Scorer

    if isinstance(scorer, Scorer):
        if kwargs:
            raise ValueError("scorer_kwargs are only used with a scorer name, not with a Scorer instance.")
        return scorer
    if scorer not in SCORERS:
        raise ValueError(f"Unknown scorer {scorer!r}. Available scorers: {', '.join(SCORERS)}.")
    return SCORERS[scorer](**kwargs)


def scorer_name(scorer: Scorer) -> str:
    """The registered name of a scorer's class (what LU-KV profiles are filed under), else the class name."""
    return next((name for name, cls in SCORERS.items() if type(scorer) is cls), type(scorer).__name__)


def scorer_settings(scorer: Scorer) -> dict[str, Any]:
    """The arguments a scorer was built with (its dataclass fields): what an LU-KV profile records of its scorer."""
    return asdict(scorer) if is_dataclass(scorer) else {}


def scorer_defaults(scorer: Scorer) -> dict[str, Any]:
    """The default value of each of a scorer's arguments that has one."""
    if not is_dataclass(scorer):
        return {}
    return {field.name: field.default for field in fields(scorer) if field.default is not MISSING}


__all__ = [
    "SCORERS",
    "Scorer",
    "get_scorer",
    "scorer_defaults",
    "scorer_name",
    "scorer_settings",
    *SCORERS.modules_by_class(),
]
