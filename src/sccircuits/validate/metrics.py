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
import scipy.sparse as sp


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


# ---------------------------------------------------------------------------------------------
# nulls that keep the dependence between pairs (issue 14)
#
# Every target of a source gene inherits the sign of that source's edges, and a knockdown
# shifts many genes the same way, so a predictor whose *target* identity carries no
# information still beats the sign-bias baseline when each source's dominant sign happens to
# match its knockdown's dominant shift. The two permutation baselines below keep that
# structure: within each knockdown the observed signs are shuffled among its predicted targets
# (what target identity adds beyond the knockdown's overall direction), and within each target
# gene they are shuffled among the knockdowns that predict it (beyond the gene's usual
# direction of response). Both are exact and vectorised: after shuffling, the number of pairs
# of a cluster that are predicted and observed positive is hypergeometric.


def within_cluster_null(pred_pos, obs_pos, cluster, n_perm: int = 1000, seed: int = 0) -> np.ndarray:
    """Accuracies of ``n_perm`` draws with the observed signs shuffled among the pairs of each cluster."""
    _, per = cluster_counts(cluster, pred_pos, obs_pos)
    n, _, pp, op = per.astype(np.int64).T
    rng = np.random.default_rng(seed)
    both = rng.hypergeometric(op, n - op, pp, size=(n_perm, n.size))  # pred+ & obs+ per cluster
    return (2 * both + n - pp - op).sum(axis=1) / n.sum()


def within_cluster_baseline(pred_pos, obs_pos, cluster) -> float:
    """Expected accuracy when observed signs are shuffled within each cluster (mean of the null)."""
    _, per = cluster_counts(cluster, pred_pos, obs_pos)
    n, _, pp, op = per.T
    return float((n - pp - op + 2 * pp * op / n).sum() / n.sum())


def permutation_baselines(mean_d, lfc, knockdown, target, n_perm: int = 1000, seed: int = 0) -> dict:
    """Accuracy against the within-knockdown and within-target permutation baselines.

    ``knockdown`` and ``target``: the cluster of each pair (e.g. cell line + knocked-down gene,
    cell line + target gene). For each: baseline (expected accuracy under the shuffle), excess
    = accuracy - baseline and one-sided permutation p = (1 + #null >= accuracy) / (1 + N).
    """
    mean_d = np.asarray(mean_d, dtype=np.float64)
    lfc = np.asarray(lfc, dtype=np.float64)
    out: dict = {}
    pred, obs = mean_d > 0, lfc > 0
    acc = float(np.mean(pred == obs)) if mean_d.size else np.nan
    for name, cluster in (("within_knockdown", knockdown), ("within_target", target)):
        if not mean_d.size:
            out |= {f"{name}_baseline": np.nan, f"{name}_excess": np.nan, f"{name}_p": np.nan}
            continue
        base = within_cluster_baseline(pred, obs, cluster)
        null = within_cluster_null(pred, obs, cluster, n_perm, seed)
        k = np.sum(null >= acc - 1e-12)
        out |= {f"{name}_baseline": base, f"{name}_excess": acc - base, f"{name}_p": float((1 + k) / (1 + n_perm))}
    return out


def two_way_bootstrap(pred_pos, obs_pos, row, col, group=None, n_boot: int = 1000, seed: int = 0,
                      max_elements: int = 5_000_000) -> np.ndarray:
    """(n_boot, 7) bootstrap draws resampling knockdowns (``row``) and targets (``col``) independently.

    A pair's weight in a draw is (multiplicity of its knockdown) x (multiplicity of its target),
    so pairs sharing a knockdown or a target move together. Columns: accuracy, p_pred, p_obs,
    sign-bias baseline, excess, within-knockdown baseline (clusters ``group``, default ``row``)
    and excess over it. Draws are processed in chunks of at most ``max_elements`` weights.
    """
    pred = np.asarray(pred_pos, dtype=bool)
    obs = np.asarray(obs_pos, dtype=bool)
    _, ri = np.unique(np.asarray(row), return_inverse=True)
    _, ci = np.unique(np.asarray(col), return_inverse=True)
    _, gi = np.unique(np.asarray(row if group is None else group), return_inverse=True)
    R, C, G = ri.max() + 1, ci.max() + 1, gi.max() + 1
    vals = np.stack([np.ones(pred.size), pred == obs, pred, obs], axis=1).astype(np.float64)  # (P, 4)
    onehot = sp.csr_matrix((np.ones(pred.size), (np.arange(pred.size), gi)), shape=(pred.size, G))
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, 7))
    step = max(1, int(max_elements // max(pred.size, 1)))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w = (rng.multinomial(R, np.full(R, 1.0 / R), size=b)[:, ri]
             * rng.multinomial(C, np.full(C, 1.0 / C), size=b)[:, ci]).astype(np.float64)  # (b, P)
        stats = accuracy_stats(w @ vals)
        n, pp, op = (np.asarray(onehot.T @ (w * vals[:, j]).T).T for j in (0, 2, 3))  # each (b, G)
        with np.errstate(divide="ignore", invalid="ignore"):
            wk = np.where(n > 0, n - pp - op + 2 * pp * op / np.where(n > 0, n, 1), 0.0).sum(1) / n.sum(1)
        out[start:start + b] = np.column_stack([stats, wk, stats[:, 0] - wk])
    return out


def accuracy_with_nulls(mean_d, lfc, knockdown, target, cell_line=None, n_perm: int = 1000, n_boot: int = 1000,
                        seed: int = 0, ci: float = 0.95) -> dict:
    """Directional accuracy with the sign-bias, within-knockdown and within-target baselines and
    two-way bootstrap CIs (knocked-down genes and target genes resampled independently).

    ``knockdown`` / ``target``: gene symbols per pair; ``cell_line`` (optional) makes the
    permutation clusters (line, knockdown) and (line, target). Keys: n_pairs, n_clusters
    (knocked-down genes), n_targets, accuracy, p_pred, p_obs, baseline, excess,
    within_knockdown_{baseline,excess,p}, within_target_{baseline,excess,p}, and ``*_ci_low`` /
    ``*_ci_high`` for accuracy, baseline, excess and within_knockdown_excess.
    """
    mean_d = np.asarray(mean_d, dtype=np.float64)
    lfc = np.asarray(lfc, dtype=np.float64)
    kd = np.asarray(knockdown).astype(str)
    tg = np.asarray(target).astype(str)
    line = np.full(kd.size, "") if cell_line is None else np.asarray(cell_line).astype(str)
    names = ["accuracy", "p_pred", "p_obs", "baseline", "excess"]
    ci_keys = ["accuracy", "baseline", "excess", "within_knockdown_excess"]
    out: dict = {"n_pairs": int(mean_d.size), "n_clusters": int(np.unique(kd).size), "n_targets": int(np.unique(tg).size)}
    kd_cluster = np.char.add(np.char.add(line, "\t"), kd)
    tg_cluster = np.char.add(np.char.add(line, "\t"), tg)
    out |= permutation_baselines(mean_d, lfc, kd_cluster, tg_cluster, n_perm, seed)
    if mean_d.size == 0:
        return out | {k: np.nan for k in names} | {f"{k}_ci_{e}": np.nan for k in ci_keys for e in ("low", "high")}
    pred, obs = mean_d > 0, lfc > 0
    _, per = cluster_counts(kd, pred, obs)
    out |= dict(zip(names, map(float, accuracy_stats(per.sum(axis=0)))))
    boot = two_way_bootstrap(pred, obs, kd, tg, kd_cluster, n_boot=n_boot, seed=seed)
    cols = {"accuracy": 0, "baseline": 3, "excess": 4, "within_knockdown_excess": 6}
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    for k, j in cols.items():
        col = boot[:, j][np.isfinite(boot[:, j])]
        out[f"{k}_ci_low"] = float(np.percentile(col, lo)) if col.size else np.nan
        out[f"{k}_ci_high"] = float(np.percentile(col, hi)) if col.size else np.nan
    return out
