"""Safe reading of the dictionary files shipped with models (pickles and JSON).

Geneformer ships its token, gene-median and gene-name dictionaries as Python pickles. A pickle
can run arbitrary code when loaded, so we never use :func:`pickle.load` on them. Instead
:class:`RestrictedUnpickler` only lets through the plain values such dictionaries are made of
(dict, list, tuple, str, int, float, bool, None, and numpy scalars, which some published
dictionaries contain). Any other global (``os.system``, ``builtins.eval``, a class...) is
refused before it is called, and the result must be a flat dict of plain values.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

from ..errors import InputError

# The only globals a dictionary pickle may name: numpy scalars are pickled as
# ``numpy.core.multiarray.scalar(dtype, bytes)`` (``numpy._core`` since numpy 2).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}

_PLAIN = (str, int, float, bool, type(None))


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy scalar reconstruction (and the
    latin-1 byte strings of protocol-2 pickles)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED_GLOBALS:
            import importlib
            import warnings

            with warnings.catch_warnings():  # numpy 2 warns on the numpy 1 module name
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"refused to load global '{module}.{name}'")

    def persistent_load(self, pid):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError("refused persistent id")


def restricted_loads(data: bytes):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (raises pickle.UnpicklingError)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _plain(value, path) -> object:
    """Convert numpy scalars to Python values; refuse anything that is not a plain value."""
    if isinstance(value, _PLAIN):
        return value
    import numpy as np

    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    raise InputError(path, f"dictionary holds a value of type {type(value).__name__}; "
                           "expected strings and numbers only")


def load_dictionary(path: str | os.PathLike) -> dict:
    """Read a flat dictionary (str/number keys -> str/number values) from .pkl or .json.

    Pickles go through :class:`RestrictedUnpickler`; a pickle that names any other global
    (i.e. one that would run code) is refused with an :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "dictionary file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from None
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(path, f"not valid JSON ({e})") from None
    else:
        try:
            obj = restricted_loads(raw)
        except pickle.UnpicklingError as e:
            raise InputError(path, f"unsafe or invalid pickle: {e} (only plain dicts of strings and "
                                   "numbers are accepted)") from None
        except Exception as e:  # truncated / corrupt pickles raise EOFError, ValueError, ...
            raise InputError(path, f"corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a dictionary, got {type(obj).__name__}")
    return {_plain(k, path): _plain(v, path) for k, v in obj.items()}


def torch_load_refusal(error: Exception) -> str:
    """The problem with a checkpoint that ``torch.load(weights_only=True)`` would not read.

    torch's own text ends with advice to retry with ``weights_only=False``, which would run
    whatever code the file carries; we never do that and never repeat the advice."""
    import re

    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "Unsupported global" in text:
        what = f" ({found.group(1)})" if found else ""
        return ("cannot read weights: refused, the checkpoint contains Python objects other than tensors"
                f"{what}, which could run code when loaded; sccircuits only loads plain tensors (re-save the "
                "weights as a state dict of tensors where the file is trusted)")
    if "weights_only" in text or isinstance(error, pickle.UnpicklingError):
        return "cannot read weights: not a PyTorch checkpoint of tensors (corrupt or another format)"
    first = text.splitlines()[0][:200] if text else "corrupt file"
    return f"cannot read weights ({type(error).__name__}: {first})"
