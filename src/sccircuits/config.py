"""Helpers shared by every stage's options dataclass.

Each stage keeps its options in one dataclass, declared with :func:`option` so that every
field carries its help text (the CLI options are generated from it, ``cli_options.py``);
validation lives in the dataclass's ``__post_init__`` and raises :class:`~sccircuits.errors.ConfigError`. The
dataclass is saved into the run manifest with :func:`to_dict` and read back with
:func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with a help string (``default`` or a ``factory`` for mutable values)."""
    meta = {"help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


COMPAT_MODES = ("none", "reference")
"""Values of every stage's ``compat`` option: "none" (our defaults) or "reference" (the
published scripts, rule by rule)."""


def compat_option(default: Any, reference: Any, help: str) -> Any:
    """An option whose default depends on ``compat``: ``default`` normally, ``reference`` under
    ``compat="reference"``. The field itself defaults to None ("not given"); :func:`apply_compat`
    fills it in ``__post_init__``. The help text states both defaults."""
    both = f"default {default!r}" if default == reference else \
        f"default {default!r}; {reference!r} with --compat reference"
    meta = {"help": f"{help} ({both})", "compat": (default, reference)}
    return dataclasses.field(default=None, metadata=meta)


def apply_compat(cfg: Any) -> None:
    """The one compat rule, for every stage: compat supplies defaults and never overrides.

    Each :func:`compat_option` field left None gets its default for ``cfg.compat``; under
    ``compat="reference"`` a value the user gave that differs from the published one is a
    ConfigError naming the option (a silently replaced value would be a result the user did
    not ask for). ``compat`` "" (older manifests) means "none"."""
    if cfg.compat in ("", None):
        cfg.compat = "none"
    check(cfg.compat in COMPAT_MODES, f"compat must be 'none' or 'reference', got {cfg.compat!r}")
    reference = cfg.compat == "reference"
    for f in dataclasses.fields(cfg):
        if "compat" not in f.metadata:
            continue
        ours, published = f.metadata["compat"]
        value = getattr(cfg, f.name)
        if value is None:
            setattr(cfg, f.name, published if reference else ours)
        elif reference and value != published:
            flag = "--" + f.name.replace("_", "-")
            raise ConfigError(f"{flag} {value!r} contradicts --compat reference, which uses {published!r} "
                              f"(drop {flag} or --compat reference)")


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


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)


# -- one parser for layer and feature lists (every stage and the CLI use these) ------------------
def list_text(values) -> str:
    """[0, 5, 11] -> "0,5,11" (the CLI form of a list option)."""
    return ",".join(str(v) for v in values)


def parse_names(spec: str | Sequence[str], what: str) -> list[str]:
    """"go,kegg" or ["go", "kegg"] -> ["go", "kegg"] (blanks dropped); ``what`` names the option."""
    items = spec.split(",") if isinstance(spec, str) else [str(x) for x in spec]
    return [x.strip() for x in items if x.strip()]


def parse_int_list(spec: str | Sequence[int], what: str) -> list[int]:
    """"0,5,11" or [0, 5, 11] -> [0, 5, 11] (order kept); a one-line ConfigError naming
    ``what`` when an item is not an integer."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for x in items:
        if isinstance(x, str) and not x.strip():
            continue
        try:
            if isinstance(x, float) and not x.is_integer():
                raise ValueError
            out.append(int(x.strip() if isinstance(x, str) else x))
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be comma-separated integers, got {spec!r}") from None
    return out


def parse_layers(spec: str | Sequence[int] | None, what: str = "layers", n_layers: int | None = None,
                 allow_all: bool = False) -> list[int] | None:
    """A layer list: "0,5,11", [0, 5, 11] or (with ``allow_all``) "all" (every layer; [] while
    ``n_layers`` is unknown); None stays None. Sorted and de-duplicated; layers must be >= 0
    and, when ``n_layers`` is given, below it. Errors are one-line ConfigErrors naming ``what``."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        if not allow_all:
            raise ConfigError(f"{what} must be comma-separated integers, got {spec!r}")
        return [] if n_layers is None else list(range(n_layers))
    layers = parse_int_list(spec, what)
    if not layers:
        raise ConfigError(f"{what} is empty")
    if any(l < 0 for l in layers):
        raise ConfigError(f"{what} must be >= 0, got {layers}")
    if n_layers is not None and any(l >= n_layers for l in layers):
        raise ConfigError(f"{what} {layers} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return sorted(set(layers))


def parse_feature_spec(text: str) -> dict[int, list[int]]:
    """'0:309,460;5:12,80' -> {0: [309, 460], 5: [12, 80]} (a one-line ConfigError otherwise)."""
    out: dict[int, list[int]] = {}
    for part in str(text).replace(" ", "").split(";"):
        if not part:
            continue
        if part.count(":") != 1:
            raise ConfigError(f"features: cannot parse {part!r}; expected 'LAYER:F1,F2;LAYER:F3'")
        layer, feats = part.split(":")
        layer_i = parse_int_list([layer], f"features: layer {layer!r}")[0]
        ids = parse_int_list(feats, f"features: the ids of layer {layer}")
        if not ids:
            raise ConfigError(f"features: layer {layer} lists no feature ids")
        if any(i < 0 for i in ids):
            raise ConfigError(f"features: negative feature id in {part!r}")
        out[layer_i] = sorted(set(out.get(layer_i, [])) | set(ids))
    if not out:
        raise ConfigError("features: empty specification")
    return out
