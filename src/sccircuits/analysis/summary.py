"""Descriptive statistics of one edge table: counts, effect sizes, sign balance, attenuation, hubs.

All functions are pure: they take the normalised edge DataFrame (see
:func:`sccircuits.analysis.inputs.normalize_edges`) and return numbers or DataFrames.

Sign convention (docs/method.md §5): ``d < 0`` means ablating the source lowers the target, i.e.
the source supports the target; the paper calls these edges "inhibitory". ``d > 0`` means
ablating the source raises the target, i.e. the source suppresses it (the paper's
"excitatory"). The keys below say what the sign means and carry the paper's word beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SIGN_CLASSES = {
    "d_negative": {
        "meaning": "source supports target (ablating the source lowers the target, d < 0)",
        "paper_name": "inhibitory",
    },
    "d_positive": {
        "meaning": "source suppresses target (ablating the source raises the target, d > 0)",
        "paper_name": "excitatory",
    },
}


def node_ids(layer, feature) -> np.ndarray:
    """String node id ``"L<layer>:F<feature>"`` of each (layer, feature)."""
    return np.array([f"L{int(l)}:F{int(f)}" for l, f in zip(layer, feature)], dtype=object)


def edge_counts(edges: pd.DataFrame) -> dict:
    """Edge and node counts: edges, distinct source / target / all features, source and target layers."""
    src = set(zip(edges["source_layer"], edges["source_feature"]))
    tgt = set(zip(edges["target_layer"], edges["target_feature"]))
    return {
        "n_edges": int(len(edges)),
        "n_sources": len(src),
        "n_targets": len(tgt),
        "n_nodes": len(src | tgt),
        "source_layers": sorted(int(x) for x in edges["source_layer"].unique()),
        "target_layers": sorted(int(x) for x in edges["target_layer"].unique()),
    }


def effect_sizes(d) -> dict:
    """Mean / median |d| and the share of edges with |d| > 1 and > 2 (NaN-free input expected)."""
    a = np.abs(np.asarray(d, dtype=np.float64))
    if a.size == 0:
        return {"mean_abs_d": float("nan"), "median_abs_d": float("nan"),
                "frac_abs_d_gt_1": float("nan"), "frac_abs_d_gt_2": float("nan")}
    return {
        "mean_abs_d": float(a.mean()),
        "median_abs_d": float(np.median(a)),
        "frac_abs_d_gt_1": float(np.mean(a > 1.0)),
        "frac_abs_d_gt_2": float(np.mean(a > 2.0)),
    }


def sign_balance(d) -> dict:
    """Counts and shares of negative and positive d, each with its meaning and the paper's name.

    Shares are over all edges (an edge with d == 0 exactly is counted in ``n_zero`` only).
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    out: dict = {"n_edges": int(n), "n_zero": int(np.sum(d == 0))}
    for key, mask in (("d_negative", d < 0), ("d_positive", d > 0)):
        k = int(mask.sum())
        out[key] = {**SIGN_CLASSES[key], "n": k, "frac": (k / n) if n else float("nan")}
    return out


def attenuation(edges: pd.DataFrame) -> pd.DataFrame:
    """Edges per source layer and downstream distance (target layer - source layer).

    Columns: source_layer, target_layer, distance, n_edges, n_sources (distinct source features
    with an edge at that distance), edges_per_source, mean_abs_d, frac_d_negative.
    """
    cols = ["source_layer", "target_layer", "distance", "n_edges", "n_sources",
            "edges_per_source", "mean_abs_d", "frac_d_negative"]
    if len(edges) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    e = edges.assign(abs_d=edges["cohens_d"].abs(), neg=edges["cohens_d"] < 0)
    g = e.groupby(["source_layer", "target_layer"], sort=True)
    out = g.agg(n_edges=("abs_d", "size"), n_sources=("source_feature", "nunique"),
                mean_abs_d=("abs_d", "mean"), frac_d_negative=("neg", "mean")).reset_index()
    out["distance"] = out["target_layer"] - out["source_layer"]
    out["edges_per_source"] = out["n_edges"] / out["n_sources"]
    return out[cols]


def hubs(edges: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """Out- and in-degree of every feature (node) of the circuit, most connected first.

    Columns: node, layer, feature, label, out_degree, in_degree, degree, mean_abs_d_out,
    mean_abs_d_in. ``top`` keeps the first ``top`` rows.
    """
    e = edges.assign(abs_d=edges["cohens_d"].abs())
    out = e.groupby(["source_layer", "source_feature"]).agg(
        out_degree=("abs_d", "size"), mean_abs_d_out=("abs_d", "mean"), label_out=("source_label", "first"))
    out.index.names = ["layer", "feature"]
    inn = e.groupby(["target_layer", "target_feature"]).agg(
        in_degree=("abs_d", "size"), mean_abs_d_in=("abs_d", "mean"), label_in=("target_label", "first"))
    inn.index.names = ["layer", "feature"]
    t = out.join(inn, how="outer").reset_index()
    t["out_degree"] = t["out_degree"].fillna(0).astype(np.int64)
    t["in_degree"] = t["in_degree"].fillna(0).astype(np.int64)
    t["degree"] = t["out_degree"] + t["in_degree"]
    t["label"] = t["label_out"].fillna(t["label_in"])
    t["node"] = node_ids(t["layer"], t["feature"])
    t = t.sort_values(["degree", "out_degree", "layer", "feature"], ascending=[False, False, True, True])
    t = t[["node", "layer", "feature", "label", "out_degree", "in_degree", "degree",
           "mean_abs_d_out", "mean_abs_d_in"]].reset_index(drop=True)
    return t if top is None else t.head(top)


def describe_edges(edges: pd.DataFrame) -> dict:
    """Counts, effect sizes and sign balance of an edge table, in one dict."""
    return {**edge_counts(edges), **effect_sizes(edges["cohens_d"]), "sign_balance": sign_balance(edges["cohens_d"])}
