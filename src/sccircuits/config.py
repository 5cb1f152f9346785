"""Helpers shared by every stage's options dataclass.

Each stage keeps its options in one dataclass, declared with :func:`option` so that every
field carries its help text (used by the CLI and by ``describe``); validation lives in the
dataclass's ``__post_init__`` and raises :class:`~sccircuits.errors.ConfigError`. The
dataclass is saved into the run manifest with :func:`to_dict` and read back with
:func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with a help string (``default`` or a ``factory`` for mutable values)."""
    meta = {"help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def to_dict(cfg: Any) -> dict:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}")
    return cls(**data)


def describe(cls: type) -> str:
    """One line per option: name, default and help text (for docs and ``--help``)."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        lines.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)
