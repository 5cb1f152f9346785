"""Pure statistical helpers shared by every stage (no I/O, no state).

Each function is small and tested against hand-computed values in tests/test_stats.py.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (same as statsmodels ``fdr_bh``); NaNs stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    n = pv.size
    if n == 0:
        return q
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def hypergeom_sf(overlap, set_size, term_size, background) -> np.ndarray:
    """One-sided enrichment p = P(X >= overlap), X ~ Hypergeom(background, term_size, set_size).

    Identical to a one-sided (greater) Fisher exact test on the 2x2 table. Vectorised.
    """
    k = np.asarray(overlap)
    return _st.hypergeom.sf(k - 1, np.asarray(background), np.asarray(term_size), np.asarray(set_size))


def stratified_hypergeom_sf(overlap, set_size, term_size, background) -> np.ndarray:
    """One-sided p = P(sum_b X_b >= sum_b overlap_b), X_b ~ Hypergeom(background_b, term_size_b, set_size_b)
    independent over strata b: the exact conditional test of a 2x2 table stratified by a
    covariate (the exact one-sided counterpart of Cochran-Mantel-Haenszel).

    Inputs: (rows, strata) integer arrays; one p per row (NaN where the set is empty). With a
    single stratum it equals :func:`hypergeom_sf`.
    """
    k = np.atleast_2d(np.asarray(overlap, dtype=np.int64))
    n = np.atleast_2d(np.asarray(set_size, dtype=np.int64))
    K = np.atleast_2d(np.asarray(term_size, dtype=np.int64))
    N = np.atleast_2d(np.asarray(background, dtype=np.int64))
    out = np.full(k.shape[0], np.nan)
    for i in range(k.shape[0]):
        if n[i].sum() == 0:
            continue
        dist = np.ones(1)
        for b in np.flatnonzero(n[i] > 0):
            support = np.arange(n[i, b] + 1)
            dist = np.convolve(dist, _st.hypergeom.pmf(support, N[i, b], K[i, b], n[i, b]))
        out[i] = min(1.0, float(dist[k[i].sum():].sum()))
    return out


def mantel_haenszel_odds_ratio(a, b, c, d) -> np.ndarray:
    """Mantel-Haenszel common odds ratio of (rows, strata) 2x2 tables [[a, b], [c, d]]."""
    a, b, c, d = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (a, b, c, d))
    t = a + b + c + d
    with np.errstate(divide="ignore", invalid="ignore"):
        num = np.where(t > 0, a * d / np.where(t > 0, t, 1), 0).sum(axis=1)
        den = np.where(t > 0, b * c / np.where(t > 0, t, 1), 0).sum(axis=1)
        return num / den


def odds_ratio(a, b, c, d, pseudo: float = 0.0) -> np.ndarray:
    """Sample odds ratio (a*d)/(b*c) of 2x2 tables [[a, b], [c, d]] (inf when b*c == 0 < a*d)."""
    a, b, c, d = (np.asarray(x, dtype=np.float64) + pseudo for x in (a, b, c, d))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * d) / (b * c)


def paired_d(mean, sd) -> np.ndarray:
    """Paired Cohen's d_z = mean / sd of the per-cell differences (NaN when sd == 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, mean / sd, np.nan)


def paired_t_p(mean, sd, n) -> np.ndarray:
    """Two-sided one-sample t-test p-value of H0: mean difference = 0 (NaN when n < 2 or sd == 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
        p = 2.0 * _st.t.sf(np.abs(t), df=n - 1)
    return np.where((n >= 2) & (sd > 0), p, np.nan)


def permutation_p(observed: float, null: np.ndarray, alternative: str = "greater") -> float:
    """Permutation p-value (1 + #null >= observed) / (1 + N) (or <= for ``alternative='less'``)."""
    null = np.asarray(null, dtype=np.float64)
    k = np.sum(null >= observed) if alternative == "greater" else np.sum(null <= observed)
    return float((1 + k) / (1 + null.size))


def stratified_permutations(strata, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random permutations (rows of an (n, len(strata)) int64 array), each keeping strata.

    Row ``perm`` satisfies ``strata[perm[i]] == strata[i]`` for every i: items are shuffled
    only among items of the same stratum. Vectorised (one lexsort over all rows).
    """
    strata = np.asarray(strata)
    grouped = np.argsort(strata, kind="stable")
    keys = np.broadcast_to(strata, (n, strata.size))
    shuffled = np.lexsort((rng.random((n, strata.size)), keys), axis=-1)
    perm = np.empty((n, strata.size), dtype=np.int64)
    perm[:, grouped] = shuffled
    return perm


def welford_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) accumulators exactly (Chan et al.); works elementwise."""
    n_a = np.asarray(n_a, dtype=np.float64)
    n_b = np.asarray(n_b, dtype=np.float64)
    n = n_a + n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.asarray(mean_b) - np.asarray(mean_a)
        mean = np.where(n > 0, np.asarray(mean_a) + delta * np.where(n > 0, n_b / n, 0.0), 0.0)
        m2 = np.asarray(m2_a) + np.asarray(m2_b) + np.where(n > 0, delta**2 * n_a * n_b / n, 0.0)
    return n, mean, m2
