"""The run directory and its manifest.

A run directory holds everything one condition (one model, one set of cells) produces::

    RUN/
      manifest.json          stages run, their configs, outputs, metrics and status
      activations/           extract
      saes/layerNN/          train-sae (SAELens layout: cfg.json + sae_weights.safetensors)
      annotation/            annotate
      trace/                 trace (edges.parquet, ...)
      analysis/              analyze
      validation/            validate

Every stage calls :meth:`RunDir.begin_stage` with its config, writes its files, then
:meth:`RunDir.complete_stage` with the list of outputs and metrics. A stage whose status is
not ``complete`` is unfinished: readers must not trust its files. Writes are atomic
(temporary file + rename) and the manifest is updated under a file lock, so two processes
working on different stages of one run do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .config import to_dict
from .errors import InputError

MANIFEST = "manifest.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def atomic_write_parquet(path: str | os.PathLike, df) -> None:
    """Atomically write a DataFrame as parquet (no index)."""
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_npy(path: str | os.PathLike, arr) -> None:
    """Atomically write a numpy array as .npy (never pickled)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with a one-line error naming the file if it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return to_dict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def environment() -> dict:
    """Versions that produced a result (stored with every stage)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:  # metadata only: importing torch here would cost seconds
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"sccircuits": __version__, "python": platform.python_version(), "torch": ver("torch"),
            "numpy": ver("numpy"), "transformers": ver("transformers"), "platform": platform.platform()}


class RunDir:
    """A run directory (created on demand) and its manifest."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if not create and not (self.path / MANIFEST).is_file():
            raise InputError(self.path, "not a sccircuits run directory (no manifest.json)")
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            if not (self.path / MANIFEST).exists():
                with self._locked():
                    if not (self.path / MANIFEST).exists():
                        atomic_write_json(self.path / MANIFEST, {"sccircuits_version": __version__,
                                                                 "created": _now(), "stages": {}})

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel

    # -- manifest -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".manifest.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)

    def update_manifest(self, fn) -> dict:
        """Apply ``fn(manifest) -> None`` under the lock and save atomically."""
        with self._locked():
            m = read_json(self.path / MANIFEST)
            fn(m)
            atomic_write_json(self.path / MANIFEST, m)
            return m

    def stage(self, name: str) -> dict | None:
        """The manifest entry of a stage, or None if it never started."""
        return self.manifest["stages"].get(name)

    def is_complete(self, name: str) -> bool:
        st = self.stage(name)
        return bool(st) and st.get("status") == "complete"

    def require(self, name: str) -> dict:
        """The entry of a completed stage, or a clear error telling which command to run."""
        st = self.stage(name)
        if not st or st.get("status") != "complete":
            raise InputError(self.path, f"stage '{name}' has not completed in this run; run `sccircuits {name}` first")
        return st

    def begin_stage(self, name: str, config: Any, **extra: Any) -> None:
        """Mark a stage as running with its config (a dataclass or dict)."""
        cfg = to_dict(config) if hasattr(config, "__dataclass_fields__") else dict(config)

        def fn(m: dict) -> None:
            old = m["stages"].get(name, {})
            m["stages"][name] = {"status": "running", "config": cfg, "started": _now(),
                                 "environment": environment(), **extra}
            if old.get("status") == "running":  # a resumed stage keeps its history
                m["stages"][name]["resumed_from"] = old.get("started")

        self.update_manifest(fn)

    def complete_stage(self, name: str, outputs: dict[str, str] | list[str] | None = None,
                       metrics: dict | None = None) -> None:
        """Mark a stage complete, recording its outputs (paths relative to the run) and metrics."""

        def fn(m: dict) -> None:
            st = m["stages"].setdefault(name, {})
            st["status"] = "complete"
            st["finished"] = _now()
            if outputs is not None:
                st["outputs"] = outputs
            if metrics is not None:
                st["metrics"] = metrics

        self.update_manifest(fn)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
