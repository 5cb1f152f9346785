"""The bundled blood cells with thousands of genes (``blood_counts.h5ad``): 719 human immune
cells x several thousand genes with raw counts and cell-type labels.

Two public sources, merged on the genes they share (built by ``scripts/make_blood.py``, which
downloads both packages with ``apt-get download`` / ``pip download`` at script time only):

- **PBMC3k subset of decoupleR** (Debian ``r-bioc-decoupler``, ``extdata/sc_data.rds``; GPL-3
  package of the 10x Genomics PBMC3k data, CC BY 4.0): 160 PBMCs, a Seurat object holding
  log-normalised values ``log1p(counts / nCount_RNA * 1e4)``; counts are recovered as
  ``round(expm1(x) * nCount_RNA / 1e4)`` (checked to be within 0.01 of an integer). The
  object's 8 Seurat clusters carry identities (Naive CD4 T, Memory CD4 T, CD14+ Mono, B,
  CD8 T, FCGR3A+ Mono, NK, DC), but two are swapped: the cluster named "Memory CD4 T"
  expresses CD14 and LYZ, the one named "CD14+ Mono" IL7R and S100A4. Labels are therefore
  re-derived per cluster from the canonical markers of the Seurat PBMC3k tutorial
  (:data:`PBMC3K_MARKERS`, :func:`marker_cluster_labels`: one type per cluster, best total
  marker score); ``obs['label_source'] == 'markers'``, ``obs['given_label']`` keeps the
  object's name.
- **CellTypist sample** (PyPI ``celltypist`` wheel, MIT; ``data/samples/sample_cell_by_gene.csv``):
  559 immune cells with integer counts and no labels. Each gets the label of the nearest
  PBMC3k cell-type centroid (:func:`nearest_centroid_labels`: Pearson correlation of
  log1p(CP10k) over the most variable genes of the labelled cells):
  ``obs['label_source'] == 'nearest_centroid'``, with ``obs['label_corr']`` the correlation.
  Leave-one-out on the 160 labelled cells measures the rule (in the build report).

Genes: those of the PBMC3k object that the CellTypist file also has, detected in at least
``min_cells`` cells of the merged set. ``var_names`` are current NCBI symbols mapped as for the
PBMC68k file (:func:`sccircuits.datasets.pbmc.map_symbols`), with ``ensembl_id``, ``entrez_id``,
``original_symbol`` and ``id_source`` columns. ``obs``: ``cell_type``, ``label_source``,
``label_corr``, ``source`` (pbmc3k or celltypist), ``n_counts`` (the cell's total over the
genes of its source file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ASSET_NAME = "blood_counts.h5ad"

#: Canonical PBMC markers of the Seurat PBMC3k guided-clustering tutorial (satijalab.org).
PBMC3K_MARKERS = {
    "Naive CD4 T": ("IL7R", "CCR7"),
    "Memory CD4 T": ("IL7R", "S100A4"),
    "CD14+ Mono": ("CD14", "LYZ"),
    "B": ("MS4A1",),
    "CD8 T": ("CD8A",),
    "FCGR3A+ Mono": ("FCGR3A", "MS4A7"),
    "NK": ("GNLY", "NKG7"),
    "DC": ("FCER1A", "CST3"),
}


def marker_cluster_labels(logx: np.ndarray, clusters: np.ndarray, genes, markers=PBMC3K_MARKERS) -> dict:
    """{cluster: cell type}: each cluster gets one type, each type at most one cluster, maximising
    the summed score; score(cluster, type) = mean over the type's markers of the marker's
    cluster-mean log expression, standardised across clusters (Hungarian assignment)."""
    from scipy.optimize import linear_sum_assignment

    logx = np.asarray(logx, dtype=np.float64)
    col = {g: i for i, g in enumerate(genes)}
    ids = np.unique(clusters)
    types = list(markers)
    means = np.stack([logx[clusters == c].mean(0) for c in ids])  # clusters x genes
    z = (means - means.mean(0)) / np.maximum(means.std(0), 1e-12)
    score = np.stack([[np.mean([z[k, col[g]] for g in markers[t] if g in col]) for t in types]
                      for k in range(len(ids))])
    rows, cols = linear_sum_assignment(-score)
    return {ids[r]: types[c] for r, c in zip(rows, cols)}


def log_cp10k(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """log1p(counts / total * 1e4) per cell (dense float64)."""
    return np.log1p(np.asarray(counts, dtype=np.float64) / np.asarray(totals, dtype=np.float64)[:, None] * 1e4)


def nearest_centroid_labels(ref: np.ndarray, ref_labels: np.ndarray, query: np.ndarray,
                            n_genes: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label ``query`` cells (rows, log-normalised) by the most correlated centroid of
    ``ref`` cell types. Genes: the ``n_genes`` with the largest variance over ``ref``.

    Returns (labels, their Pearson correlation, the gene columns used)."""
    ref = np.asarray(ref, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    genes = np.sort(np.argsort(-ref.var(0), kind="mergesort")[:n_genes])
    types = np.unique(ref_labels)
    cent = np.stack([ref[ref_labels == t][:, genes].mean(0) for t in types])

    def zrows(a):
        a = a - a.mean(1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    corr = zrows(query[:, genes]) @ zrows(cent).T
    best = corr.argmax(1)
    return types[best], corr[np.arange(len(best)), best], genes


def leave_one_out_accuracy(ref: np.ndarray, ref_labels: np.ndarray, n_genes: int = 2000) -> float:
    """Accuracy of :func:`nearest_centroid_labels` on each labelled cell with that cell left out
    of the centroids and of the gene choice."""
    hits = 0
    for i in range(len(ref_labels)):
        keep = np.arange(len(ref_labels)) != i
        lab, _, _ = nearest_centroid_labels(ref[keep], ref_labels[keep], ref[i:i + 1], n_genes)
        hits += int(lab[0] == ref_labels[i])
    return hits / len(ref_labels)


def asset_path() -> Path:
    """Path of the shipped blood-cell file."""
    from . import assets_dir

    return assets_dir() / ASSET_NAME


def blood():
    """The bundled 719 immune cells x thousands of genes as AnnData: raw integer counts in ``X``
    (float32 CSR), current gene symbols as ``var_names``, ``var['ensembl_id']`` (use
    ``gene_column='ensembl_id'`` for Geneformer), cell types in ``obs['cell_type']``. See the
    module docstring for sources, labels and the gene rule."""
    from ..data import read_cells
    from . import _asset

    return read_cells(_asset(ASSET_NAME))
