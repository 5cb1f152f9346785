"""Pure statistics of the CRISPRi validation (no I/O; tested against hand-computed values).

**Predicted direction.** Tracing sign convention (docs/method.md §5): d < 0 means ablating the
source feature lowers the target feature (the source supports the target). A CRISPRi
knockdown of a source gene is the gene-level analogue of the ablation, so the prediction for
the target gene's log2 fold change is ``sign(LFC) = sign(mean d)``: d < 0 predicts the target
goes DOWN when the source is knocked down, d > 0 predicts it goes UP. (This is the reference
comparison ``sign(mean d) == sign(LFC)``.) Pairs with ``mean d == 0`` carry no prediction.

**Sign-bias baseline.** With ``p_pred`` the share of evaluated pairs predicted positive
(mean d > 0) and ``p_obs`` the share observed positive (LFC > 0), a predictor independent of
the data but with the same marginals scores ``p_pred * p_obs + (1 - p_pred) * (1 - p_obs)``.
Accuracy is only informative above this (e.g. 80% negative d and 70% negative LFC give a
baseline of 0.62, not 0.5).
"""

from __future__ import annotations

import numpy as np


def log2_fold_change(mean_kd, mean_ctrl, pseudocount: float) -> np.ndarray:
    """``log2((mean_kd + pc) / (mean_ctrl + pc))`` of normalised means (elementwise, float64)."""
    a = np.asarray(mean_kd, dtype=np.float64)
    b = np.asarray(mean_ctrl, dtype=np.float64)
    return np.log2((a + pseudocount) / (b + pseudocount))


def sign_bias_baseline(p_pred, p_obs) -> np.ndarray:
    """Expected accuracy of independent signs with the given positive shares."""
    p_pred = np.asarray(p_pred, dtype=np.float64)
    p_obs = np.asarray(p_obs, dtype=np.float64)
    return p_pred * p_obs + (1.0 - p_pred) * (1.0 - p_obs)


def cluster_counts(cluster: np.ndarray, pred_pos: np.ndarray, obs_pos: np.ndarray):
    """Per-cluster totals (n, correct, predicted positive, observed positive) and cluster ids."""
    ids, inv = np.unique(np.asarray(cluster), return_inverse=True)
    pred_pos = np.asarray(pred_pos, dtype=bool)
    obs_pos = np.asarray(obs_pos, dtype=bool)
    k = ids.size
    n = np.bincount(inv, minlength=k).astype(np.float64)
    correct = np.bincount(inv, weights=(pred_pos == obs_pos).astype(np.float64), minlength=k)
    pp = np.bincount(inv, weights=pred_pos.astype(np.float64), minlength=k)
    op = np.bincount(inv, weights=obs_pos.astype(np.float64), minlength=k)
    return ids, np.stack([n, correct, pp, op], axis=1)


def accuracy_stats(totals: np.ndarray) -> np.ndarray:
    """(accuracy, p_pred, p_obs, baseline, excess) from summed (n, correct, pred+, obs+) rows."""
    totals = np.asarray(totals, dtype=np.float64)
    n, correct, pp, op = np.moveaxis(totals, -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = correct / n
        p_pred = pp / n
        p_obs = op / n
    base = sign_bias_baseline(p_pred, p_obs)
    return np.stack([acc, p_pred, p_obs, base, acc - base], axis=-1)


def directional_accuracy(mean_d, lfc, cluster, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Directional accuracy, sign-bias baseline and excess, with cluster-bootstrap CIs.

    ``mean_d`` and ``lfc`` are per evaluated pair (callers drop |LFC| below the threshold and
    mean d == 0 first); ``cluster`` is the knocked-down gene of each pair. The bootstrap
    resamples clusters with replacement (``n_boot`` draws, numpy ``default_rng(seed)``) and
    takes percentile intervals of accuracy, baseline and excess.
    """
    mean_d = np.asarray(mean_d, dtype=np.float64)
    lfc = np.asarray(lfc, dtype=np.float64)
    out = {"n_pairs": int(mean_d.size), "n_clusters": 0}
    names = ["accuracy", "p_pred", "p_obs", "baseline", "excess"]
    if mean_d.size == 0:
        return out | {k: np.nan for k in names} | {f"{k}_ci_{e}": np.nan for k in ("accuracy", "baseline", "excess")
                                                    for e in ("low", "high")}
    ids, per = cluster_counts(cluster, mean_d > 0, lfc > 0)
    point = accuracy_stats(per.sum(axis=0))
    out["n_clusters"] = int(ids.size)
    out |= dict(zip(names, map(float, point)))
    boot = bootstrap_clusters(per, n_boot, seed)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    for k in ("accuracy", "baseline", "excess"):
        col = boot[:, names.index(k)]
        col = col[np.isfinite(col)]
        out[f"{k}_ci_low"] = float(np.percentile(col, lo)) if col.size else np.nan
        out[f"{k}_ci_high"] = float(np.percentile(col, hi)) if col.size else np.nan
    return out


def bootstrap_clusters(per_cluster: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, 5) statistics of :func:`accuracy_stats` over clusters resampled with replacement.

    Vectorised: each draw is a multinomial vector of cluster multiplicities; totals = mult @ rows.
    """
    rng = np.random.default_rng(seed)
    k = per_cluster.shape[0]
    mult = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    return accuracy_stats(mult @ per_cluster)


def fisher_tables(predicted: np.ndarray, responsive: np.ndarray, universe: np.ndarray):
    """Per-row 2x2 counts (a, b, c, d) of predicted x responsive genes inside the universe.

    All inputs are boolean (n_knockdowns, n_genes); a = predicted & responsive, b = predicted &
    not responsive, c = responsive & not predicted, d = neither (each within ``universe``).
    """
    p = predicted & universe
    r = responsive & universe
    a = (p & r).sum(axis=1)
    b = (p & ~r).sum(axis=1)
    c = (~p & r).sum(axis=1)
    d = universe.sum(axis=1) - a - b - c
    return a, b, c, d


def spearman(x, y) -> tuple[float, float]:
    """Spearman rho and two-sided p (NaN with fewer than 3 pairs or a constant input)."""
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return np.nan, np.nan
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def binomial_p_half(correct: int, n: int) -> float:
    """Two-sided exact binomial p of ``correct`` out of ``n`` against 0.5 (the reference test)."""
    from scipy.stats import binomtest

    return float(binomtest(int(correct), int(n), 0.5).pvalue) if n > 0 else np.nan
