"""Feature catalog: how often each SAE feature fires and on which genes.

The catalog is a pure function of the SAE codes ``z`` (positions x features) and the gene
token at each position, fed batch by batch to :class:`CatalogAccumulator`. Per feature it
keeps the fire count (positions with z > 0) and the sum of z; per (feature, gene token) the
number of positions where the feature fires on that gene and the sum of z there. The pairs
are accumulated as sparse COO triplets (consolidated now and then), never with Python loops
over positions.

Top genes of a feature: the gene tokens with the highest mean activation over the positions
where the feature fires on them, among tokens seen at least ``min_count`` times there (the
published catalog had no minimum, so genes seen once dominated); ties broken by token id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch


@dataclass
class CatalogCounts:
    """Accumulated counts of one layer (the input of :func:`top_genes` and :func:`catalog_table`)."""

    n_positions: int
    fire_count: np.ndarray  # (d_sae,) int64
    act_sum: np.ndarray  # (d_sae,) float64, sum of z over all positions
    pair_count: sp.csr_matrix  # (d_sae, n_tokens) int64: positions where f fires on token
    pair_sum: sp.csr_matrix  # (d_sae, n_tokens) float64: sum of z there


class CatalogAccumulator:
    """Streams SAE codes into per-feature and per-(feature, gene token) counts.

    >>> acc = CatalogAccumulator(d_sae=4)
    >>> acc.update(z, token_ids)  # z: (n, d_sae) codes, token_ids: (n,) gene token per position
    >>> counts = acc.result()
    """

    def __init__(self, d_sae: int, flush_every: int = 5_000_000):
        self.d_sae = int(d_sae)
        self.flush_every = int(flush_every)
        self.n_positions = 0
        self.fire_count = np.zeros(self.d_sae, dtype=np.int64)
        self.act_sum = np.zeros(self.d_sae, dtype=np.float64)
        self._max_token = -1
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._buffered = 0
        self._count = sp.csr_matrix((self.d_sae, 1), dtype=np.int64)
        self._sum = sp.csr_matrix((self.d_sae, 1), dtype=np.float64)

    def update(self, z, token_ids) -> None:
        """Add one batch: ``z`` (n, d_sae) codes (torch or numpy), ``token_ids`` (n,) ints."""
        z = torch.as_tensor(z)
        tok = torch.as_tensor(token_ids).to(torch.int64).reshape(-1)
        if z.ndim != 2 or z.shape[1] != self.d_sae or z.shape[0] != tok.shape[0]:
            raise ValueError(f"expected z of shape (n, {self.d_sae}) and n token ids, got "
                             f"{tuple(z.shape)} and {tuple(tok.shape)}")
        self.n_positions += int(z.shape[0])
        if z.shape[0] == 0:
            return
        if int(tok.min()) < 0:
            raise ValueError("negative gene token id")
        pos, feat = torch.nonzero(z > 0, as_tuple=True)
        vals = z[pos, feat].to(torch.float64).cpu().numpy()
        feat = feat.cpu().numpy()
        toks = tok.cpu().numpy()[pos.cpu().numpy()]
        self.fire_count += np.bincount(feat, minlength=self.d_sae)
        self.act_sum += np.bincount(feat, weights=vals, minlength=self.d_sae)
        self._max_token = max(self._max_token, int(tok.max()))
        self._rows.append(feat)
        self._cols.append(toks)
        self._vals.append(vals)
        self._buffered += feat.size
        if self._buffered >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered triplets into the running sparse matrices (summing duplicates)."""
        if not self._rows:
            return
        shape = (self.d_sae, self._max_token + 1)
        rows = np.concatenate(self._rows)
        cols = np.concatenate(self._cols)
        vals = np.concatenate(self._vals)
        ones = np.ones(rows.size, dtype=np.int64)
        count = sp.coo_matrix((ones, (rows, cols)), shape=shape).tocsr()
        total = sp.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
        self._count = _resize(self._count, shape) + count
        self._sum = _resize(self._sum, shape) + total
        self._rows, self._cols, self._vals, self._buffered = [], [], [], 0

    def result(self) -> CatalogCounts:
        """The accumulated counts (the accumulator can keep receiving batches afterwards)."""
        self._flush()
        shape = (self.d_sae, max(self._max_token + 1, 1))
        count = _resize(self._count, shape).tocsr()
        total = _resize(self._sum, shape).tocsr()
        count.sort_indices()
        total.sort_indices()
        return CatalogCounts(self.n_positions, self.fire_count.copy(), self.act_sum.copy(), count, total)


def _resize(m: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """``m`` padded with empty columns to ``shape`` (CSR column growth is free)."""
    if m.shape == shape:
        return m
    m = m.tocsr(copy=True)
    m.resize(shape)
    return m


def top_genes(counts: CatalogCounts, n_top: int, min_count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per feature: top gene tokens, their mean activation and fire counts (best first).

    Candidates are the tokens where the feature fired at least ``min_count`` times; they are
    ranked by mean activation there (descending), ties by token id (ascending). Vectorised:
    one lexsort over all (feature, token) pairs.
    """
    cnt, tot = counts.pair_count.tocsr(), counts.pair_sum.tocsr()
    cnt.sort_indices()
    tot.sort_indices()
    # Both matrices come from the same triplets with positive values: identical structure.
    if not (np.array_equal(cnt.indptr, tot.indptr) and np.array_equal(cnt.indices, tot.indices)):
        raise ValueError("pair_count and pair_sum have different sparsity structure")
    rows = np.repeat(np.arange(cnt.shape[0]), np.diff(cnt.indptr))
    cols, c, s = cnt.indices, cnt.data, tot.data
    keep = c >= min_count
    rows, cols, c, s = rows[keep], cols[keep], c[keep], s[keep]
    mean = s / c
    order = np.lexsort((cols, -mean, rows))
    rows, cols, c, mean = rows[order], cols[order], c[order], mean[order]
    start = np.searchsorted(rows, np.arange(counts.pair_count.shape[0] + 1))
    rank = np.arange(rows.size) - start[rows]
    sel = rank < n_top
    rows, cols, c, mean = rows[sel], cols[sel], c[sel], mean[sel]
    bounds = np.searchsorted(rows, np.arange(counts.pair_count.shape[0] + 1))
    toks = [cols[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
    means = [mean[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    fires = [c[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
    return toks, means, fires


def catalog_table(counts: CatalogCounts, symbols: dict[int, str], n_top: int = 20,
                  min_count: int = 5) -> pd.DataFrame:
    """The catalog of one layer, one row per feature.

    Columns: feature, fire_count, activation_freq (fire_count / positions), mean_activation
    (mean z over all positions, as published), mean_when_firing, n_genes (distinct tokens it
    fired on), top_genes (symbols), top_gene_tokens, top_gene_means, top_gene_counts.
    ``symbols`` maps token id -> gene symbol (the token's gene id when it has no symbol).
    """
    n = max(counts.n_positions, 1)
    toks, means, fires = top_genes(counts, n_top, min_count)
    fc = counts.fire_count
    with np.errstate(divide="ignore", invalid="ignore"):
        when = np.where(fc > 0, counts.act_sum / np.maximum(fc, 1), 0.0)
    n_genes = np.diff(counts.pair_count.tocsr().indptr)
    return pd.DataFrame({
        "feature": np.arange(fc.size, dtype=np.int64),
        "fire_count": fc.astype(np.int64),
        "activation_freq": fc / n,
        "mean_activation": counts.act_sum / n,
        "mean_when_firing": when,
        "n_genes": n_genes.astype(np.int64),
        "top_genes": [[symbols.get(int(t), f"token_{int(t)}") for t in ts] for ts in toks],
        "top_gene_tokens": [ts.tolist() for ts in toks],
        "top_gene_means": [m.tolist() for m in means],
        "top_gene_counts": [f.tolist() for f in fires],
    })
