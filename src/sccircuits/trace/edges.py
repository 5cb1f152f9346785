"""From accumulated statistics to the published tables: edges, per-feature summaries, noise floor.

Pure functions of an :class:`~sccircuits.trace.accumulators.Accumulators` and the thresholds
(no model, no I/O), so shards merged later give the same tables as a single run.

Per test (source layer s, source feature f, target layer t, target feature g) over the n
cells where f fired:

* ``mean_delta``, ``sd_delta`` (ddof 1), ``cohens_d`` = mean / sd (paired d_z)
* ``consistency`` = max(#>0, n - #>0) / n (published definition: zeros count as non-positive)
* ``consistency_nonzero`` = fraction of the nonzero observations whose sign agrees with the
  sign of the mean (NaN when all are zero or the mean is 0)
* ``p_value``: two-sided paired t-test; ``q_value``: Benjamini-Hochberg over every test of the
  run (every (s, f, t, g) with n >= min_cells and sd > 0)

Two criteria, both always computed (``passes_published``, ``passes_null``); the configured one
is the column :data:`EDGE_COLUMN` that every downstream stage reads:

* published: |d| > d_threshold, consistency > consistency_threshold, n >= min_cells (and
  q <= max_q when set); ``in_cap`` marks the top ``top_per_layer`` of those by |d| per
  (source feature, target layer) (ties broken by target feature id). The published edge set is
  the capped one (``edge = in_cap``).
* null (default; docs/planted-circuits.md): the effect per unit ablation norm
  ``r = mean_delta / size`` is compared with the same quantity of the layer's null draws *for
  the same target*: ``null_z = (r - m_g) / s_g`` (location m_g and spread s_g of the K null
  draws, spread shrunk towards the layer pair's median); ``p_null`` is its two-sided p against
  the empirical null of the run: the leave-one-out z of every null draw, summarised as a
  t distribution widened to cover the draws' own quantiles (:func:`null_scale`; a pure rank p
  from a few hundred draws could not reach BH thresholds); ``q_null`` BH over every test of the run. An edge has q_null <= fdr, ``rel_change`` = |mean_delta - m_g size| / (the target's
  mean clean activation at the averaged positions) >= min_rel_change, nonzero consistency >
  consistency_threshold, at least min_cells cells with a nonzero change, and the change beyond
  the null has the sign of the mean change. No cap. With ``source_norm="median_mad"`` each
  source's z (and each null draw's) is first centred on its median over the block's targets and
  divided by its robust spread, and "beyond the null" includes that median (:func:`null_z`).

With ``threshold="decoy"`` / ``"decoy_plus"`` the null rule's cut is chosen by target-decoy
counting instead of BH (:func:`decoy_cut`): real and null-draw tests passing the other gates are
ranked by one score (``decoy_score``: the null p, or |d|) and the cut is the loosest whose
estimated FDR is <= fdr.

The estimated FDR of a criterion is (null draws passing it, scaled to the number of real tests)
/ (real tests passing it), per layer pair and summed over the run (:func:`null_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from scipy import stats as _st

from ..artifacts import EDGE_COLUMN  # noqa: F401  (the column contract lives in artifacts; re-exported)
from ..stats import bh_fdr, paired_d, paired_t_p
from .accumulators import Accumulators, PairStats


EDGE_COLUMNS = ["model", "source_layer", "source_feature", "source_label", "source_label_id",
                "target_layer", "target_feature", "target_label", "target_label_id", "n_cells",
                "mean_delta", "sd_delta", "cohens_d", "consistency", "consistency_nonzero",
                "p_value", "q_value", "effect", "rel_change", "null_z", "p_null", "q_null",
                "passes_published", "in_cap", "passes_null", "above_noise_floor", EDGE_COLUMN]

NULL_PRIOR_DF = 4.0
"""Weight (degrees of freedom) of the layer pair's median null variance in each target's
null spread (shrinkage: with K draws a target's own spread has K - 1)."""

SCALE_FLOOR = 0.1
"""Smallest target scale of the magnitude floor, as a fraction of the median target's clean
activation in the layer pair."""

NULL_COLUMNS = ["source_layer", "target_layer", "n_tests", "n_null_draws", "n_null_tests", "abs_d_q95",
                "abs_d_q99", "abs_d_max", "n_null_passing", "frac_null_passing", "n_real_passing",
                "expected_false_published", "n_null_passing_null", "n_real_passing_null", "expected_false_null",
                "expected_false_null_model"]


@dataclass
class Thresholds:
    """Edge criteria (taken from a TraceConfig)."""

    d_threshold: float = 0.5
    consistency_threshold: float = 0.7
    consistency_kind: str = "reference"
    min_cells: int = 3
    max_q: float | None = None
    top_per_layer: int = 50
    criterion: str = "null"
    fdr: float = 0.05
    min_rel_change: float = 0.05
    source_norm: str = "none"
    threshold: str = "bh"
    decoy_score: str = "null_z"
    null_location: str = "draws"

    @classmethod
    def from_config(cls, cfg) -> "Thresholds":
        return cls(cfg.d_threshold, cfg.consistency_threshold, cfg.consistency_kind, cfg.min_cells,
                   cfg.max_q, cfg.top_per_layer, cfg.criterion, cfg.fdr, cfg.min_rel_change, cfg.source_norm,
                   cfg.threshold, cfg.decoy_score, cfg.null_location)


def consistency(pos: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Published sign consistency max(#>0, n - #>0) / n (zeros count as non-positive)."""
    pos = np.asarray(pos, np.float64)
    n = np.broadcast_to(np.asarray(n, np.float64), pos.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.maximum(pos, n - pos) / n, np.nan)


def consistency_nonzero(pos: np.ndarray, neg: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Fraction of nonzero observations with the sign of the mean (NaN if none or mean == 0)."""
    pos = np.asarray(pos, np.float64)
    neg = np.asarray(neg, np.float64)
    agree = np.where(mean > 0, pos, np.where(mean < 0, neg, np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pos + neg > 0, agree / (pos + neg), np.nan)


def pair_statistics(ps: PairStats, min_cells: int) -> dict[str, np.ndarray]:
    """Every statistic of every test in one (s, t) block of accumulators, arrays (F, T)."""
    n = np.broadcast_to(ps.n[:, None], ps.mean.shape)
    sd = ps.sd()
    d = paired_d(ps.mean, sd)
    p = paired_t_p(ps.mean, sd, n)
    valid = (n >= min_cells) & np.isfinite(d)
    return {"n": n, "mean": ps.mean, "sd": sd, "d": np.where(valid, d, np.nan),
            "p": np.where(valid, p, np.nan), "consistency": consistency(ps.pos, n),
            "consistency_nonzero": consistency_nonzero(ps.pos, ps.neg, ps.mean), "valid": valid,
            "informative": ps.pos.astype(np.int64) + ps.neg}


def _passes(st: dict[str, np.ndarray], q: np.ndarray, th: Thresholds) -> np.ndarray:
    """The published rule (uncapped)."""
    cons = st["consistency"] if th.consistency_kind == "reference" else st["consistency_nonzero"]
    with np.errstate(invalid="ignore"):
        ok = st["valid"] & (np.abs(st["d"]) > th.d_threshold) & (np.nan_to_num(cons, nan=0.0) > th.consistency_threshold)
        if th.max_q is not None:
            ok &= np.nan_to_num(q, nan=1.0) <= th.max_q
    return ok


# ----------------------------------------------------------------------------- the null criterion
def _per_unit(ps: PairStats) -> tuple[np.ndarray, np.ndarray]:
    """(mean change per unit ablation norm (slots, T), mean ablation norm (slots,)); NaN where n = 0."""
    n = ps.n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.where(n > 0, ps.size / n, np.nan)
        return ps.mean / size[:, None], size


def _shrunk_var(v: np.ndarray, df: np.ndarray | float, prior: float) -> np.ndarray:
    return (df * v + NULL_PRIOR_DF * prior) / (df + NULL_PRIOR_DF)


def median_mad(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of z (a source's or null draw's z over the targets of a layer pair): the median
    and the spread 1.4826 x MAD, at least 1 (NaN ignored; 0 and 1 for an all-NaN row)."""
    z = np.where(np.isfinite(z), z, np.nan)
    med, spread = np.zeros(len(z)), np.ones(len(z))
    rows = np.isfinite(z).any(1)
    if rows.any():
        med[rows] = np.nanmedian(z[rows], axis=1)
        spread[rows] = np.maximum(1.4826 * np.nanmedian(np.abs(z[rows] - med[rows, None]), axis=1), 1.0)
    return med, spread


def _source_norm(z: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z centred on its row median and divided by its row spread, the row median in change per
    unit norm: median x ``scale`` of each target) (:func:`median_mad`)."""
    med, spread = median_mad(z)
    return (z - med[:, None]) / spread[:, None], med[:, None] * scale


def null_z(real: PairStats, null: PairStats, min_cells: int, source_norm: str = "none", location: str = "draws"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-target null comparison of one (source layer, target layer) block.

    Returns ``(z, z_null, m, size, m_null)``: z (F, T) of each real test against its target's
    null draws, leave-one-out z (K, T) of each null draw against the other draws (NaN where a
    draw has fewer than ``min_cells`` cells), the location m (F, T) each real test's change per
    unit norm is compared with, the real tests' mean ablation norm (F,), and the leave-one-out
    location (K, T) each null draw is compared with (so a draw's effect beyond the null is
    measured as a real test's is: against draws it is not part of). Both z are scaled to unit
    variance under the null (factor sqrt(1 + 1/K)).

    The location is the null draws' mean per target; with ``source_norm="median_mad"`` each
    row (real source or null draw alike) is also centred on its own median z over the targets
    and divided by its own spread (:func:`median_mad`), and its location includes that median
    (converted to change per unit norm with each target's null scale). A source whose ablation
    shifts every target of the layer (its downstream writes change the stream's norm, and the
    next LayerNorm rescales all targets; the null draws, features without such writes, show no
    such shift) is then judged by how far a target stands out from its own other targets;
    specific edges are a few targets of a layer.

    With ``location="pooled"`` each target's location and spread are the median and 1.4826 x
    MAD of the real sources' and the null draws' changes together (:func:`pooled_location`),
    and every test, real or null draw, is compared with them."""
    r, size = _per_unit(real)
    rn, _ = _per_unit(null)
    ok = null.n >= max(min_cells, 2)
    x = rn[ok]
    K, T = x.shape
    nan = np.full((len(null.n), T), np.nan)
    m_null = nan.copy()
    if K < 3:
        return np.full(r.shape, np.nan), nan, np.full(r.shape, np.nan), size, m_null

    def finish(z, zn, m, m_o, norm_scale, norm_scale_o):
        """NaN for non-finite z, the optional per-source centring, the null rows put back in place."""
        z = np.where(np.isfinite(z), z, np.nan)
        zn = np.where(np.isfinite(zn), zn, np.nan)
        m, m_o = np.broadcast_to(m, z.shape), np.broadcast_to(m_o, zn.shape)
        if source_norm == "median_mad":
            z, shift = _source_norm(z, norm_scale)
            zn, shift_n = _source_norm(zn, norm_scale_o)
            m, m_o = m + shift, m_o + shift_n
        nan[ok] = zn
        m_null[ok] = m_o
        return z, nan, m, size, m_null

    if location == "pooled":
        m, scale = pooled_location(r[real.n >= max(min_cells, 2)], x)
        with np.errstate(divide="ignore", invalid="ignore"):
            z, zn = (r - m) / scale, (x - m) / scale
        return finish(z, zn, m, m, scale[None, :], scale[None, :])
    m = x.mean(0)
    v = x.var(0, ddof=1)
    pos = v[v > 0]
    prior = float(np.median(pos)) if pos.size else 0.0
    s2 = _shrunk_var(v, K - 1, prior)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(s2 * (1 + 1 / K))
        z = (r - m) / scale
        # leave-one-out: each draw against the K - 1 others
        tot, tot2 = x.sum(0), (x ** 2).sum(0)
        m_o = (tot - x) / (K - 1)
        v_o = np.maximum((tot2 - x ** 2 - (K - 1) * m_o ** 2) / (K - 2), 0.0)
        scale_o = np.sqrt(_shrunk_var(v_o, K - 2, prior) * (1 + 1 / (K - 1)))
        zn = (x - m_o) / scale_o
    return finish(z, zn, m, m_o, np.where(np.isfinite(scale), scale, 0.0)[None, :],
                  np.where(np.isfinite(scale_o), scale_o, 0.0))


def pooled_location(real: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per target (column): the median and the spread 1.4826 x MAD of the changes per unit norm
    of the real sources (``real``, (F, T)) and the null draws (``draws``, (K, T)) together, an
    empirical null in Efron's sense: a target's specific edges are a few of its F + K tests, so
    the bulk of them gives its generic response (how much any ablation of that size moves it),
    with F + K values instead of the K draws alone. A spread of 0 (most tests exactly
    unchanged) is raised to :data:`SCALE_FLOOR` x the block's median positive spread."""
    pool = np.concatenate([real, draws])
    pool = np.where(np.isfinite(pool), pool, np.nan)
    T = pool.shape[1]
    m, spread = np.zeros(T), np.zeros(T)
    cols = np.isfinite(pool).any(0)
    if cols.any():
        m[cols] = np.nanmedian(pool[:, cols], axis=0)
        spread[cols] = 1.4826 * np.nanmedian(np.abs(pool[:, cols] - m[cols]), axis=0)
    pos = spread[spread > 0]
    floor = SCALE_FLOOR * float(np.median(pos)) if pos.size else 0.0
    spread = np.where(cols, np.maximum(spread, floor), np.nan)
    return m, np.where(spread > 0, spread, np.nan)


def null_scale(null_abs: np.ndarray, df: float) -> float:
    """Scale c >= 1 of the empirical null: the largest ratio, at the 50th, 75th and 90th
    percentiles, of the null draws' |z| to the |t_df| distribution (so p never undercuts what
    the null draws themselves show)."""
    if null_abs.size < 10:
        return np.nan
    qs = np.array([0.5, 0.75, 0.9])
    return float(max(1.0, np.max(np.quantile(null_abs, qs) / _st.t.ppf((1 + qs) / 2, df))))


def null_p(z: np.ndarray, scale: float, df: float) -> np.ndarray:
    """Two-sided p of z against the empirical null ``scale * t_df`` (NaN where z is NaN)."""
    z = np.asarray(z, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(z), 2 * _st.t.sf(np.abs(z) / scale, df), np.nan)


def _rel_change(effect: np.ndarray, ps: PairStats) -> np.ndarray:
    """|effect| / the target's clean activation: its mean at the averaged positions, but never
    less than its mean over every test of the block, nor than :data:`SCALE_FLOOR` x the median
    of those means over the block's targets (a target nearly off where the source fires, or
    almost everywhere, would turn a negligible change into a large ratio); inf where no target
    of the block ever fired."""
    n = ps.n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        clean = ps.clean / n[:, None]
        pooled = ps.clean.sum(0) / max(n.sum(), 1.0)
        floor = SCALE_FLOOR * float(np.median(pooled)) if pooled.size else 0.0
        denom = np.maximum(np.maximum(np.nan_to_num(clean, nan=0.0), pooled[None, :]), floor)
        return np.where(denom > 0, np.abs(effect) / denom, np.where(effect != 0, np.inf, 0.0))


def _passes_null_rule(st: dict, effect: np.ndarray, rel: np.ndarray, p: np.ndarray, p_cut: float,
                      th: Thresholds) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (st["valid"] & (np.nan_to_num(p, nan=np.inf) <= p_cut) & (rel >= th.min_rel_change)
                & (np.nan_to_num(st["consistency_nonzero"], nan=0.0) > th.consistency_threshold)
                & (st["informative"] >= th.min_cells) & (np.sign(effect) == np.sign(st["mean"])))


@dataclass
class _Block:
    """Every statistic of one (source layer, target layer) block of a run."""

    st: dict
    q: np.ndarray
    published: np.ndarray
    z: np.ndarray | None = None
    p_null: np.ndarray | None = None
    q_null: np.ndarray | None = None
    null_p: np.ndarray | None = None
    effect: np.ndarray | None = None
    rel: np.ndarray | None = None
    null_st: dict | None = None
    null_z: np.ndarray | None = None
    null_effect: np.ndarray | None = None
    null_rel: np.ndarray | None = None
    sig: np.ndarray | None = None
    null_sig: np.ndarray | None = None


def _blocks(acc: Accumulators, th: Thresholds) -> tuple[dict, float]:
    """Statistics of every (s, t) block, BH q (t-test and null), and the null rule's p cut-off."""
    keys = sorted(k for k in acc.pairs if k[0] == "real")
    blocks = {}
    for k in keys:
        st = pair_statistics(acc.pairs[k], th.min_cells)
        blocks[k[1:]] = _Block(st, None, None)
    # BH over every test of the run
    flat = np.concatenate([b.st["p"].ravel() for b in blocks.values()]) if blocks else np.zeros(0)
    _split(blocks, bh_fdr(flat), "q")
    for b in blocks.values():
        b.published = _passes(b.st, b.q, th)
    # the null criterion
    have_null = all(("null", s, t) in acc.pairs for s, t in blocks)
    if not have_null or not blocks:
        return blocks, 0.0
    for (s, t), b in blocks.items():
        real, null = acc.pairs[("real", s, t)], acc.pairs[("null", s, t)]
        b.z, b.null_z, m, size, m_null = null_z(real, null, th.min_cells, th.source_norm, th.null_location)
        b.effect = real.mean - m * size[:, None]
        b.rel = _rel_change(b.effect, real)
        b.null_st = pair_statistics(null, th.min_cells)
        _, nsize = _per_unit(null)
        b.null_effect = null.mean - m_null * nsize[:, None]
        b.null_rel = _rel_change(b.null_effect, null)
        b.z = np.where(b.st["valid"], b.z, np.nan)
    null_abs = np.concatenate([np.abs(b.null_z[np.isfinite(b.null_z)]) for b in blocks.values()])
    df = _null_df(acc, th.null_location)
    scale = null_scale(null_abs, df)
    for b in blocks.values():
        b.p_null = null_p(b.z, scale, df)
        b.null_p = null_p(b.null_z, scale, df)
    flat = np.concatenate([b.p_null.ravel() for b in blocks.values()])
    q = bh_fdr(flat)
    _split(blocks, q, "q_null")
    for b in blocks.values():
        # what the cut applies to (smaller = more significant): the null p, or -|d| (decoy_score d)
        if th.threshold != "bh" and th.decoy_score == "d":
            b.sig, b.null_sig = -np.abs(b.st["d"]), -np.abs(b.null_st["d"])
        else:
            b.sig, b.null_sig = b.p_null, b.null_p
    if th.threshold != "bh":
        return blocks, decoy_cut(blocks, th)
    with np.errstate(invalid="ignore"):
        rejected = flat[np.nan_to_num(q, nan=2.0) <= th.fdr]
    return blocks, float(rejected.max()) if rejected.size else -np.inf  # nothing rejected: nothing passes, not even p == 0


_ANY = float(np.finfo(np.float64).max)
"""A cut every finite score passes (the gates without the cut)."""


def _null_rule_masks(b: _Block, th: Thresholds, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """(real tests passing the null rule at ``cut``, the block's null-draw tests passing it:
    each draw against the others, leave-one-out, as :func:`null_floor` counts them)."""
    nst = dict(b.null_st, valid=b.null_st["valid"] & np.isfinite(b.null_z))
    return (_passes_null_rule(b.st, b.effect, b.rel, b.sig, cut, th),
            _passes_null_rule(nst, b.null_effect, b.null_rel, b.null_sig, cut, th))


def decoy_cut(blocks: dict, th: Thresholds) -> float:
    """Target-decoy cut of the null rule (``threshold="decoy"`` / ``"decoy_plus"``).

    Every real test and every null-draw test that passes the null rule's other gates (magnitude
    floor, nonzero consistency, informative cells, sign) is scored, smaller = stronger, by
    (``decoy_score``) ``null_z``: its p against the empirical null (a monotone function of its
    |null z|, so only the ranking matters, not how well the widened t fits the draws), or ``d``:
    -|cohen's d|. For a cut c, the estimated FDR is (null-draw tests with score <= c,
    each block's count scaled to its number of real tests as :func:`null_floor` scales them)
    / (real tests with score <= c); the cut is the largest real score at which that is <= ``fdr`` (-inf, i.e.
    no edge, when none is). ``decoy_plus`` adds one null-draw pass (at the run's overall scale) to
    the numerator, as knockoff+ does: it cannot keep a handful of edges on the strength of zero
    null passes."""
    real_p, null_p_, weight = [], [], []  # scores (smaller = stronger)
    n_real_tests = n_null_tests = 0
    for b in blocks.values():
        real, null = _null_rule_masks(b, th, _ANY)  # every gate but the cut
        rp, npv = b.sig[real], b.null_sig[null]
        n_real = int(b.st["valid"].sum())
        n_null = int(b.null_st["valid"].sum())
        n_real_tests, n_null_tests = n_real_tests + n_real, n_null_tests + n_null
        real_p.append(rp)
        null_p_.append(npv)
        weight.append(np.full(npv.size, n_real / n_null if n_null else 0.0))
    rp, npv, w = np.concatenate(real_p), np.concatenate(null_p_), np.concatenate(weight)
    if not rp.size:
        return -np.inf
    cuts = np.unique(rp)
    n_real_at = np.searchsorted(np.sort(rp), cuts, side="right")
    order = np.argsort(npv, kind="stable")
    cum_w = np.r_[0.0, np.cumsum(w[order])]
    expected = cum_w[np.searchsorted(npv[order], cuts, side="right")]
    if th.threshold == "decoy_plus":
        expected = expected + (n_real_tests / n_null_tests if n_null_tests else 0.0)
    ok = expected / n_real_at <= th.fdr
    return float(cuts[ok].max()) if ok.any() else -np.inf


def _null_df(acc: Accumulators, location: str = "draws") -> float:
    """Degrees of freedom of the null z: with the draws' location, (K - 2) of the other draws plus
    the prior's, with K the smallest number of null draws of a source layer; with the pooled
    location, F + K - 2 (F traced features and K draws of the layer with fewest). The null scale
    (:func:`null_scale`) widens the t further wherever the draws' own z need it."""
    ks = {s: len(f) for s, f in acc.null_features.items() if len(f) >= 3}
    if not ks:
        return np.nan
    if location == "pooled":
        return float(min(len(acc.features[s]) + k for s, k in ks.items()) - 2)
    return float(min(ks.values()) - 2 + NULL_PRIOR_DF)


def _split(blocks: dict, flat: np.ndarray, name: str) -> None:
    off = 0
    for b in blocks.values():
        size = b.st["p"].size
        setattr(b, name, flat[off:off + size].reshape(b.st["p"].shape))
        off += size


def null_floor(acc: Accumulators, th: Thresholds, blocks: dict | None = None, p_cut: float | None = None) -> pd.DataFrame:
    """Per (source layer, target layer): |d| quantiles of the null draws' tests, and for each
    criterion how many null tests and real tests pass it, with the expected number of false
    real passes (null passes x real tests / null tests). Their sums over the run give the
    estimated FDR of each criterion (:func:`estimated_fdr`). For the null criterion with the BH
    cut, ``expected_false_null_model`` is also the model's count: the block's tests with a null
    p times the p cut (BH's own plug-in, as if every test were null)."""
    if blocks is None:
        blocks, p_cut = _blocks(acc, th)
    rows = []
    for (s, t), b in sorted(blocks.items()):
        if ("null", s, t) not in acc.pairs:
            continue
        nst = b.null_st if b.null_st is not None else pair_statistics(acc.pairs[("null", s, t)], th.min_cells)
        a = np.abs(nst["d"][nst["valid"]])
        n_real = int(b.st["valid"].sum())
        passing = int(_passes(nst, bh_fdr(nst["p"]) if th.max_q is not None else np.full(nst["d"].shape, np.nan), th).sum())
        ratio = n_real / a.size if a.size else np.nan
        row = {"source_layer": s, "target_layer": t, "n_tests": n_real, "n_null_draws": len(acc.pairs[("null", s, t)].n),
               "n_null_tests": int(a.size),
               "abs_d_q95": float(np.quantile(a, 0.95)) if a.size else np.nan,
               "abs_d_q99": float(np.quantile(a, 0.99)) if a.size else np.nan,
               "abs_d_max": float(a.max()) if a.size else np.nan,
               "n_null_passing": passing, "frac_null_passing": passing / a.size if a.size else np.nan,
               "n_real_passing": int(b.published.sum()), "expected_false_published": passing * ratio,
               "n_null_passing_null": 0, "n_real_passing_null": 0, "expected_false_null": np.nan,
               "expected_false_null_model": np.nan}
        if b.z is not None:
            real_ok, null_ok = _null_rule_masks(b, th, p_cut)
            n_np, real_np = int(null_ok.sum()), int(real_ok.sum())
            row.update(n_null_passing_null=n_np, n_real_passing_null=real_np, expected_false_null=n_np * ratio)
            if th.threshold == "bh":
                row["expected_false_null_model"] = float(np.isfinite(b.p_null).sum()) * max(float(p_cut), 0.0)
        rows.append(row)
    return pd.DataFrame(rows, columns=NULL_COLUMNS)


def estimated_fdr(null: pd.DataFrame) -> dict[str, float | None]:
    """Estimated FDR of each criterion over the run: expected false passes / real passes.

    ``published``: from the null draws' passes. ``null``: the larger of the empirical estimate
    (``null_empirical``, the null draws' passes) and, with the BH cut, the model's
    (``null_model``: tests x p cut / real passes, what BH itself assumes). The empirical count
    sees a p-value model that is wrong (heavy tails, a null that is too narrow) but rests on few
    null passes at a strict cut, where one pass more or less moves it by F/K false edges; the
    model's count is the floor there (docs/planted-circuits.md, "The estimate")."""
    out = {}

    def ratio(exp: str, real: str) -> float | None:
        if exp not in null or not len(null):
            return None
        e, r = null[exp].sum(min_count=1), null[real].sum()
        return None if not np.isfinite(e) else (float(min(e / r, 1.0)) if r else (0.0 if e == 0 else 1.0))

    out["published"] = ratio("expected_false_published", "n_real_passing")
    out["null_empirical"] = ratio("expected_false_null", "n_real_passing_null")
    out["null_model"] = ratio("expected_false_null_model", "n_real_passing_null")
    parts = [v for v in (out["null_empirical"], out["null_model"]) if v is not None]
    out["null"] = max(parts) if parts else None
    return out


def d_distribution(acc: Accumulators, th: Thresholds, bins: np.ndarray | None = None) -> pd.DataFrame:
    """Histogram of |d| over every valid test, real and null (for the report's side-by-side figure)."""
    bins = np.concatenate([np.linspace(0, 5, 51), [np.inf]]) if bins is None else bins
    rows = []
    for kind in acc.kinds():
        vals = [np.abs(st["d"][st["valid"]]) for st in (pair_statistics(ps, th.min_cells)
                                                         for (k, _, _), ps in sorted(acc.pairs.items()) if k == kind)]
        a = np.concatenate(vals) if vals else np.zeros(0)
        counts, _ = np.histogram(a, bins=bins)
        rows += [{"kind": kind, "abs_d_lo": float(lo), "abs_d_hi": float(hi), "count": int(c)}
                 for lo, hi, c in zip(bins[:-1], bins[1:], counts)]
    return pd.DataFrame(rows, columns=["kind", "abs_d_lo", "abs_d_hi", "count"])


def _label_maps(catalogs: dict[int, pd.DataFrame] | None, prefix: str = "label") -> dict[int, tuple[dict, dict]]:
    """Per layer (feature -> label name, feature -> label id) from the catalog columns
    ``{prefix}_name`` / ``{prefix}_id``, else ``label_name`` / ``label_id``. Sources use prefix
    ``source_label``: catalogs annotated with ``--compat reference`` carry the published
    source-label rule there (:func:`sccircuits.annotate.labels.first_listed_labels`)."""
    out = {}
    for layer, cat in (catalogs or {}).items():
        feats = cat["feature"].to_numpy()
        p = prefix if f"{prefix}_name" in cat else "label"
        name = cat[f"{p}_name"] if f"{p}_name" in cat else pd.Series(["unannotated"] * len(cat))
        lid = cat[f"{p}_id"] if f"{p}_id" in cat else pd.Series([""] * len(cat))
        out[int(layer)] = (dict(zip(feats.tolist(), name.fillna("unannotated").astype(str))),
                           dict(zip(feats.tolist(), lid.fillna("").astype(str))))
    return out


def _labels(maps, layer: int, feats: np.ndarray) -> tuple[list[str], list[str]]:
    names, ids = maps.get(int(layer), ({}, {}))
    return ([names.get(int(f), "unannotated") for f in feats], [ids.get(int(f), "") for f in feats])


def build_tables(acc: Accumulators, th: Thresholds, model: str,
                 catalogs: dict[int, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(edges, features, null) tables of a finished trace. Edge rows: every test passing
    either criterion; column :data:`EDGE_COLUMN` marks the configured criterion's edges."""
    blocks, p_cut = _blocks(acc, th)
    if th.criterion == "null" and any(b.z is None for b in blocks.values()):
        raise InputError(None, "criterion 'null' needs the null ablations, which this trace did not run "
                               "(trace with the null ablation, or use --criterion published)")
    null = null_floor(acc, th, blocks, p_cut)
    floor = {(r.source_layer, r.target_layer): r.abs_d_q99 for r in null.itertuples()}
    maps, src_maps = _label_maps(catalogs), _label_maps(catalogs, "source_label")
    nan = lambda b, x: np.full(b.st["d"].shape, np.nan) if x is None else x  # noqa: E731

    edge_parts, feat_rows = [], []
    for (s, t), b in sorted(blocks.items()):
        st, q = b.st, b.q
        null_ok = (_passes_null_rule(st, b.effect, b.rel, b.sig, p_cut, th) if b.z is not None
                   else np.zeros(st["d"].shape, bool))
        slot, g = np.nonzero(b.published | null_ok)
        feats = acc.features[s]
        d = st["d"][slot, g]
        pub = b.published[slot, g]
        # cap among the published rule's edges: rank by |d| within each source feature (ties: lower target first)
        in_cap = np.zeros(len(slot), bool)
        ps_, pg = slot[pub], g[pub]
        pd_ = d[pub]
        order = np.lexsort((pg, -np.abs(pd_), ps_))
        rank = np.empty(len(order), np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(ps_[order])) + 1] if len(order) else np.zeros(0, np.int64)
        seg_start = np.repeat(starts, np.diff(np.r_[starts, len(order)])) if len(order) else np.zeros(0, np.int64)
        rank[order] = np.arange(len(order)) - seg_start
        in_cap[pub] = rank < th.top_per_layer if th.top_per_layer > 0 else True
        passes_null = null_ok[slot, g]
        src_names, src_ids = _labels(src_maps, s, feats[slot])
        tgt_names, tgt_ids = _labels(maps, t, g)
        fl = floor.get((s, t), np.nan)
        edge_parts.append(pd.DataFrame({
            "model": model, "source_layer": np.full(len(slot), s, np.int64), "source_feature": feats[slot],
            "source_label": src_names, "source_label_id": src_ids,
            "target_layer": np.full(len(slot), t, np.int64), "target_feature": g.astype(np.int64),
            "target_label": tgt_names, "target_label_id": tgt_ids, "n_cells": st["n"][slot, g].astype(np.int64),
            "mean_delta": st["mean"][slot, g], "sd_delta": st["sd"][slot, g], "cohens_d": d,
            "consistency": st["consistency"][slot, g], "consistency_nonzero": st["consistency_nonzero"][slot, g],
            "p_value": st["p"][slot, g], "q_value": q[slot, g], "effect": nan(b, b.effect)[slot, g],
            "rel_change": nan(b, b.rel)[slot, g], "null_z": nan(b, b.z)[slot, g],
            "p_null": nan(b, b.p_null)[slot, g], "q_null": nan(b, b.q_null)[slot, g],
            "passes_published": pub, "in_cap": in_cap, "passes_null": passes_null,
            "above_noise_floor": np.abs(d) > fl if np.isfinite(fl) else np.zeros(len(d), bool),
            EDGE_COLUMN: passes_null if th.criterion == "null" else in_cap}))
        names, ids = _labels(src_maps, s, feats)
        chosen = passes_null if th.criterion == "null" else in_cap
        cs = slot[chosen]
        n_edges = np.bincount(cs, minlength=len(feats))
        n_pub = np.bincount(slot[pub], minlength=len(feats))
        n_cap = np.bincount(slot[in_cap], minlength=len(feats))
        abs_sum = np.bincount(cs, weights=np.abs(d[chosen]), minlength=len(feats))
        abs_max = np.zeros(len(feats))
        np.maximum.at(abs_max, cs, np.abs(d[chosen]))
        for i, f in enumerate(feats):
            feat_rows.append({"model": model, "source_layer": s, "source_feature": int(f), "source_label": names[i],
                              "source_label_id": ids[i], "cells_active": int(acc.active[s][i]), "target_layer": t,
                              "distance": t - s, "n_tests": int(st["valid"][i].sum()), "n_edges": int(n_edges[i]),
                              "n_edges_published": int(n_pub[i]), "n_edges_in_cap": int(n_cap[i]),
                              "mean_abs_d": abs_sum[i] / n_edges[i] if n_edges[i] else np.nan,
                              "max_abs_d": abs_max[i] if n_edges[i] else np.nan})
    edges = (pd.concat(edge_parts, ignore_index=True) if edge_parts else pd.DataFrame(columns=EDGE_COLUMNS))[EDGE_COLUMNS]
    for col in ("passes_published", "in_cap", "passes_null", "above_noise_floor", EDGE_COLUMN):
        edges[col] = edges[col].astype(bool)
    edges = edges.sort_values(["source_layer", "source_feature", "target_layer", "target_feature"], kind="stable",
                              ignore_index=True)
    features = pd.DataFrame(feat_rows, columns=["model", "source_layer", "source_feature", "source_label",
                                                "source_label_id", "cells_active", "target_layer", "distance",
                                                "n_tests", "n_edges", "n_edges_published", "n_edges_in_cap",
                                                "mean_abs_d", "max_abs_d"])
    return edges, features, null
