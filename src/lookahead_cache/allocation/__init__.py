"""Budget allocators: how many tokens each layer and KV head keeps. One file each, registered by name.

Importing this package imports no allocator module (nor torch): the registry names each one's module and class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry, lazy_attributes

if TYPE_CHECKING:
    from .base import Allocator

ALLOCATIONS = Registry(
    __name__,
    {
        "uniform": ".uniform:UniformAllocator",
        "pyramid": ".pyramid:PyramidAllocator",
        "adakv": ".adakv:AdaKVAllocator",
        "lukv": ".lukv:LUKVAllocator",
    },
)
__getattr__ = lazy_attributes(__name__, {"Allocator": ".base", **ALLOCATIONS.modules_by_class()})


def get_allocator(allocation: str | Allocator, **kwargs: Any) -> Allocator:
    """Build an allocator from its registered name, or return a given :class:`Allocator` instance as is."""
    from .base import Allocator

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


__all__ = ["ALLOCATIONS", "Allocator", "allocation_name", "get_allocator", *ALLOCATIONS.modules_by_class()]
