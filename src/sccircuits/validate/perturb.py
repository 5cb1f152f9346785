"""Reading a CRISPRi Perturb-seq screen (Replogle 2022 layout) in row chunks.

Layout: an ``.h5ad`` file, one row per cell, counts in ``X`` (dense, or CSR sparse); the
knocked-down gene of each cell in an obs column (``gene`` in Replogle 2022, controls labelled
``non-targeting``); optionally a cell-line column; gene symbols in ``var_names`` or a var
column (``gene_name`` in Replogle 2022, whose var_names are Ensembl ids).

The screen is opened in anndata backed mode (obs and var in memory, ``X`` on disk) and ``X``
is read in row chunks. Only cells of the knockdowns we need (predicted source genes) and of the
controls are used; chunks without such cells are not read at all. Each cell is library-size
normalised with its FULL row total (all genes) to counts per ``scale`` (CP10k by default), and
per-(cell line, knockdown) sums of the normalised values of the requested genes are
accumulated in float64, so memory is O(groups x genes), never O(cells x genes).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

SYMBOL_COLUMNS = ("gene_name", "gene_symbols", "gene_symbol", "symbol", "feature_name")
ALL_CELLS_LINE = "all"


@dataclasses.dataclass
class Screen:
    """An opened screen: backed AnnData plus per-cell target / cell-line codes and gene symbols."""

    path: Path
    adata: object
    targets: pd.Index  # distinct target labels (categories)
    target_codes: np.ndarray  # (n_cells,) int, -1 for missing
    lines: pd.Index  # distinct cell lines
    line_codes: np.ndarray  # (n_cells,) int
    symbols: np.ndarray  # (n_vars,) gene symbols (str)
    control_label: str

    @property
    def n_cells(self) -> int:
        return int(self.target_codes.size)


def _codes(values) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and categories of an obs column (NaN -> -1), without per-cell strings."""
    cat = values if isinstance(values.dtype, pd.CategoricalDtype) else pd.Categorical(values)
    cat = pd.Categorical(cat)
    return np.asarray(cat.codes, dtype=np.int64), pd.Index(cat.categories.astype(str))


def _few(labels, n: int = 8) -> str:
    labels = [str(x) for x in labels]
    hint = [x for x in labels if any(w in x.lower() for w in ("non", "control", "ctrl", "safe", "nt"))]
    shown = (hint + [x for x in labels if x not in hint])[:n]
    more = f", ... ({len(labels)} labels)" if len(labels) > n else ""
    return ", ".join(repr(x) for x in shown) + more


def open_screen(path: str | os.PathLike, target_column: str = "gene", control_label: str = "non-targeting",
                cell_line_column: str | None = None, gene_column: str | None = None) -> Screen:
    """Open a screen in backed mode and check the columns, with one-line errors.

    ``cell_line_column`` None: use obs ``cell_line`` when present, else treat the screen as one
    cell line named ``"all"``; a column named explicitly must exist. ``gene_column`` None: use
    the first of gene_name / gene_symbols / symbol / feature_name present in var when
    var_names look like Ensembl ids, else var_names.
    """
    from ..data import looks_like_ensembl, read_cells

    path = Path(path)
    adata = read_cells(path, backed=True)
    obs = adata.obs
    if target_column not in obs.columns:
        raise InputError(path, f"no obs column '{target_column}' with the knocked-down gene "
                               f"(obs columns: {', '.join(map(str, obs.columns)) or 'none'}); use --target-column")
    target_codes, targets = _codes(obs[target_column])
    if control_label not in targets:
        raise InputError(path, f"control label '{control_label}' not found in obs['{target_column}'] "
                               f"(labels present: {_few(targets)}); use --control-label")
    if cell_line_column is None and "cell_line" in obs.columns:
        cell_line_column = "cell_line"
    if cell_line_column is not None:
        if cell_line_column not in obs.columns:
            raise InputError(path, f"no obs column '{cell_line_column}' with the cell line "
                                   f"(obs columns: {', '.join(map(str, obs.columns))}); use --cell-line-column")
        line_codes, lines = _codes(obs[cell_line_column])
    else:
        line_codes, lines = np.zeros(target_codes.size, dtype=np.int64), pd.Index([ALL_CELLS_LINE])
    var_names = np.asarray(adata.var_names.astype(str))
    if gene_column is None and looks_like_ensembl(var_names):
        gene_column = next((c for c in SYMBOL_COLUMNS if c in adata.var.columns), None)
    if gene_column is not None:
        if gene_column not in adata.var.columns:
            raise InputError(path, f"no var column '{gene_column}' with gene symbols "
                                   f"(var columns: {', '.join(map(str, adata.var.columns)) or 'none'})")
        symbols = np.asarray(adata.var[gene_column].astype(str))
    else:
        symbols = var_names
    x = adata.X
    if x is None:
        raise InputError(path, "no expression matrix in X")
    if getattr(x, "format", None) == "csc":
        raise InputError(path, "X is stored column-compressed (CSC); row-chunked reading needs CSR or dense "
                               "(convert once: adata.X = adata.X.tocsr())")
    return Screen(path, adata, targets, target_codes, lines, line_codes, symbols, control_label)


@dataclasses.dataclass
class PseudoBulk:
    """Per-(cell line, target) mean normalised expression of selected genes."""

    groups: pd.DataFrame  # cell_line, target, n_cells (one row per group with >= 1 cell)
    means: np.ndarray  # (n_groups, n_genes) float64, mean of scale * x / row total
    genes: np.ndarray  # (n_genes,) symbols of the columns
    n_empty_cells: int  # used cells with a zero row total (left out)


def dense_chunk_rows(n_vars: int, chunk_size: int, max_bytes: int = 64 << 20) -> int:
    """Rows per chunk for dense X: at most ``chunk_size`` and about ``max_bytes`` of float32."""
    return int(max(1, min(chunk_size, max_bytes // max(1, 4 * n_vars))))


def pseudobulk(screen: Screen, knockdowns, gene_cols: np.ndarray, chunk_size: int = 5000,
               scale: float = 1e4, normalize: bool = True, progress: bool = True) -> PseudoBulk:
    """Mean library-size-normalised expression per (cell line, target) for ``knockdowns`` + control.

    ``gene_cols`` are var indices of the genes to keep. Cells whose target is neither a
    requested knockdown nor the control are skipped (their chunks are never read when no
    requested cell is in them). With ``normalize`` False the values are used as they are.
    """
    import h5py
    from tqdm.auto import tqdm

    wanted = pd.Index([screen.control_label, *[k for k in pd.unique(np.asarray(knockdowns, dtype=object))
                                                 if k != screen.control_label]])
    rel = wanted.get_indexer(screen.targets)  # category -> wanted index or -1
    tcode = screen.target_codes
    rel_cell = np.where(tcode >= 0, rel[np.maximum(tcode, 0)], -1)
    n_rel = len(wanted)
    # group = (cell line, wanted target); -1 for cells we do not need (or without a line label)
    group = np.where((rel_cell >= 0) & (screen.line_codes >= 0), screen.line_codes * n_rel + rel_cell, -1)
    n_groups = len(screen.lines) * n_rel
    gene_cols = np.asarray(gene_cols, dtype=np.int64)
    all_cols = gene_cols.size == screen.symbols.size and np.array_equal(gene_cols, np.arange(gene_cols.size))
    sums = np.zeros((n_groups, gene_cols.size), dtype=np.float64)
    counts = np.zeros(n_groups, dtype=np.int64)
    n_empty = 0
    X = screen.adata.X
    dense = isinstance(X, (h5py.Dataset, np.ndarray))
    step = dense_chunk_rows(screen.symbols.size, chunk_size) if dense else chunk_size
    starts = range(0, screen.n_cells, step)
    for start in tqdm(starts, desc="reading screen", unit="chunk", disable=not progress):
        gid = group[start:start + step]
        sel = np.flatnonzero(gid >= 0)
        if sel.size == 0:
            continue
        block = X[start:start + step]
        block = sp.csr_matrix(block) if not dense else np.asarray(block)
        block = block[sel]
        total = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
        ok = total > 0
        n_empty += int((~ok).sum())
        w = np.where(ok, scale / np.where(ok, total, 1.0), 0.0) if normalize else ok.astype(np.float64)
        if not all_cols:
            block = block[:, gene_cols]
        g = sp.csr_matrix((w, (gid[sel], np.arange(sel.size))), shape=(n_groups, sel.size))
        prod = g @ block
        sums += prod.toarray() if sp.issparse(prod) else np.asarray(prod)
        counts += np.bincount(gid[sel][ok], minlength=n_groups)
    present = np.flatnonzero(counts > 0)
    groups = pd.DataFrame({"cell_line": np.asarray(screen.lines, dtype=object)[present // n_rel],
                           "target": np.asarray(wanted, dtype=object)[present % n_rel],
                           "n_cells": counts[present]})
    means = sums[present] / counts[present, None]
    return PseudoBulk(groups, means, screen.symbols[gene_cols], n_empty)
