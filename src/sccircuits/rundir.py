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

Every stage works inside :meth:`RunDir.hold` (an exclusive lock on the run directory: a second
command on the same run fails at once with a message naming the holder), calls
:meth:`RunDir.begin_stage` with its config and input fingerprints, writes its files, then
:meth:`RunDir.complete_stage` with the list of outputs and metrics. The manifest entry saying
``complete`` is written last, after the tables, from what *this* command began; a stage whose
status is not ``complete`` (``running``, ``failed``, ``interrupted``) is unfinished and readers
must not trust its files. Writes are atomic (temporary file + rename) and created with the
permissions the umask gives. Inputs are identified by :func:`content_fingerprint` (size and
hash of the bytes, not the path), so an input overwritten in place is never mistaken for the
one a checkpoint was computed from.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .config import to_dict
from .errors import InputError, Interrupted, SCCircuitsError

MANIFEST = "manifest.json"
RUN_LOCK = ".run.lock"
_BOOKKEEPING = {MANIFEST, ".manifest.lock", "plan.json"}
"""Files that describe work but are no work themselves (a run dir holding only these is empty)."""


class RunLockedError(SCCircuitsError):
    """Another command holds the run directory (its pid, host, command and start are named)."""


# ------------------------------------------------------------------------------ files
def _umask() -> int:
    """The process umask, read without changing it where /proc allows (threads may be writing)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def temp_path(final: str | os.PathLike) -> Path:
    """A new empty temporary file beside ``final`` (to be renamed onto it), created with the mode
    an ordinary ``open(final, "w")`` would get (0666 minus the umask, not mkstemp's 0600)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library that picks its own mode (safetensors: 0600) the mode an
    ordinary ``open(path, "w")`` would have given it."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never half."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY)
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


# ------------------------------------------------------------------------------ fingerprints
_FULL_HASH_BYTES = 64 * 2**20
_EDGE_BYTES = 4 * 2**20
_SAMPLE_BYTES = 256 * 2**10
_SAMPLES = 64


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"SIZE:HASH"`` of a file's bytes (independent of its path and modification time).

    Files up to 64 MiB are hashed whole; larger ones (checkpoints, big .h5ad) by their size,
    first and last 4 MiB and 64 evenly spaced 256 KiB blocks, so a multi-GB file costs about
    24 MiB of reading. An edit of a large file that keeps its size and touches none of those
    blocks goes unnoticed; any rewrite by a training or export tool changes them.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.sha256(str(size).encode())
        with open(path, "rb") as fh:
            if size <= _FULL_HASH_BYTES:
                for chunk in iter(lambda: fh.read(2**20), b""):
                    h.update(chunk)
            else:
                step = (size - 2 * _EDGE_BYTES) // (_SAMPLES + 1)
                spans = [(0, _EDGE_BYTES), *((_EDGE_BYTES + (i + 1) * step, _SAMPLE_BYTES) for i in range(_SAMPLES)),
                         (size - _EDGE_BYTES, _EDGE_BYTES)]
                for offset, n in spans:
                    fh.seek(offset)
                    h.update(fh.read(n))
    except OSError as e:
        raise InputError(path, f"cannot read to fingerprint it ({e.strerror or type(e).__name__})") from None
    return f"{size}:{h.hexdigest()[:32]}"


def content_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a file, or of a directory's regular files (names relative to it and
    :func:`file_fingerprint` of each; hidden files such as locks and temporaries skipped)."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    if not path.is_dir():
        raise InputError(path, "not found")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        h.update(f"{f.relative_to(path).as_posix()}={file_fingerprint(f)}\n".encode())
    return "dir:" + h.hexdigest()[:32]


def portable_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as recorded in shareable files: relative to ``base`` (a run directory) so that it
    names no user's home and still resolves from the run directory (:func:`resolve_recorded`)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base))


def resolve_recorded(recorded: str | None, base: str | os.PathLike) -> Path | None:
    """A path written by :func:`portable_path` (or an absolute one from older runs), as a path
    usable from the current directory."""
    if recorded is None:
        return None
    return Path(os.path.normpath(Path(base) / recorded))


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
            "numpy": ver("numpy"), "transformers": ver("transformers"),
            "platform": f"{platform.system()} {platform.machine()}"}  # no kernel/libc build string


_HELD: dict[str, "_Hold"] = {}
"""Run locks this process holds, by resolved path (the only process-wide state: an flock belongs
to an open file, so a stage called inside another one of the same process must reuse it)."""


class _Hold:
    def __init__(self, files: list, mode: str):
        self.files, self.mode, self.depth = files, mode, 1
        self.begun: dict[str, str] = {}
        """Stages begun (by any RunDir object of this path) and not completed: name -> start."""


def _holder_info(stage: str | None) -> dict:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage, "command": " ".join(argv),
            "started": _now()}


def _describe_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        h = json.loads(path.read_text() or "{}")
        if h:
            what = f"{h['stage']}, " if h.get("stage") else ""
            return f"pid {h.get('pid')} on {h.get('host')} ({what}command {h.get('command')!r}, started {h.get('started')})"
    return "another process (no holder details recorded)"


def _try_lock(path: Path, exclusive: bool):
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _write_holder(fh, command: str | None) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(_holder_info(command)))
    fh.flush()


def _release(key: str) -> None:
    held = _HELD[key]
    held.depth -= 1
    if held.depth > 0:
        return
    del _HELD[key]
    for fh in reversed(held.files):
        with contextlib.suppress(OSError):
            if held.mode == "exclusive" or fh is not held.files[0]:
                fh.seek(0)
                fh.truncate()  # no stale holder details (nor the user's paths) left behind
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class RunDir:
    """A run directory (created on demand) and its manifest."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        self.created = False
        """True when this object created the directory (a failed command then removes it if empty)."""
        self._begun: dict[str, dict] = {}
        self._implicit: set[str] = set()
        if not create and not (self.path / MANIFEST).is_file():
            raise InputError(self.path, "not a sccircuits run directory (no manifest.json)")
        if create:
            if self.path.exists() and not self.path.is_dir():
                raise InputError(self.path, "exists and is not a directory")
            self.created = not self.path.exists()
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

    # -- the run lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, stage: str | None = None, shard: str | None = None) -> Iterator["RunDir"]:
        """Hold the run directory for one command (an exclusive ``flock`` on ``RUN/.run.lock``).

        A second command on the same run fails at once with :class:`RunLockedError` naming the
        holder (pid, host, command, start time). ``shard`` (e.g. ``"trace-shard-0of3"``): the
        shards of one trace may run side by side, so they share the run lock and hold their own
        shard lock exclusively. Nested holds in one process are reentrant. When the body raises,
        every stage this object began and did not complete is marked ``failed`` (or
        ``interrupted`` on Ctrl-C) with the reason, and a directory this object created that
        holds no work is removed.
        """
        key = str(self.path.resolve())
        held = _HELD.get(key)
        if held is not None:
            held.depth += 1
        else:
            held = _HELD[key] = self._acquire(stage, shard)
        try:
            yield self
        except BaseException as e:
            if held.depth == 1:
                self._record_failure(e, held.begun)
            raise
        finally:
            _release(key)

    def _acquire(self, command: str | None, shard: str | None) -> _Hold:
        run_lock = self.path / RUN_LOCK
        if shard is None:
            fh = _try_lock(run_lock, exclusive=True)
            if fh is None:
                raise RunLockedError(f"{self.path}: in use by {self._holders()}; wait for it to finish, or "
                                     "use another run directory")
            _write_holder(fh, command)
            return _Hold([fh], "exclusive")
        fh = _try_lock(run_lock, exclusive=False)
        if fh is None:
            raise RunLockedError(f"{self.path}: in use by {_describe_holder(run_lock)}; wait for it to finish")
        own = self.path / f"{RUN_LOCK}.{shard}"
        sh = _try_lock(own, exclusive=True)
        if sh is None:
            fh.close()
            raise RunLockedError(f"{self.path}: {shard} is already running ({_describe_holder(own)})")
        _write_holder(sh, command)
        return _Hold([fh, sh], "shared")

    def _holders(self) -> str:
        """Who holds the run lock: running shards (their own locks are held) or the one command."""
        shards = []
        for f in sorted(self.path.glob(f"{RUN_LOCK}.*")):
            fh = _try_lock(f, exclusive=False)
            if fh is None:
                shards.append(_describe_holder(f))
            else:
                fh.close()
        return "; ".join(shards) if shards else _describe_holder(self.path / RUN_LOCK)

    def _record_failure(self, error: BaseException, begun: dict[str, str]) -> None:
        with contextlib.suppress(Exception):
            if begun:
                status = "interrupted" if isinstance(error, (KeyboardInterrupt, Interrupted)) else "failed"
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__

                def fn(m: dict) -> None:
                    for n, started in begun.items():
                        st = m["stages"].get(n)
                        if st is not None and st.get("status") == "running" and st.get("started") == started:
                            st["status"], st["error"] = status, reason[:500]

                self.update_manifest(fn)
            if self.created and not self._holds_work():
                shutil.rmtree(self.path, ignore_errors=True)

    def _holds_work(self) -> bool:
        for f in self.path.rglob("*"):
            if f.is_file() and f.name not in _BOOKKEEPING and not f.name.startswith(".") \
                    and not (f.name.startswith("trace_meta") and f.suffix == ".json"):
                return True
        return False

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

    def stamps(self, *names: str) -> dict[str, str | None]:
        """Identity of the current completion of each named stage (None if not complete): a stage
        records its upstream stamps at :meth:`begin_stage` (``upstream=``) so that a later rerun
        of an upstream stage makes it stale (:meth:`is_current`)."""
        stages = self.manifest["stages"]
        return {n: (stages.get(n) or {}).get("id") if (stages.get(n) or {}).get("status") == "complete" else None
                for n in names}

    def recorded_path(self, stage: str, key: str) -> Path | None:
        """A path a stage recorded (e.g. extract's ``data_path``), usable from the current
        directory: stored relative to the run (so that a run moved together with its inputs, or
        shared, names no user's directories), else as the user gave it (``KEY_as_given``: a run
        copied elsewhere still finds inputs given by absolute path)."""
        st = self.stage(stage) or {}
        rel = resolve_recorded(st.get(key), self.path)
        given = st.get(f"{key}_as_given")
        if (rel is None or not rel.exists()) and given:
            return Path(given)
        return rel

    def is_current(self, name: str, config: Any = None) -> bool:
        """True when ``name`` completed (with ``config``, if given) and none of the stages it was
        computed from has been rerun since."""
        st = self.stage(name)
        if not st or st.get("status") != "complete":
            return False
        if config is not None:
            cfg = to_dict(config) if hasattr(config, "__dataclass_fields__") else dict(config)
            if st.get("config") != cfg:
                return False
        upstream = st.get("upstream") or {}
        return not upstream or self.stamps(*upstream) == upstream

    def begin_stage(self, name: str, config: Any, **extra: Any) -> None:
        """Mark a stage as running with its config (a dataclass or dict) and ``extra`` facts
        (inputs, fingerprints). The previous entry stops counting as complete from now on."""
        cfg = to_dict(config) if hasattr(config, "__dataclass_fields__") else dict(config)
        key = str(self.path.resolve())
        if key not in _HELD:  # a stage run outside hold(): lock the run until complete_stage
            _HELD[key] = self._acquire(name, None)
            self._implicit.add(name)
        entry = {"status": "running", "config": cfg, "started": _now(), "environment": environment(), **extra}

        def fn(m: dict) -> None:
            old = m["stages"].get(name, {})
            m["stages"][name] = dict(entry)
            if old.get("status") in ("running", "failed", "interrupted"):  # a resumed stage keeps its history
                m["stages"][name]["resumed_from"] = old.get("resumed_from", old.get("started"))

        m = self.update_manifest(fn)
        self._begun[name] = dict(m["stages"][name])
        _HELD[key].begun[name] = m["stages"][name]["started"]

    def complete_stage(self, name: str, outputs: dict[str, str] | list[str] | None = None,
                       metrics: dict | None = None) -> None:
        """Mark a stage complete, recording its outputs (paths relative to the run) and metrics.

        Call it last, once every output is on disk. The entry written is the one this object
        began (config, inputs, fingerprints), so it describes the files this command wrote even
        if another process changed the manifest meanwhile."""
        begun = self._begun.get(name)

        def fn(m: dict) -> None:
            st = m["stages"].setdefault(name, {})
            if begun is not None:
                st.clear()
                st.update(begun)
            st["status"] = "complete"
            st["finished"] = _now()
            st["id"] = uuid.uuid4().hex[:16]  # what later stages record as their upstream
            st.pop("error", None)
            if outputs is not None:
                st["outputs"] = outputs
            if metrics is not None:
                st["metrics"] = metrics

        m = self.update_manifest(fn)
        self._begun[name] = dict(m["stages"][name])
        held = _HELD.get(str(self.path.resolve()))
        if held is not None:
            held.begun.pop(name, None)
        if name in self._implicit:
            self._implicit.discard(name)
            _release(str(self.path.resolve()))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
