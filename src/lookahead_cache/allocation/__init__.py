"""Budget allocators: how many tokens each layer and KV head keeps. One file each, registered by name."""

from __future__ import annotations

from typing import Any

from .adakv import AdaKVAllocator
from .base import Allocator
from .lukv import LUKVAllocator
from .pyramid import PyramidAllocator
from .uniform import UniformAllocator

ALLOCATIONS: dict[str, type[Allocator]] = {
    "uniform": UniformAllocator,
    "pyramid": PyramidAllocator,
    "adakv": AdaKVAllocator,
    "lukv": LUKVAllocator,
}


def get_allocator(allocation: str | Allocator, **kwargs: Any) -> Allocator:
    """Build an allocator from its registered name, or return a given :class:`Allocator` instance as is."""
    if isinstance(allocation, Allocator):
        if kwargs:
            raise ValueError("allocation_kwargs are only used with an allocation name, not with an Allocator instance.")
        return allocation
    if allocation not in ALLOCATIONS:
        raise ValueError(f"Unknown allocation {allocation!r}. Available allocations: {', '.join(ALLOCATIONS)}.")
    return ALLOCATIONS[allocation](**kwargs)


def allocation_name(allocator: Allocator) -> str:
    """The registered name of an allocator's class, else the class name."""
    return next((name for name, cls in ALLOCATIONS.items() if type(allocator) is cls), type(allocator).__name__)


__all__ = [
    "ALLOCATIONS",
    "AdaKVAllocator",
    "Allocator",
    "LUKVAllocator",
    "get_allocator",
    "PyramidAllocator",
    "UniformAllocator",
]
