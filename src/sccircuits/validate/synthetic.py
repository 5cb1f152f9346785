"""Synthetic CRISPRi screens and run directories for tests, benchmarks and examples.

:func:`write_screen` writes a Replogle-2022-layout ``.h5ad`` chunk by chunk (X never held
whole in memory), with planted knockdown effects; :func:`write_run` writes a minimal run
directory (trace edges + annotation catalogs, stages marked complete) in the contract layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def write_screen(path: str | os.PathLike, symbols: list[str], cells: pd.DataFrame,
                 effects: dict | None = None, base_mean: np.ndarray | None = None,
                 library_size: float = 2000.0, sparse: bool = True, seed: int = 0,
                 chunk_size: int = 20000, target_column: str = "gene", cell_line_column: str | None = "cell_line",
                 ensembl_var_names: bool = True) -> Path:
    """Write a synthetic screen; returns its path.

    ``cells``: one row per cell with columns ``target`` and ``cell_line`` (written to obs as
    ``target_column`` / ``cell_line_column``; the line column is left out when None).
    ``effects``: {(cell_line, target): {gene symbol: fold factor}} multiplying that gene's
    expected count in the cells of that knockdown. Counts are Poisson(library_size x
    lognormal size factor x base_mean[g] x fold) with base_mean summing to 1. var has
    Ensembl-like var_names and symbols in ``var['gene_name']`` (or symbols as var_names).
    """
    import anndata as ad
    import h5py

    path = Path(path)
    rng = np.random.default_rng(seed)
    n_genes = len(symbols)
    if base_mean is None:
        base_mean = rng.gamma(0.8, 1.0, size=n_genes)
    base_mean = np.asarray(base_mean, dtype=np.float64) / np.sum(base_mean)
    sym_index = pd.Index(symbols)
    obs = pd.DataFrame({target_column: pd.Categorical(cells["target"].astype(str))},
                       index=[f"cell{i}" for i in range(len(cells))])
    if cell_line_column is not None:
        obs[cell_line_column] = pd.Categorical(cells["cell_line"].astype(str))
    if ensembl_var_names:
        var = pd.DataFrame({"gene_name": list(symbols)}, index=[f"ENSG{i:011d}" for i in range(1, n_genes + 1)])
    else:
        var = pd.DataFrame(index=list(symbols))
    ad.AnnData(obs=obs, var=var).write_h5ad(path)

    # fold matrix per (line, target) group, applied by group code
    key = cells["cell_line"].astype(str) + "\t" + cells["target"].astype(str)
    gcode, gkeys = pd.factorize(key)
    fold = np.ones((len(gkeys), n_genes))
    for (line, target), genes in (effects or {}).items():
        k = gkeys.get_indexer([f"{line}\t{target}"])[0]
        if k < 0:
            continue
        for g, f in genes.items():
            fold[k, sym_index.get_loc(g)] = f
    n = len(cells)
    with h5py.File(path, "a") as f:
        if sparse:
            grp = f.create_group("X")
            grp.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n, n_genes)})
            data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 16,))
            indices = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 16,))
            indptr = [np.zeros(1, dtype=np.int64)]
        else:
            dense = f.create_dataset("X", shape=(n, n_genes), dtype="float32",
                                     chunks=(min(n, 256), n_genes))
            dense.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        nnz = 0
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            size = library_size * rng.lognormal(0.0, 0.3, size=e - s)
            mu = size[:, None] * base_mean[None, :] * fold[gcode[s:e]]
            counts = rng.poisson(mu).astype(np.float32)
            if sparse:
                r, c = np.nonzero(counts)
                vals = counts[r, c]
                data.resize((nnz + vals.size,))
                indices.resize((nnz + vals.size,))
                data[nnz:] = vals
                indices[nnz:] = c.astype(np.int32)
                indptr.append(nnz + np.cumsum(np.bincount(r, minlength=e - s)))
                nnz += vals.size
            else:
                dense[s:e] = counts
        if sparse:
            grp.create_dataset("indptr", data=np.concatenate(indptr).astype(np.int64))
    return path


def write_run(path: str | os.PathLike, edges: pd.DataFrame, top_genes: dict[int, dict[int, list[str]]],
              model: str = "synthetic") -> Path:
    """Write a minimal run: ``trace/edges.parquet`` and ``annotation/layerNN_catalog.parquet``.

    ``edges`` needs source_layer, source_feature, target_layer, target_feature, cohens_d (other
    contract columns get defaults; in_cap defaults to True). ``top_genes``: {layer: {feature:
    [symbols, best first]}}. Stages ``annotate`` and ``trace`` are marked complete.
    """
    from .. import artifacts
    from ..rundir import RunDir

    rd = RunDir(path)
    e = edges.copy()
    defaults = {"model": model, "source_label": "unannotated", "source_label_id": "",
                "target_label": "unannotated", "target_label_id": "", "n_cells": 10, "mean_delta": 0.0,
                "sd_delta": 1.0, "consistency": 1.0, "consistency_nonzero": 1.0, "p_value": 0.0,
                "q_value": 0.0, "in_cap": True}
    for c, v in defaults.items():
        if c not in e.columns:
            e[c] = v
    rd.begin_stage("annotate", {})
    for layer, feats in top_genes.items():
        cat = pd.DataFrame({"feature": list(feats), "top_genes": [list(g) for g in feats.values()]})
        cat["fire_count"] = 10
        cat["label_name"] = artifacts.UNANNOTATED
        artifacts.write_table(rd, artifacts.annotation_file(layer, "catalog"), cat)
    rd.complete_stage("annotate")
    rd.begin_stage("trace", {})
    artifacts.write_table(rd, artifacts.trace_file("edges"), e)
    rd.complete_stage("trace")
    return rd.path
