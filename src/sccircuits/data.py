"""Reading cells: AnnData files, raw counts and gene identifiers, with clear errors.

Tokenizers of both models call :func:`counts_matrix` and :func:`gene_identifiers`, so the
rules (where counts come from, what counts as a count) are the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError


def read_cells(path: str | os.PathLike, backed: bool = False):
    """Read an .h5ad file; a missing, unreadable or non-AnnData file is a one-line error."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as e:  # h5py / anndata raise many types for corrupt files
        raise InputError(path, f"cannot read as .h5ad ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt file'})") from None


def counts_matrix(adata, layer: str | None = None, normalized: bool = False,
                  source: str | os.PathLike | None = None) -> sp.csr_matrix:
    """The cells x genes expression matrix as float32 CSR.

    Counts come from ``adata.X`` or ``adata.layers[layer]``. Unless ``normalized`` is True the
    values must be raw counts (non-negative integers); anything else is an error naming
    ``source`` (the file) so users do not silently tokenize log-normalised data.
    """
    where = source if source is not None else "AnnData"
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(where, f"no layer '{layer}' (layers: {', '.join(adata.layers.keys()) or 'none'})")
        X = adata.layers[layer]
    else:
        X = adata.X
    if X is None:
        raise InputError(where, "no expression matrix in X; pass --layer with the layer holding counts")
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    data = X.data
    if data.size and not np.all(np.isfinite(data)):
        raise InputError(where, "expression matrix contains NaN or infinite values")
    if data.size and data.min() < 0:
        raise InputError(where, "expression matrix has negative values (scaled or centred data?): tokenization "
                                "needs raw counts; point at the AnnData layer holding them (extract: "
                                "--counts-layer)")
    if not normalized and data.size and not np.all(data == np.round(data)):
        raise InputError(where, "expression matrix is not integer counts (looks normalised): tokenization needs raw "
                                "counts; point at the AnnData layer holding them (extract: --counts-layer)")
    X.eliminate_zeros()
    return X


def gene_identifiers(adata, column: str | None = None, source: str | os.PathLike | None = None) -> np.ndarray:
    """Gene identifiers per var row: ``var[column]`` if given, else ``var_names`` (as str)."""
    if column is None:
        return np.asarray(adata.var_names.astype(str))
    if column not in adata.var.columns:
        raise InputError(source if source is not None else "AnnData",
                         f"no var column '{column}' (columns: {', '.join(map(str, adata.var.columns)) or 'none'})")
    return np.asarray(adata.var[column].astype(str))


def looks_like_ensembl(ids: np.ndarray) -> bool:
    """True when most identifiers look like Ensembl gene ids (ENSG..., ENSMUSG...)."""
    ids = np.asarray(ids, dtype=str)
    if ids.size == 0:
        return False
    return float(np.mean(np.char.startswith(ids, "ENS"))) > 0.5


def warn_duplicates(source: str | os.PathLike, n_duplicates: int, n_genes: int) -> None:
    """Say how many gene columns were summed into an earlier column of the same gene (a
    duplicated name or id), instead of leaving it to anndata's generic uniqueness warning."""
    if n_duplicates:
        import warnings

        warnings.warn(f"{source}: {n_duplicates} of {n_genes} gene columns repeat a gene already present "
                      "(duplicated names/ids); their counts are summed into one token", stacklevel=3)
