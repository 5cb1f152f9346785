"""Gene networks (STRING pairs, TRRUST edges) inside feature top-gene sets.

The statistic is the number of network edges with both ends in a feature's top-gene set.
The published script only counted them (no test) and counted any edge as an annotation;
here (outside compat mode) it is tested against a degree-preserving null: the network
(restricted to the background genes) is rewired by double-edge swaps, which keep every
gene's degree, and p = (1 + #null counts >= observed) / (1 + N).

Networks are treated as undirected: an edge counts when both genes are in the set, whatever
its direction. The reference script looked TRRUST (TF, target) edges up as (min, max) pairs,
so it only ever found edges whose TF sorts before its target; :func:`edge_array` reproduces
that with ``reference_trrust=True`` (compat mode only).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm


def edge_array(pairs: Iterable[tuple[str, str]], index: Mapping[str, int],
               reference_trrust: bool = False) -> np.ndarray:
    """Unique undirected edges (E, 2), ``u < v`` as column indices of ``index`` (upper-cased
    symbols); pairs with a gene outside ``index`` and self-pairs are dropped."""
    out = set()
    for a, b in pairs:
        a, b = a.upper(), b.upper()
        if reference_trrust and not a < b:
            continue
        if a == b or a not in index or b not in index:
            continue
        i, j = index[a], index[b]
        out.add((min(i, j), max(i, j)))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(sorted(out), dtype=np.int64)


def adjacency(edges: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Symmetric binary adjacency matrix of undirected edges."""
    u, v = edges[:, 0], edges[:, 1]
    data = np.ones(2 * len(edges), dtype=np.int32)
    return sp.csr_matrix((data, (np.concatenate([u, v]), np.concatenate([v, u]))), shape=(n_genes, n_genes))


def within_counts(S: sp.csr_matrix, edges: np.ndarray, n_genes: int) -> np.ndarray:
    """Edges with both ends in each row's gene set: diag(S A S^T) / 2, as int64."""
    if len(edges) == 0:
        return np.zeros(S.shape[0], dtype=np.int64)
    S = S.astype(np.int32)
    twice = np.asarray((S @ adjacency(edges, n_genes)).multiply(S).sum(axis=1)).reshape(-1)
    return (twice // 2).astype(np.int64)


def within_genes(S: sp.csr_matrix, edges: np.ndarray, n_genes: int) -> list[np.ndarray]:
    """Per row, the genes (column indices) with at least one edge inside the row's set."""
    if len(edges) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(S.shape[0])]
    S = S.astype(np.int32)
    hits = (S @ adjacency(edges, n_genes)).multiply(S).tocsr()
    hits.eliminate_zeros()
    return [hits.indices[a:b].astype(np.int64) for a, b in zip(hits.indptr[:-1], hits.indptr[1:])]


def _keys(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """One int64 key per undirected edge: min * n + max."""
    return np.minimum(u, v) * n + np.maximum(u, v)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray, keys_sorted: bool = False) -> np.ndarray:
    """Boolean mask: which ``keys`` are in the sorted array ``sorted_keys`` (the look-up runs
    on sorted needles, much faster than random ones on large arrays)."""
    if sorted_keys.size == 0 or keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    if not keys_sorted:
        order = np.argsort(keys)
        out = np.empty(keys.shape, dtype=bool)
        out[order] = _contains(sorted_keys, keys[order], keys_sorted=True)
        return out
    idx = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(idx, sorted_keys.size - 1)] == keys


def set_pairs(S: sp.csr_matrix, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered gene pair inside each row's set: (row of each pair, pair key), sorted by key."""
    S = S.tocsr()
    rows, keys = [], []
    for r in range(S.shape[0]):
        g = np.sort(S.indices[S.indptr[r]:S.indptr[r + 1]]).astype(np.int64)
        if g.size < 2:
            continue
        i, j = np.triu_indices(g.size, k=1)
        keys.append(g[i] * n_genes + g[j])
        rows.append(np.full(i.size, r, dtype=np.int64))
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, keys = np.concatenate(rows), np.concatenate(keys)
    order = np.argsort(keys, kind="stable")  # sorted needles make later look-ups cache-friendly
    return rows[order], keys[order]


def count_pairs(edge_keys_sorted: np.ndarray, pair_rows: np.ndarray, pair_keys: np.ndarray,
                n_rows: int) -> np.ndarray:
    """Per row, how many of its gene pairs are edges (edge keys and pair keys sorted)."""
    hit = _contains(edge_keys_sorted, pair_keys, keys_sorted=True)
    return np.bincount(pair_rows[hit], minlength=n_rows).astype(np.int64)


def rewire_round(edges: np.ndarray, n_genes: int, rng: np.random.Generator,
                 sorted_keys: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """One vectorised round of double-edge swaps; returns (new edges, swaps accepted).

    Edges are paired at random; each pair (a, b), (c, d) becomes (a, d), (c, b) or (a, c),
    (b, d). A swap is rejected if it would create a self-loop, an edge already present, or an
    edge another swap of the same round creates. Every gene keeps its degree.
    ``sorted_keys``: the sorted edge keys of ``edges`` if the caller has them.
    """
    E = len(edges)
    if E < 2:
        return edges.copy(), 0
    perm = rng.permutation(E)
    half = E // 2
    i, j = perm[:half], perm[half:2 * half]
    a, b, c, d = edges[i, 0], edges[i, 1], edges[j, 0], edges[j, 1]
    flip = rng.random(half) < 0.5
    u1, v1 = a, np.where(flip, c, d)
    u2, v2 = np.where(flip, b, c), np.where(flip, d, b)
    k1, k2 = _keys(u1, v1, n_genes), _keys(u2, v2, n_genes)
    current = np.sort(_keys(edges[:, 0], edges[:, 1], n_genes)) if sorted_keys is None else sorted_keys
    ok = (u1 != v1) & (u2 != v2) & (k1 != k2) & ~_contains(current, k1) & ~_contains(current, k2)
    # new edges proposed twice within the round: reject every swap proposing them
    new = np.sort(np.concatenate([k1[ok], k2[ok]]))
    dup = new[1:][new[1:] == new[:-1]]
    if dup.size:
        dup = np.unique(dup)
        ok &= ~(_contains(dup, k1) | _contains(dup, k2))
    out = edges.copy()
    out[i[ok]] = np.stack([np.minimum(u1, v1), np.maximum(u1, v1)], axis=1)[ok]
    out[j[ok]] = np.stack([np.minimum(u2, v2), np.maximum(u2, v2)], axis=1)[ok]
    return out, int(ok.sum())


def degree_null_test(S: sp.csr_matrix, edges: np.ndarray, n_genes: int, n_perm: int = 1000,
                     seed: int = 0, burn_in: int = 10, thin: int = 1,
                     progress: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-set edge counts vs a degree-preserving rewiring null.

    A Markov chain of rewiring rounds starts from the real network; after ``burn_in`` rounds
    every ``thin`` rounds gives one null network. Returns (observed (F,), null mean (F,),
    p (F,) = (1 + #null >= observed) / (1 + n_perm)).
    """
    pair_rows, pair_keys = set_pairs(S, n_genes)
    n_rows = S.shape[0]
    keys = np.sort(_keys(edges[:, 0], edges[:, 1], n_genes)) if len(edges) else np.zeros(0, dtype=np.int64)
    observed = count_pairs(keys, pair_rows, pair_keys, n_rows)
    ge = np.zeros(n_rows, dtype=np.int64)
    total = np.zeros(n_rows, dtype=np.float64)
    rng = np.random.default_rng(seed)
    current = edges
    for _ in range(burn_in):
        current, _ = rewire_round(current, n_genes, rng, keys)
        keys = np.sort(_keys(current[:, 0], current[:, 1], n_genes))
    for _ in tqdm(range(n_perm), desc=progress or "network null", disable=progress is None, leave=False):
        for _ in range(thin):
            current, _ = rewire_round(current, n_genes, rng, keys)
            keys = np.sort(_keys(current[:, 0], current[:, 1], n_genes))
        null = count_pairs(keys, pair_rows, pair_keys, n_rows)
        ge += null >= observed
        total += null
    p = (1.0 + ge) / (1.0 + n_perm)
    return observed, total / max(n_perm, 1), p
