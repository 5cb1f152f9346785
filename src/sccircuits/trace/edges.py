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

An edge passes |d| > d_threshold, consistency > consistency_threshold, n >= min_cells (and
q <= max_q when set). ``in_cap`` marks the top ``top_per_layer`` edges by |d| per
(source feature, target layer) (ties broken by target feature id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..stats import bh_fdr, paired_d, paired_t_p
from .accumulators import Accumulators, PairStats

EDGE_COLUMNS = ["model", "source_layer", "source_feature", "source_label", "source_label_id",
                "target_layer", "target_feature", "target_label", "target_label_id", "n_cells",
                "mean_delta", "sd_delta", "cohens_d", "consistency", "consistency_nonzero",
                "p_value", "q_value", "in_cap", "above_noise_floor"]


@dataclass
class Thresholds:
    """Edge criteria (taken from a TraceConfig)."""

    d_threshold: float = 0.5
    consistency_threshold: float = 0.7
    consistency_kind: str = "reference"
    min_cells: int = 3
    max_q: float | None = None
    top_per_layer: int = 50

    @classmethod
    def from_config(cls, cfg) -> "Thresholds":
        return cls(cfg.d_threshold, cfg.consistency_threshold, cfg.consistency_kind, cfg.min_cells,
                   cfg.max_q, cfg.top_per_layer)


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
            "consistency_nonzero": consistency_nonzero(ps.pos, ps.neg, ps.mean), "valid": valid}


def _passes(st: dict[str, np.ndarray], q: np.ndarray, th: Thresholds) -> np.ndarray:
    cons = st["consistency"] if th.consistency_kind == "reference" else st["consistency_nonzero"]
    with np.errstate(invalid="ignore"):
        ok = st["valid"] & (np.abs(st["d"]) > th.d_threshold) & (np.nan_to_num(cons, nan=0.0) > th.consistency_threshold)
        if th.max_q is not None:
            ok &= np.nan_to_num(q, nan=1.0) <= th.max_q
    return ok


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


def null_floor(acc: Accumulators, th: Thresholds) -> pd.DataFrame:
    """Noise floor per (source layer, target layer) from the null (random-direction) ablation:
    quantiles of |d_null| over every valid null test, and how many null tests would pass the
    edge thresholds (a direct false-edge count)."""
    rows = []
    for (kind, s, t), ps in sorted(acc.pairs.items()):
        if kind != "null":
            continue
        st = pair_statistics(ps, th.min_cells)
        a = np.abs(st["d"][st["valid"]])
        passing = int(_passes(st, np.full(st["d"].shape, np.nan) if th.max_q is None else bh_fdr(st["p"]), th).sum())
        rows.append({"source_layer": s, "target_layer": t, "n_tests": int(a.size),
                     "abs_d_q95": float(np.quantile(a, 0.95)) if a.size else np.nan,
                     "abs_d_q99": float(np.quantile(a, 0.99)) if a.size else np.nan,
                     "abs_d_max": float(a.max()) if a.size else np.nan,
                     "n_null_passing": passing,
                     "frac_null_passing": passing / a.size if a.size else np.nan})
    return pd.DataFrame(rows, columns=["source_layer", "target_layer", "n_tests", "abs_d_q95", "abs_d_q99",
                                       "abs_d_max", "n_null_passing", "frac_null_passing"])


def build_tables(acc: Accumulators, th: Thresholds, model: str,
                 catalogs: dict[int, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(edges, features, null) tables of a finished trace."""
    keys = sorted(k for k in acc.pairs if k[0] == "real")
    stats = {k: pair_statistics(acc.pairs[k], th.min_cells) for k in keys}
    # BH over every test of the run
    flat = np.concatenate([stats[k]["p"].ravel() for k in keys]) if keys else np.zeros(0)
    q_flat = bh_fdr(flat)
    qs, off = {}, 0
    for k in keys:
        size = stats[k]["p"].size
        qs[k] = q_flat[off:off + size].reshape(stats[k]["p"].shape)
        off += size
    null = null_floor(acc, th)
    floor = {(r.source_layer, r.target_layer): r.abs_d_q99 for r in null.itertuples()}
    maps, src_maps = _label_maps(catalogs), _label_maps(catalogs, "source_label")

    edge_parts, feat_rows = [], []
    for k in keys:
        _, s, t = k
        st, q = stats[k], qs[k]
        ok = _passes(st, q, th)
        slot, g = np.nonzero(ok)
        feats = acc.features[s]
        d = st["d"][slot, g]
        # cap: rank by |d| within each source feature (ties: lower target feature first)
        order = np.lexsort((g, -np.abs(d), slot))
        rank = np.empty(len(order), np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(slot[order])) + 1] if len(order) else np.zeros(0, np.int64)
        seg_start = np.repeat(starts, np.diff(np.r_[starts, len(order)])) if len(order) else np.zeros(0, np.int64)
        rank[order] = np.arange(len(order)) - seg_start
        in_cap = rank < th.top_per_layer if th.top_per_layer > 0 else np.ones(len(rank), bool)
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
            "p_value": st["p"][slot, g], "q_value": q[slot, g], "in_cap": in_cap,
            "above_noise_floor": np.abs(d) > fl if np.isfinite(fl) else np.zeros(len(d), bool)}))
        names, ids = _labels(src_maps, s, feats)
        n_edges = np.bincount(slot, minlength=len(feats))
        n_cap = np.bincount(slot[in_cap], minlength=len(feats))
        abs_sum = np.bincount(slot, weights=np.abs(d), minlength=len(feats))
        abs_max = np.zeros(len(feats))
        np.maximum.at(abs_max, slot, np.abs(d))
        for i, f in enumerate(feats):
            feat_rows.append({"model": model, "source_layer": s, "source_feature": int(f), "source_label": names[i],
                              "source_label_id": ids[i], "cells_active": int(acc.active[s][i]), "target_layer": t,
                              "distance": t - s, "n_tests": int(st["valid"][i].sum()), "n_edges": int(n_edges[i]),
                              "n_edges_in_cap": int(n_cap[i]),
                              "mean_abs_d": abs_sum[i] / n_edges[i] if n_edges[i] else np.nan,
                              "max_abs_d": abs_max[i] if n_edges[i] else np.nan})
    edges = (pd.concat(edge_parts, ignore_index=True) if edge_parts else pd.DataFrame(columns=EDGE_COLUMNS))[EDGE_COLUMNS]
    edges = edges.sort_values(["source_layer", "source_feature", "target_layer", "target_feature"], kind="stable",
                              ignore_index=True)
    features = pd.DataFrame(feat_rows, columns=["model", "source_layer", "source_feature", "source_label",
                                                "source_label_id", "cells_active", "target_layer", "distance",
                                                "n_tests", "n_edges", "n_edges_in_cap", "mean_abs_d", "max_abs_d"])
    return edges, features, null
