"""Residual activations at gene positions: extraction to an on-disk store, and reading it back.

``extract`` runs the model over the chosen cells (length-bucketed batches) and streams the
output of each chosen layer at every gene position into shards, so memory holds one batch, never
the whole array. Layout of ``RUN/activations/``::

    plan.json                    what will be extracted (config, cells, shards); fixed at start
    layerNN/shard00000.npy       (rows, d_model) float16/float32 residuals of layer NN
    positions/shard00000_cell.npy   (rows,) int64 row of the cell in the input .h5ad
    positions/shard00000_token.npy  (rows,) int64 token id at that position
    sums/shard00000.npy          (n_layers, d_model) float64 column sums of the stored values
    done/shard00000.json         written last: the shard is complete (resume skips it)
    means.npy                    (n_layers, d_model) float64 per-layer mean   } written when
    cells.npy                    int64 rows of the extracted cells            } every shard
    genes.parquet                token_id, gene_id, symbol of tokens seen     } is done
    store.json                   layers, d_model, dtype, counts, shard sizes  }

Every file is written under a temporary name and renamed, and a shard counts only once its
``done`` marker exists, so an interrupted run resumes where it stopped and ends with a store
byte-identical to an uninterrupted one (same config, same machine).

Read it with :class:`ActivationStore`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .config import apply_compat, check, compat_option, option, parse_layers, to_dict
from .errors import InputError
from .rundir import RunDir, atomic_write_json, content_fingerprint, portable_path, read_json, temp_path

STAGE = "extract"
ACT_DIR = "activations"


# =============================================================================== options
@dataclasses.dataclass
class ExtractConfig:
    """Options of ``sccircuits extract``."""

    layers: str = option("all", "layers to keep: 'all' or comma-separated 0-based block indices, e.g. '0,5,11'")
    n_cells: int | None = option(None, "number of cells; without --sample-seed the first N cells in file order")
    sample_seed: int | None = option(None, "seed of a random sample of --n-cells cells (kept in file order)")
    stratify_by: str | None = option(None, "obs column: sample cells proportionally within its groups")
    dtype: str = option("float16", "storage dtype of the activations: float16 or float32")
    compat: str = option("none", "none, or 'reference' for the published study's tokenization")
    tokenization: str | None = compat_option("official", "reference", "official tokenization, or 'reference' (published scripts)")
    batch_size: int = option(8, "cells per forward pass (cells of similar length are batched together)")
    device: str = option("cpu", "torch device of the model")
    model_dtype: str = option("float32", "dtype of the model weights during the forward pass")
    shard_mb: float = option(256.0, "target size of one layer's shard in MiB (a whole number of batches); "
                                 "the unit of resume: a killed run redoes at most one shard")
    gene_column: str | None = option(None, "var column with gene ids/symbols for the tokenizer (default var_names)")
    counts_layer: str | None = option(None, "AnnData layer holding raw counts (default X)")
    max_length: int | None = option(None, "tokens per cell for the tokenizer (default: the model's / reference limit)")

    def __post_init__(self) -> None:
        parse_layers(self.layers, "layers", allow_all=True)  # syntax check
        apply_compat(self)
        check(self.n_cells is None or self.n_cells > 0, "n_cells must be positive")
        check(self.dtype in ("float16", "float32"), f"dtype must be float16 or float32, got {self.dtype!r}")
        check(self.tokenization in ("official", "reference"),
              f"tokenization must be official or reference, got {self.tokenization!r}")
        check(self.batch_size > 0, "batch_size must be positive")
        check(self.shard_mb > 0, "shard_mb must be positive")
        check(self.stratify_by is None or self.n_cells is not None, "--stratify-by needs --n-cells")
        check(self.model_dtype in ("float32", "float16", "bfloat16"),
              f"model_dtype must be float32, float16 or bfloat16, got {self.model_dtype!r}")


# =============================================================================== cell choice
def select_cells(n_obs: int, n_cells: int | None, seed: int | None = None,
                 groups: Sequence | None = None) -> np.ndarray:
    """Rows of the cells to extract, in file order.

    ``n_cells`` None: all cells. No seed and no groups: the first ``n_cells`` rows. With a seed:
    a uniform sample without replacement. With ``groups`` (one label per row): a stratified
    sample, each group getting ``n_cells * size / n_obs`` cells (largest remainders get the
    rest), drawn with ``seed`` (0 if None).
    """
    if n_cells is None or n_cells >= n_obs:
        return np.arange(n_obs, dtype=np.int64)
    if groups is None:
        if seed is None:
            return np.arange(n_cells, dtype=np.int64)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n_obs, size=n_cells, replace=False)).astype(np.int64)
    labels = np.asarray(groups).astype(str)
    if labels.shape != (n_obs,):
        raise ValueError("groups must have one label per cell")
    uniq, inv, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n_cells * sizes / n_obs
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((np.arange(len(uniq)), -(quota - take)))  # largest remainder, ties by name
    take[order[: n_cells - int(take.sum())]] += 1
    rng = np.random.default_rng(0 if seed is None else seed)
    chosen = [rng.choice(np.flatnonzero(inv == g), size=int(take[g]), replace=False) for g in range(len(uniq))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# =============================================================================== plan
def plan_shards(n_genes_per_cell: np.ndarray, batches: list[list[int]], rows_per_shard: int) -> list[dict]:
    """Group consecutive batches into shards of at least ``rows_per_shard`` gene positions
    (the last may be smaller). Returns [{"batches": [[cell,...], ...], "rows": n}, ...]."""
    shards: list[dict] = []
    cur: list[list[int]] = []
    rows = 0
    for b in batches:
        cur.append(b)
        rows += int(sum(int(n_genes_per_cell[i]) for i in b))
        if rows >= rows_per_shard:
            shards.append({"batches": cur, "rows": rows})
            cur, rows = [], 0
    if cur:
        shards.append({"batches": cur, "rows": rows})
    return shards


def _shard_name(i: int) -> str:
    return f"shard{i:05d}"


def _layer_dir(layer: int) -> str:
    return f"layer{layer:02d}"


# =============================================================================== extraction
def extract(run: str | os.PathLike | RunDir, model, data, cfg: ExtractConfig | None = None, *,
            overwrite: bool = False, on_shard_done: Callable[[int], None] | None = None,
            progress: bool = True) -> "ActivationStore":
    """Extract residual activations of ``model`` on the cells in ``data`` into ``RUN/activations``.

    ``model``: a model directory (loaded with :func:`sccircuits.models.load_model`) or an
    adapter. ``data``: an .h5ad path or an AnnData. Resumes an interrupted extraction with the
    same options; a finished one with the same options is returned as is; different options over
    an existing store need ``overwrite=True``. ``on_shard_done(i)`` is called after shard ``i``
    is safely on disk (used by tests to interrupt).
    """
    cfg = cfg or ExtractConfig()
    run = run if isinstance(run, RunDir) else RunDir(run)
    with run.hold(STAGE):
        return _extract(run, model, data, cfg, overwrite, on_shard_done, progress)


def _extract(run: RunDir, model, data, cfg: ExtractConfig, overwrite: bool,
             on_shard_done: Callable[[int], None] | None, progress: bool) -> "ActivationStore":
    import torch
    from tqdm.auto import tqdm

    adapter, model_path, model_fp = _resolve_model(model, cfg)
    adata, data_path, data_fp = _resolve_data(data)
    layers = parse_layers(cfg.layers, "layers", adapter.n_layers, allow_all=True)

    cells = _choose_cells(adata, cfg, data_path)
    sub = adata[cells].copy() if len(cells) < adata.n_obs else adata
    tok = adapter.tokenize(sub, mode=cfg.tokenization, **_tokenize_options(cfg, data_path))
    if len(tok) == 0:
        raise InputError(data_path, "no cell could be tokenized (no gene matched the model's vocabulary)")
    orig_rows = cells[np.asarray(tok.cell_index, dtype=np.int64)]
    n_genes = np.array([int(np.sum(m)) for m in tok.gene_mask], dtype=np.int64)
    batches = _length_batches(tok, cfg.batch_size)
    itemsize = np.dtype(cfg.dtype).itemsize
    rows_per_shard = max(1, int(cfg.shard_mb * 2**20) // (adapter.d_model * itemsize))
    shards = plan_shards(n_genes, batches, rows_per_shard)

    plan = {"config": to_dict(cfg), "model_path": _recorded(model_path, run), "model_fingerprint": model_fp,
            "model_kind": getattr(adapter, "kind", None), "data_path": _recorded(data_path, run),
            "data_fingerprint": data_fp, "layers": layers, "d_model": int(adapter.d_model),
            "n_layers_model": int(adapter.n_layers), "n_cells": int(len(tok)),
            "n_skipped": int(getattr(tok, "n_skipped", 0)), "tokenizer_info": _jsonable(getattr(tok, "info", {})),
            "cell_rows_sha256": hashlib.sha256(orig_rows.tobytes()).hexdigest(),
            "n_positions": int(n_genes.sum()), "shards": [{"rows": s["rows"], "batches": s["batches"]} for s in shards]}
    act = run / ACT_DIR
    if _prepare_dir(run, act, plan, overwrite):
        return ActivationStore(run)
    run.begin_stage(STAGE, cfg, model_path=plan["model_path"], data_path=plan["data_path"],
                    model_path_as_given=model_path, data_path_as_given=data_path,
                    fingerprints={"model": model_fp, "data": data_fp})

    todo = [i for i in range(len(shards)) if not _shard_done(act, i, layers)]
    bar = tqdm(total=int(len(tok)), desc="extract (cells)", unit="cell", disable=not progress,
               initial=int(sum(len(b) for i, s in enumerate(shards) if i not in todo for b in s["batches"])))
    with torch.inference_mode():
        for i in todo:
            _write_shard(adapter, tok, act, i, shards[i], layers, orig_rows, cfg.dtype, bar)
            if on_shard_done is not None:
                on_shard_done(i)
    bar.close()
    store_info = _finalise(act, adapter, plan, orig_rows, tok)
    run.complete_stage(STAGE, outputs=[ACT_DIR],
                       metrics={"n_cells": store_info["n_cells"], "n_positions": store_info["n_positions"],
                                "layers": layers, "d_model": store_info["d_model"],
                                "n_skipped_cells": plan["n_skipped"],
                                "mean_genes_per_cell": float(n_genes.mean())})
    return ActivationStore(run)


def _resolve_model(model, cfg: ExtractConfig):
    if isinstance(model, (str, os.PathLike)):
        from .models import load_model

        adapter = load_model(model, device=cfg.device, dtype=cfg.model_dtype)
        return adapter, str(model), content_fingerprint(model)
    path = getattr(model, "path", None)
    return model, str(path or type(model).__name__), None if path is None else content_fingerprint(path)


def _resolve_data(data):
    if isinstance(data, (str, os.PathLike)):
        from .data import read_cells

        return read_cells(data), str(data), content_fingerprint(data)
    return data, "<AnnData in memory>", None


def _recorded(path: str, run: RunDir) -> str:
    """A user path as stored in plan.json / the manifest: relative to the run directory."""
    return portable_path(path, run.path) if Path(path).exists() else path


_LOCATION_KEYS = ("model_path", "data_path")
"""Where the inputs were: not part of what was extracted (their fingerprints are)."""


def _plan_differences(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(_LOCATION_KEYS))
    out = [k for k in keys if old.get(k) != new.get(k) and k != "config"]
    oc, nc = old.get("config") or {}, new.get("config") or {}
    return [f"option {k}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)] + out


def _choose_cells(adata, cfg: ExtractConfig, data_path: str) -> np.ndarray:
    groups = None
    if cfg.stratify_by is not None:
        if cfg.stratify_by not in adata.obs.columns:
            raise InputError(data_path, f"no obs column '{cfg.stratify_by}' to stratify by "
                                        f"(columns: {', '.join(map(str, adata.obs.columns)) or 'none'})")
        groups = adata.obs[cfg.stratify_by].to_numpy()
    if cfg.n_cells is not None and cfg.n_cells > adata.n_obs:
        raise InputError(data_path, f"--n-cells {cfg.n_cells} but the file has only {adata.n_obs} cells")
    return select_cells(adata.n_obs, cfg.n_cells, cfg.sample_seed, groups)


def _tokenize_options(cfg: ExtractConfig, data_path: str) -> dict:
    """Keyword options for ``adapter.tokenize`` (only those the user set, plus the file name)."""
    opts: dict = {"source": data_path}
    for key, val in (("gene_column", cfg.gene_column), ("layer", cfg.counts_layer), ("max_length", cfg.max_length)):
        if val is not None:
            opts[key] = val
    return opts


def _length_batches(tok, batch_size: int) -> list[list[int]]:
    from .models.base import length_batches

    return [list(b) for b in length_batches(tok, batch_size, bucket=True)]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _prepare_dir(run: RunDir, act: Path, plan: dict, overwrite: bool) -> bool:
    """Create/validate ``act`` for ``plan``. True when an identical finished store exists."""
    plan_file = act / "plan.json"
    if plan_file.is_file():
        old = read_json(plan_file)
        diff = _plan_differences(old, _jsonable(plan))
        same = not diff
        if same and run.is_complete(STAGE) and (act / "store.json").is_file():
            if old != _jsonable(plan):  # inputs moved, same content: record where they are now
                atomic_write_json(plan_file, plan)
            return True
        if not same:
            if not overwrite:
                changed = [{"model_fingerprint": "the model files changed since",
                            "data_fingerprint": "the data file changed since"}.get(k, k) for k in diff]
                raise InputError(act, f"holds activations extracted from other inputs or options ({'; '.join(changed)}); "
                                      "pass --overwrite to replace them (or use another --out run)")
            shutil.rmtree(act)
        else:  # same plan, unfinished: resume (drop stale temporaries)
            for tmp in act.rglob(".*.tmp"):
                tmp.unlink()
    elif act.exists():
        if any(act.iterdir()) and not overwrite:
            raise InputError(act, "exists but has no plan.json; pass --overwrite to replace it")
        shutil.rmtree(act)
    act.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        atomic_write_json(plan_file, plan)
    return False


def _shard_done(act: Path, i: int, layers: list[int]) -> bool:
    name = _shard_name(i)
    files = [act / "done" / f"{name}.json", act / "sums" / f"{name}.npy",
             act / "positions" / f"{name}_cell.npy", act / "positions" / f"{name}_token.npy",
             *[act / _layer_dir(l) / f"{name}.npy" for l in layers]]
    return all(f.is_file() for f in files)


def _save_npy(final: Path, arr: np.ndarray) -> None:
    tmp = temp_path(final)
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    os.replace(tmp, final)


def _write_shard(adapter, tok, act: Path, i: int, shard: dict, layers: list[int], orig_rows: np.ndarray,
                 dtype: str, bar) -> None:
    """Run the shard's batches and write its files (layer arrays filled batch by batch)."""
    import torch

    name, rows = _shard_name(i), shard["rows"]
    d = int(adapter.d_model)
    finals = {l: act / _layer_dir(l) / f"{name}.npy" for l in layers}
    tmps = {l: temp_path(f) for l, f in finals.items()}
    mms = {l: np.lib.format.open_memmap(tmps[l], mode="w+", dtype=np.dtype(dtype), shape=(rows, d)) for l in layers}
    sums = np.zeros((len(layers), d), dtype=np.float64)
    cell_col = np.empty(rows, dtype=np.int64)
    tok_col = np.empty(rows, dtype=np.int64)
    at = 0
    try:
        for idx in shard["batches"]:
            batch = adapter.batch(tok, idx)
            hs = adapter.hidden_states(batch, layers)
            gm = batch.gene_mask.to(torch.bool)
            n = int(gm.sum())
            counts = gm.sum(1).cpu().numpy()
            cell_col[at:at + n] = np.repeat(orig_rows[np.asarray(idx, dtype=np.int64)], counts)
            tok_col[at:at + n] = batch.input_ids[gm].cpu().numpy().astype(np.int64)
            for j, l in enumerate(layers):
                vals = hs[l][gm].to(torch.float32).cpu().numpy().astype(dtype, copy=False)
                mms[l][at:at + n] = vals
                sums[j] += vals.astype(np.float64).sum(0)
            at += n
            bar.update(len(idx))
        if at != rows:
            raise RuntimeError(f"shard {i}: expected {rows} gene positions, got {at} (tokenization changed?)")
        for l in layers:
            mms[l].flush()
        mms.clear()
        for l in layers:
            os.replace(tmps[l], finals[l])
    except BaseException:
        mms.clear()
        for t in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t)
        raise
    _save_npy(act / "positions" / f"{name}_cell.npy", cell_col)
    _save_npy(act / "positions" / f"{name}_token.npy", tok_col)
    _save_npy(act / "sums" / f"{name}.npy", sums)
    atomic_write_json(act / "done" / f"{name}.json", {"rows": rows})


def _finalise(act: Path, adapter, plan: dict, orig_rows: np.ndarray, tok) -> dict:
    """Means, cell list, gene table and store.json from the finished shards."""
    import pandas as pd

    layers = plan["layers"]
    n_shards = len(plan["shards"])
    total = np.zeros((len(layers), plan["d_model"]), dtype=np.float64)
    tokens: set[int] = set()
    for i in range(n_shards):
        total += np.load(act / "sums" / f"{_shard_name(i)}.npy")
        tokens.update(np.unique(np.load(act / "positions" / f"{_shard_name(i)}_token.npy")).tolist())
    n = plan["n_positions"]
    _save_npy(act / "means.npy", total / max(n, 1))
    _save_npy(act / "cells.npy", np.asarray(orig_rows, dtype=np.int64))
    ids, syms = adapter.token_gene_ids(), adapter.token_symbols()
    toks = sorted(tokens)
    genes = pd.DataFrame({"token_id": np.asarray(toks, dtype=np.int64),
                          "gene_id": [str(ids.get(t, t)) for t in toks],
                          "symbol": [str(syms.get(t, ids.get(t, t))) for t in toks]})
    tmp = temp_path(act / "genes.parquet")
    genes.to_parquet(tmp, index=False)
    os.replace(tmp, act / "genes.parquet")
    info = {"format": 1, "layers": layers, "d_model": plan["d_model"], "dtype": plan["config"]["dtype"],
            "n_positions": n, "n_cells": plan["n_cells"], "n_shards": n_shards,
            "shard_rows": [s["rows"] for s in plan["shards"]], "model_path": plan["model_path"],
            "model_kind": plan["model_kind"], "data_path": plan["data_path"],
            "tokenization": plan["config"]["tokenization"]}
    atomic_write_json(act / "store.json", info)
    return info


# =============================================================================== reading
class ActivationStore:
    """Read access to ``RUN/activations`` (only once ``extract`` has completed).

    Rows are gene positions, numbered 0..n_positions-1 in store order (shard by shard); the
    same row number means the same position in every layer.
    """

    def __init__(self, run: str | os.PathLike | RunDir):
        self.run = run if isinstance(run, RunDir) else RunDir(run, create=False)
        self.run.require(STAGE)
        self.path = self.run / ACT_DIR
        info_path = self.path / "store.json"
        if not info_path.is_file():
            raise InputError(self.path, "activation store is incomplete (no store.json); re-run `sccircuits extract`")
        self.info = read_json(info_path)
        self.layers: list[int] = list(self.info["layers"])
        self.d_model: int = int(self.info["d_model"])
        self.n_positions: int = int(self.info["n_positions"])
        self.dtype = np.dtype(self.info["dtype"])
        self.shard_rows = np.asarray(self.info["shard_rows"], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self._means = np.load(self.path / "means.npy")

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.run.path)!r}, layers={self.layers}, d_model={self.d_model}, "
                f"n_positions={self.n_positions})")

    @property
    def n_shards(self) -> int:
        return len(self.shard_rows)

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(self.path, f"layer {layer} was not extracted (layers: {self.layers})")
        return self.layers.index(layer)

    def mean(self, layer: int) -> np.ndarray:
        """Per-layer mean over all positions, float64 (d_model,)."""
        return self._means[self._layer_index(layer)].copy()

    def count(self, layer: int) -> int:
        """Number of positions behind :meth:`mean` (the same for every layer)."""
        self._layer_index(layer)
        return self.n_positions

    def cells(self) -> np.ndarray:
        """Rows (in the input .h5ad) of the extracted cells."""
        return np.load(self.path / "cells.npy")

    def genes(self):
        """DataFrame(token_id, gene_id, symbol) of the tokens present in the store."""
        import pandas as pd

        return pd.read_parquet(self.path / "genes.parquet")

    def shard(self, layer: int, i: int, mmap: bool = True) -> np.ndarray:
        """Shard ``i`` of a layer as stored (memory-mapped by default), (rows, d_model)."""
        self._layer_index(layer)
        return np.load(self.path / _layer_dir(layer) / f"{_shard_name(i)}.npy", mmap_mode="r" if mmap else None)

    def shard_positions(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell_index, token_id) of shard ``i``."""
        name = _shard_name(i)
        return (np.load(self.path / "positions" / f"{name}_cell.npy"),
                np.load(self.path / "positions" / f"{name}_token.npy"))

    def cell_index(self) -> np.ndarray:
        """Cell row of every position, int64 (n_positions,)."""
        return np.concatenate([self.shard_positions(i)[0] for i in range(self.n_shards)])

    def token_ids(self) -> np.ndarray:
        """Token id of every position, int64 (n_positions,)."""
        return np.concatenate([self.shard_positions(i)[1] for i in range(self.n_shards)])

    def iter_batches(self, layer: int, batch_size: int,
                     rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(acts float32 (n, d), cell_index int64 (n,), token_id int64 (n,))`` in store
        order, ``batch_size`` rows at a time (the last batch may be smaller). ``rows``: only these
        global row numbers (sorted internally). Reads one shard at a time."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self._layer_index(layer)
        sel = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if sel is not None and sel.size and (sel[0] < 0 or sel[-1] >= self.n_positions):
            raise IndexError(f"rows out of range 0..{self.n_positions - 1}")
        buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0
        for i in range(self.n_shards):
            lo, hi = self.shard_starts[i], self.shard_starts[i + 1]
            if sel is None:
                local = None
            else:
                a, b = np.searchsorted(sel, [lo, hi])
                if a == b:
                    continue
                local = sel[a:b] - lo
            X = self.shard(layer, i)
            c, t = self.shard_positions(i)
            if local is not None:
                X, c, t = X[local], c[local], t[local]
            for s in range(0, len(c), batch_size):
                part = (np.asarray(X[s:s + batch_size], dtype=np.float32), c[s:s + batch_size], t[s:s + batch_size])
                buf.append(part)
                held += len(part[1])
                while held >= batch_size:
                    out, buf, held = _take(buf, batch_size)
                    yield out
        if held:
            out, buf, held = _take(buf, held)
            yield out


def _take(buf: list, n: int):
    """First ``n`` rows of a list of (X, c, t) chunks -> (batch, remaining chunks, remaining rows)."""
    X = np.concatenate([b[0] for b in buf])
    c = np.concatenate([b[1] for b in buf])
    t = np.concatenate([b[2] for b in buf])
    rest = [] if len(c) == n else [(X[n:], c[n:], t[n:])]
    return (X[:n], c[:n], t[:n]), rest, len(c) - n
