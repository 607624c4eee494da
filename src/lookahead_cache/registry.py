"""Registries of classes by name, each class imported from its module on first use.

Listing a registry's names (what `lookahead-cache --help` shows as choices) then imports neither torch nor
transformers; looking one up imports its module as a plain import would.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class Registry(Mapping[str, type]):
    """A read-only mapping from names to classes, given as `"module:ClassName"` relative to `package`."""

    def __init__(self, package: str, classes: dict[str, str]):
        self._package = package
        self._classes = dict(classes)

    def __getitem__(self, name: str) -> type:
        module_name, class_name = self._classes[name].split(":")
        return getattr(importlib.import_module(module_name, self._package), class_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def modules_by_class(self) -> dict[str, str]:
        """Each registered class's name and its module: the package's lazy exports (see `lazy_attributes`)."""
        return dict(reversed(target.split(":")) for target in self._classes.values())


def lazy_attributes(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that imports each of `exports` (name -> module relative to the
    package) on first use, so that importing the package itself stays cheap."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    return __getattr__
