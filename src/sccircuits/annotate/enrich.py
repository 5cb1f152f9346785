"""Gene-set enrichment of feature top-gene sets, vectorised over features x terms.

Overlaps come from one sparse product (features x genes) @ (genes x terms); p-values are
computed once per distinct (overlap, set size, term size, background) combination and
broadcast back; BH-FDR counts every test run, including the (many) zero-overlap pairs whose
p-value is exactly 1, without materialising them (:func:`bh_with_untested`).

Two modes share this code:

- **corrected** (default): background = the expressed genes present in the model vocabulary
  (the activation store's genes), term genes intersected with it, terms kept when their size
  *after* intersection is within [min_term_size, max_term_size], every (feature, term) pair is
  a test, BH per library;
- **reference** (``compat="reference"``, the published script): background = union of all
  features' top genes, term size = the term's full size (filtered on it), a test only where
  the overlap is >= 2, BH over the tests run of all libraries of the layer together. When
  the full term is larger than that background allows, the published Fisher table would have
  a negative cell; we clip it to 0 (background = n + K - overlap) instead of failing.

Gene symbols are matched case-insensitively (upper-cased), as the published script did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..stats import hypergeom_sf, odds_ratio


def membership(sets: Sequence[Iterable[str]], index: Mapping[str, int]) -> sp.csr_matrix:
    """Binary (n_sets x len(index)) CSR matrix: row i marks the members of ``sets[i]`` found
    in ``index`` (symbol -> column); other members are ignored, duplicates count once."""
    rows, cols = [], []
    for i, genes in enumerate(sets):
        js = {index[g] for g in genes if g in index}
        rows.extend([i] * len(js))
        cols.extend(js)
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (np.asarray(rows, dtype=np.int64),
                       np.asarray(cols, dtype=np.int64))), shape=(len(sets), len(index)))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def bh_with_untested(p: np.ndarray, n_tests: int) -> np.ndarray:
    """BH q-values of ``p`` when ``n_tests - len(p)`` further tests all have p = 1.

    Equal to ``bh_fdr`` of ``p`` padded with ones to ``n_tests`` (those padded q-values are 1),
    without building the padded vector.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    if n_tests < n:
        raise ValueError(f"n_tests ({n_tests}) is smaller than the number of p-values ({n})")
    order = np.argsort(p)  # ties get equal q whatever their order
    ranked = p[order] * n_tests / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(n)
    q[order] = np.minimum(ranked, 1.0)
    return q


def hypergeom_unique(overlap, set_size, term_size, background) -> np.ndarray:
    """:func:`~sccircuits.stats.hypergeom_sf` computed once per distinct argument tuple.

    The tuples are packed into one int64 key (mixed radix) so that finding the distinct ones
    is a 1-D sort; a handful of thousand scipy calls then serve millions of tests.
    """
    args = [np.asarray(a, dtype=np.int64).reshape(-1) for a in (overlap, set_size, term_size, background)]
    size = max(a.size for a in args)
    args = [np.broadcast_to(a, (size,)) for a in args]
    if size == 0:
        return np.zeros(0)
    if min(int(a.min()) for a in args) < 0:
        raise ValueError("hypergeometric arguments must be non-negative")
    low = [int(a.min()) for a in args]
    radix = [int(a.max()) - lo + 1 for a, lo in zip(args, low)]  # constant arguments cost nothing
    n_keys = float(np.prod([float(r) for r in radix]))
    if n_keys < 2.0**62:
        key = np.zeros(size, dtype=np.int64)
        for a, lo, r in zip(args, low, radix):
            key = key * r + (a - lo)
        if n_keys <= 5e7:  # small key space: a presence table instead of a sort
            present = np.zeros(int(n_keys), dtype=bool)
            present[key] = True
            uniq_key = np.flatnonzero(present)
            lookup = np.zeros(int(n_keys), dtype=np.int64)
            lookup[uniq_key] = np.arange(uniq_key.size)
            inverse = lookup[key]
        else:
            uniq_key, inverse = np.unique(key, return_inverse=True)
        cols, rest = [], uniq_key.copy()
        for lo, r in zip(reversed(low), reversed(radix)):  # decode the mixed-radix keys
            cols.append(rest % r + lo)
            rest //= r
        uniq = np.stack(cols[::-1], axis=1)
    else:  # astronomically large arguments: row-wise unique (slower, same result)
        uniq, inverse = np.unique(np.stack(args, axis=1), axis=0, return_inverse=True)
    p = hypergeom_sf(uniq[:, 0], uniq[:, 1], uniq[:, 2], uniq[:, 3])
    return np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)[inverse.reshape(-1)]


@dataclass
class Library:
    """One gene-set library prepared for testing against a gene universe."""

    name: str
    term_ids: np.ndarray  # (n_terms,) str
    term_names: np.ndarray  # (n_terms,) str
    matrix: sp.csc_matrix  # (n_genes, n_terms) binary: term members inside the universe
    term_sizes: np.ndarray  # (n_terms,) sizes used by the test


def prepare_library(name: str, sets: Mapping[str, tuple[str, frozenset[str]]],
                    index: Mapping[str, int], min_size: int, max_size: int,
                    intersect: bool = True) -> Library:
    """Terms of ``sets`` as a genes x terms matrix over ``index`` (upper-cased symbols).

    ``intersect=True`` (corrected): term size = members inside the universe, filtered on it.
    ``intersect=False`` (reference): term size = the full term, filtered on it; the matrix
    still only holds members inside the universe (others can never overlap a top-gene set).
    """
    ids = list(sets)
    upper = [{g.upper() for g in sets[t][1]} for t in ids]
    m = membership(upper, index)
    sizes = np.asarray(m.sum(axis=1)).reshape(-1) if intersect else np.array([len(u) for u in upper])
    keep = (sizes >= min_size) & (sizes <= max_size)
    return Library(name, np.asarray(ids, dtype=object)[keep],
                   np.asarray([sets[t][0] for t in ids], dtype=object)[keep],
                   m[keep].T.tocsc(), sizes[keep].astype(np.int64))


def overlap_tests(S: sp.csr_matrix, lib: Library, min_overlap: int = 1) -> dict[str, np.ndarray]:
    """Overlap of every feature set (rows of ``S``) with every term, where >= ``min_overlap``.

    Returns int64 arrays row (row of S), term (column of lib), overlap.
    """
    o = (S.astype(np.int32) @ lib.matrix.astype(np.int32)).tocoo()
    keep = o.data >= min_overlap
    return {"row": o.row[keep].astype(np.int64), "term": o.col[keep].astype(np.int64),
            "overlap": o.data[keep].astype(np.int64)}


def test_library(S: sp.csr_matrix, set_sizes: np.ndarray, lib: Library, background: int,
                 min_overlap: int = 1, clip_table: bool = False) -> dict[str, np.ndarray]:
    """Hypergeometric tests of the feature sets against one library (pairs with overlap >=
    ``min_overlap``; pairs below have p = 1 and are left out).

    Returns arrays row, term, overlap, set_size, term_size, background_size, p_value (odds
    ratios come later, for the rows kept: :func:`add_odds_ratio`). ``clip_table`` (reference
    mode) raises the background to set + term - overlap where the 2x2 table would otherwise
    have a negative cell.
    """
    t = overlap_tests(S, lib, min_overlap)
    k = t["overlap"]
    n = np.asarray(set_sizes, dtype=np.int64)[t["row"]]
    K = lib.term_sizes[t["term"]].astype(np.int64)
    N = np.full(k.size, int(background), dtype=np.int64)
    if clip_table:
        N = np.maximum(N, n + K - k)
    t.update(set_size=n, term_size=K, background_size=N, p_value=hypergeom_unique(k, n, K, N))
    return t


def add_odds_ratio(t: pd.DataFrame) -> pd.DataFrame:
    """Add the sample odds ratio of each row's 2x2 table [[k, n-k], [K-k, N-n-K+k]]."""
    k, n, K, N = (t[c].to_numpy(dtype=np.int64) for c in ("overlap", "set_size", "term_size", "background_size"))
    t["odds_ratio"] = odds_ratio(k, n - k, K - k, N - n - K + k)
    return t


def overlap_gene_lists(rows: np.ndarray, terms: np.ndarray, feature_sets: Sequence[Sequence[str]],
                       lib_sets: Sequence[frozenset[str]]) -> list[list[str]]:
    """Overlap genes (in the feature's top-gene order) of each (row, term) pair."""
    out = []
    for r, t in zip(rows, terms):
        members = lib_sets[t]
        out.append([g for g in feature_sets[r] if g.upper() in members])
    return out
