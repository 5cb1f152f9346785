"""Lazy package exports: a package names what it offers, and a name's module is imported only
when the name is first used (so that importing a config dataclass, e.g. for the CLI, does not
load torch, pandas or scipy)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a public name to the module
    (relative to the package) that defines it; the value is cached in the package once loaded."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
