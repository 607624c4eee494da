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
    """A read-only mapping from names to classes, given as `"module:ClassName"` relative to `package`.

    `exports` names the package's other public attributes the same way (e.g. `{"Scorer": ".base:Scorer"}`), and
    `attribute` serves as the package's module-level `__getattr__` for them and for the registered classes.
    """

    def __init__(self, package: str, classes: dict[str, str], exports: dict[str, str] | None = None):
        self._package = package
        self._classes = dict(classes)
        self._exports = dict(exports or {})

    def __getitem__(self, name: str) -> type:
        return self._load(self._classes[name])

    def _load(self, target: str) -> Any:
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name, self._package), attribute)

    def attribute(self, name: str) -> Any:
        """A registered class by its class name, or an export by its name (for the package's `__getattr__`)."""
        if name in self._exports:
            return self._load(self._exports[name])
        return self.class_named(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def class_named(self, class_name: str) -> type:
        """The registered class called `class_name` (for a package's module-level `__getattr__`)."""
        for name, target in self._classes.items():
            if target.split(":")[1] == class_name:
                return self[name]
        raise AttributeError(f"module {self._package!r} has no attribute {class_name!r}")

    def class_names(self) -> list[str]:
        return [target.split(":")[1] for target in self._classes.values()]


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
