"""CLI options generated from the stage config dataclasses (one declaration per option).

Each stage's options dataclass declares every option once: name, type, default and help
(:func:`sccircuits.config.option`). :func:`config_options` turns such a dataclass into typer
options and hands the command function one built config object, so ``cli.py`` restates no
default and no help text:

    @app.command("trace")
    @config_options(TraceConfig)
    def trace_cmd(run: Path = typer.Option(...), cfg: TraceConfig = None): ...

Rules, the same for every command: field ``n_features`` -> ``--n-features``; a bool ->
``--x/--no-x``; ``X | None`` -> an optional option; a list -> comma-separated text (parsed by
the dataclass); a nested config dataclass (e.g. ``ValidateConfig.predict``) -> its own fields,
flattened (with a prefix where names would collide), except its ``compat`` when the outer
config has one: a stage has one ``--compat``, which its ``__post_init__`` hands down.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional

import typer

from .config import list_text


@dataclasses.dataclass(frozen=True)
class CliField:
    """One CLI option generated from a config field."""

    name: str  # python parameter name (prefix + field name)
    path: tuple[str, ...]  # field names from the top config down to this field
    flags: tuple[str, ...]  # "--n-features" (+ aliases)
    annotation: Any  # the type typer parses
    default: Any  # the CLI default (the field's default in CLI form)
    help: str


def _base_type(tp) -> tuple[Any, bool]:
    """(type without None, optional?) of a resolved annotation."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return ...


def cli_fields(cls: type, prefixes: dict[str, str] | None = None,
               aliases: dict[str, tuple[str, ...]] | None = None,
               _path: tuple[str, ...] = (), _prefix: str = "") -> list[CliField]:
    """The CLI options of config class ``cls``, nested configs flattened. ``prefixes`` maps a
    nested config field to the prefix of its options; ``aliases`` maps an option name to extra
    flags (older spellings kept working)."""
    prefixes, aliases = prefixes or {}, aliases or {}
    hints = typing.get_type_hints(cls)
    out: list[CliField] = []
    own = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            inner = cli_fields(tp, prefixes, aliases, _path + (f.name,), _prefix + prefixes.get(f.name, ""))
            out += [c for c in inner if not ("compat" in own and c.path == _path + (f.name, "compat"))]
            continue
        name = _prefix + f.name
        flag = "--" + name.replace("_", "-")
        default = _default(f)
        if typing.get_origin(tp) is list:
            annotation = Optional[str]
            default = None if default is None else list_text(default)
        elif tp is bool:
            annotation = bool
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        else:
            annotation = Optional[tp] if optional else tp
        out.append(CliField(name, _path + (f.name,), (flag,) + tuple(aliases.get(name, ())), annotation,
                            default, f.metadata.get("help", "")))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TypeError(f"{cls.__name__}: options {dup} collide; give the nested config a prefix")
    return out


def build_config(cls: type, fields: list[CliField], values: dict[str, Any]):
    """The config object from parsed CLI ``values`` (keyed by option name)."""
    tree: dict = {}
    for f in fields:
        node = tree
        for key in f.path[:-1]:
            node = node.setdefault(key, {})
        node[f.path[-1]] = values[f.name]

    def make(c: type, data: dict):
        hints = typing.get_type_hints(c)
        kwargs = {}
        for k, v in data.items():
            tp, _ = _base_type(hints[k])
            kwargs[k] = make(tp, v) if dataclasses.is_dataclass(tp) and isinstance(v, dict) else v
        return c(**kwargs)

    return make(cls, tree)


def config_options(cls: type, *, param: str = "cfg", prefixes: dict[str, str] | None = None,
                   aliases: dict[str, tuple[str, ...]] | None = None) -> Callable:
    """Decorator: add one typer option per field of ``cls`` to a command and pass the built
    config as the command's ``param`` argument (see the module docstring)."""
    fields = cli_fields(cls, prefixes, aliases)

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name != param]
        clash = {p.name for p in own} & {f.name for f in fields}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are also {cls.__name__} fields")
        extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.annotation,
                                   default=typer.Option(f.default, *f.flags, help=f.help))
                 for f in fields]

        @functools.wraps(fn)
        def command(**kwargs):
            values = {f.name: kwargs.pop(f.name) for f in fields}
            kwargs[param] = build_config(cls, fields, values)
            return fn(**kwargs)

        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != param}
        command.__signature__ = sig.replace(parameters=[
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra)
        command.__config_class__ = cls
        command.__config_fields__ = fields
        return command

    return decorate
