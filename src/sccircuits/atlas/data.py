"""What the atlas page shows, gathered from a run's tables into one compact JSON-ready dict.

Everything comes from the run directories through the existing readers: edges and the
null-ablation noise floor (``trace``), catalogs and enrichment (``annotate``), SAE quality
(the ``train-sae`` metrics in the manifest), cell-type labels (the input .h5ad, through
:mod:`.celltypes`) and consensus pairs (``compare``). The page only displays these numbers;
every statistic is computed here or by the stage that wrote the table.

Layout of the dict (columnar arrays, so 100,000 edges stay a few MB):

* ``runs``: per run its name, model, SAE quality per layer, noise floor per layer pair, totals;
* ``genes`` / ``terms``: string tables, referenced by index;
* ``features``: one entry per embedded feature (run index, layer, feature id, label, label q,
  activation frequency, fire count, top genes with counts, enriched terms with q, activity per
  cell type);
* ``edges``: columns ``s``, ``t`` (feature indices), ``d`` (Cohen's d), ``q`` (BH q),
  ``c`` (consistency), ``n`` (cells), ``cap`` (in the published cap), ``sp`` (specificity:
  |d| over the null ablation's 99th-percentile |d| for the same source and target layers);
* ``compare``: consensus domain pairs and the edges behind them in each run;
* ``limits`` and ``messages``: the size caps and what was left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.inputs import load_annotation_tables, load_edges, read_table
from ..config import check, option, to_dict
from ..errors import InputError
from ..report import sae_quality_from_manifest
from ..rundir import RunDir, read_json
from .celltypes import cell_type_activity

UNANNOTATED = "unannotated"
EDGE_SET_COLUMN = "edge"  # marks the trace's edge set where edges.parquet holds more rows (older tables: every row)


@dataclass
class AtlasConfig:
    """Options of ``sccircuits atlas``."""

    max_edges: int = option(250_000, "most edges embedded; beyond it the strongest |d| are kept and the page "
                                      "says how many were left out")
    max_features: int = option(50_000, "most features embedded: those of the kept edges first, then labelled "
                                        "features, then the most frequent ones")
    top_genes: int = option(20, "top genes shown per feature")
    max_terms: int = option(10, "enriched terms shown per feature (lowest q first)")
    capped: bool = option(False, "embed only the published top-N-capped edges (in_cap) instead of the trace's "
                                 "edge set")
    cell_type_column: str | None = option(None, "obs column of the run's .h5ad with cell types (default: the "
                                                "first of cell_type, celltype, cell_types, bulk_labels, "
                                                "cell_ontology_class, annotation; '' turns it off)")
    cell_type_cells: int = option(300, "cells (a seeded random sample of the extracted cells) whose SAE codes "
                                       "give the activity per cell type")
    seed: int = option(0, "seed of the cell sample")

    def __post_init__(self) -> None:
        check(self.max_edges >= 0, "max_edges must be >= 0")
        check(self.max_features >= 1, "max_features must be >= 1")
        check(self.top_genes >= 1 and self.max_terms >= 0, "top_genes must be >= 1 and max_terms >= 0")
        check(self.cell_type_cells >= 1, "cell_type_cells must be >= 1")


# -- per-run tables --------------------------------------------------------------------------
@dataclass
class RunTables:
    """The tables of one run that the atlas reads (None / empty where a stage has not run)."""

    name: str
    path: Path
    model: str
    edges: pd.DataFrame | None
    null: pd.DataFrame | None
    catalogs: dict[int, pd.DataFrame]
    enrichment: dict[int, pd.DataFrame]
    sae: pd.DataFrame | None
    run: RunDir

    @classmethod
    def load(cls, path, name: str | None = None) -> "RunTables":
        run = RunDir(path, create=False)
        edges = null = None
        if run.is_complete("trace"):
            edges = load_edges(run)
            null_path = run / "trace/null.parquet"
            null = read_table(null_path, ("source_layer", "target_layer", "abs_d_q99")) if null_path.is_file() else None
        catalogs, enrichment = load_annotation_tables(run) if run.is_complete("annotate") else ({}, {})
        if edges is None and not catalogs:
            raise InputError(run.path, "nothing to show: neither `sccircuits trace` nor `sccircuits annotate` "
                                       "has completed in this run")
        ext = (run.stage("extract") or {}).get("config", {})
        model = str(ext.get("model") or ext.get("model_path") or
                    (edges["model"].iloc[0] if edges is not None and len(edges) else run.path.name))
        return cls(name or run.path.name, run.path, model, edges, null, catalogs, enrichment,
                   sae_quality_from_manifest(run.manifest), run)


# -- small helpers ---------------------------------------------------------------------------
def edge_set(edges: pd.DataFrame, capped: bool) -> pd.DataFrame:
    """The edges to show: the published cap (``in_cap``) with ``capped``, else the trace's edge set
    (column ``edge`` where the table has it, every row otherwise)."""
    col = "in_cap" if capped else EDGE_SET_COLUMN
    return edges[edges[col].fillna(False).astype(bool)] if col in edges else edges


def _num(x: np.ndarray, digits: int) -> list:
    """Rounded floats for JSON, NaN/inf as None."""
    x = np.asarray(x, dtype=np.float64)
    r = np.round(x, digits)
    return [v if math.isfinite(v) else None for v in r.tolist()]


def _sig(x: np.ndarray, digits: int = 3) -> list:
    """Floats to ``digits`` significant digits for JSON (p/q values), NaN as None."""
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in np.asarray(x, np.float64).tolist()]


def _finite(obj):
    """``obj`` (nested dicts/lists from JSON or manifests) with NaN/inf floats as None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


class _Strings:
    """A string table: each distinct value gets an index (first seen, first numbered)."""

    def __init__(self) -> None:
        self.index: dict = {}
        self.values: list = []

    def __call__(self, value) -> int:
        i = self.index.get(value)
        if i is None:
            i = self.index[value] = len(self.values)
            self.values.append(value)
        return i


def keep_strongest(keys: np.ndarray, abs_d: np.ndarray, max_edges: int, max_features: int) -> np.ndarray:
    """Rows of the edges to embed: the longest run of edges by |d| (descending) that stays within
    ``max_edges`` edges and ``max_features`` distinct end points. ``keys``: (n, 2) arrays of
    hashable end-point ids (source, target). Returns sorted row indices."""
    n = len(abs_d)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(abs_d), kind="stable")
    ends = pd.Series(np.column_stack([keys[0][order], keys[1][order]]).ravel())
    n_nodes = np.cumsum(~ends.duplicated().to_numpy())[1::2]  # distinct end points after each edge
    fits = int(np.searchsorted(n_nodes, max_features, side="right"))
    return np.sort(order[:min(n, max_edges, fits)])


# -- assembling the dict ---------------------------------------------------------------------
def atlas_data(tables: list[RunTables], cfg: AtlasConfig, compare_dir: Path | None = None) -> dict:
    """The JSON-ready dict the page embeds (see the module docstring)."""
    messages: list[str] = []
    genes, terms = _Strings(), _Strings()

    # edges of every run, then the size cap
    parts = []
    for ri, t in enumerate(tables):
        if t.edges is None or not len(t.edges):
            continue
        parts.append(edge_set(t.edges, cfg.capped).assign(run=ri))
    edges = pd.concat(parts, ignore_index=True) if parts else None
    n_edges_total = 0 if edges is None else len(edges)
    if edges is not None:
        src = edges["run"].astype(str) + ":" + edges["source_layer"].astype(str) + ":" + edges["source_feature"].astype(str)
        tgt = edges["run"].astype(str) + ":" + edges["target_layer"].astype(str) + ":" + edges["target_feature"].astype(str)
        keep = keep_strongest((src.to_numpy(), tgt.to_numpy()), edges["cohens_d"].abs().to_numpy(),
                              cfg.max_edges, cfg.max_features)
        if len(keep) < len(edges):
            messages.append(f"This atlas embeds the {len(keep):,} strongest edges (by |d|) of {len(edges):,}: "
                            f"the limit is {cfg.max_edges:,} edges and {cfg.max_features:,} features per page "
                            "(AtlasConfig.max_edges / max_features). Filter the runs or raise the limit for more.")
        edges = edges.iloc[keep].reset_index(drop=True)

    # features: end points of the kept edges first, then labelled, then frequent catalog features
    feats = _feature_table(tables, edges, cfg.max_features, messages)
    index = {k: i for i, k in enumerate(zip(feats["run"], feats["layer"], feats["feature"]))}

    cell_types = [cell_type_activity(t.run, feats.loc[feats["run"] == ri, ["layer", "feature"]], cfg.cell_type_column,
                                     cfg.cell_type_cells, cfg.seed) for ri, t in enumerate(tables)]
    features = _feature_records(tables, feats, cfg, genes, terms, cell_types)

    edge_cols = _edge_columns(tables, edges, index)
    runs = []
    for ri, t in enumerate(tables):
        ct = cell_types[ri]
        runs.append({
            "name": t.name, "path": str(t.path), "model": t.model,
            "n_edges": 0 if t.edges is None else int(len(edge_set(t.edges, cfg.capped))),
            "n_catalog_features": int(sum(len(c) for c in t.catalogs.values())),
            "sae": {} if t.sae is None else {int(r["layer"]): {k: v for k, v in r.items() if k != "layer"}
                                            for r in t.sae.to_dict("records")},
            "null": [] if t.null is None else [
                {"s": int(r.source_layer), "t": int(r.target_layer), "n_tests": int(r.n_tests) if "n_tests" in t.null else None,
                 "q95": _num([r.abs_d_q95], 3)[0] if "abs_d_q95" in t.null else None, "q99": _num([r.abs_d_q99], 3)[0],
                 "frac_passing": _num([r.frac_null_passing], 4)[0] if "frac_null_passing" in t.null else None}
                for r in t.null.itertuples()],
            "cell_types": None if ct is None else {"column": ct.column, "types": ct.types, "n_cells": ct.n_cells},
            "annotated": bool(t.catalogs), "traced": t.edges is not None,
        })
    if not any(r["traced"] for r in runs):
        messages.append("No run has a completed trace: the atlas shows features and their annotation only.")
    return {
        "version": 1,
        "config": to_dict(cfg),
        "runs": _finite(runs),
        "genes": genes.values,
        "terms": [list(x) for x in terms.values],
        "features": features,
        "edges": edge_cols,
        "compare": _finite(_compare(compare_dir, tables, edges, edge_cols)) if compare_dir is not None else None,
        "limits": {"max_edges": cfg.max_edges, "max_features": cfg.max_features, "n_edges_total": n_edges_total,
                   "n_edges": 0 if edges is None else int(len(edges)), "capped": cfg.capped},
        "messages": messages,
    }


def _feature_table(tables: list[RunTables], edges: pd.DataFrame | None, max_features: int,
                   messages: list[str]) -> pd.DataFrame:
    """(run, layer, feature, priority) of the embedded features, in embedding order."""
    rows = []
    if edges is not None and len(edges):
        for side in ("source", "target"):
            rows.append(pd.DataFrame({"run": edges["run"].to_numpy(), "layer": edges[f"{side}_layer"].to_numpy(),
                                      "feature": edges[f"{side}_feature"].to_numpy(), "priority": 0, "freq": np.inf}))
    for ri, t in enumerate(tables):
        for layer, cat in t.catalogs.items():
            alive = cat[cat["fire_count"] > 0] if "fire_count" in cat else cat
            labelled = (alive["label_name"].fillna(UNANNOTATED) != UNANNOTATED).to_numpy()
            freq = alive["activation_freq"].to_numpy() if "activation_freq" in alive else np.zeros(len(alive))
            rows.append(pd.DataFrame({"run": ri, "layer": layer, "feature": alive["feature"].to_numpy(),
                                      "priority": np.where(labelled, 1, 2), "freq": freq}))
    if not rows:
        return pd.DataFrame({"run": [], "layer": [], "feature": []}, dtype=np.int64)
    f = pd.concat(rows, ignore_index=True).astype({"run": np.int64, "layer": np.int64, "feature": np.int64})
    f = f.sort_values(["priority", "freq", "run", "layer", "feature"], ascending=[True, False, True, True, True],
                      kind="stable").drop_duplicates(["run", "layer", "feature"])
    if len(f) > max_features:
        messages.append(f"This atlas embeds {max_features:,} of {len(f):,} features (those in edges, then labelled, "
                        "then the most frequent; AtlasConfig.max_features). Search finds only embedded features.")
        f = f.head(max_features)
    return f.sort_values(["run", "layer", "feature"], kind="stable")[["run", "layer", "feature"]].reset_index(drop=True)


def _feature_records(tables, feats: pd.DataFrame, cfg: AtlasConfig, genes: _Strings, terms: _Strings,
                     cell_types: list) -> dict:
    """Columnar feature data: label, q, frequency, top genes, terms, cell-type activity."""
    n = len(feats)
    out = {"run": feats["run"].tolist(), "layer": feats["layer"].tolist(), "id": feats["feature"].tolist(),
           "label": [-1] * n, "label_q": [None] * n, "freq": [None] * n, "fires": [None] * n,
           "genes": [[] for _ in range(n)], "gene_counts": [[] for _ in range(n)], "gene_means": [[] for _ in range(n)],
           "terms": [[] for _ in range(n)], "term_q": [[] for _ in range(n)], "term_overlap": [[] for _ in range(n)],
           "cells": [None] * n}
    for (ri, layer), grp in feats.groupby(["run", "layer"], sort=True):
        t = tables[ri]
        pos = grp.index.to_numpy()
        ids = grp["feature"].to_numpy()
        cat = t.catalogs.get(int(layer))
        if cat is not None:
            c = cat.set_index("feature").reindex(ids)
            has = c.index.isin(cat["feature"])
            for j, p in enumerate(pos):
                if not has[j]:
                    continue
                r = c.iloc[j]
                if "fire_count" in c:
                    out["fires"][p] = int(r["fire_count"])
                if "activation_freq" in c:
                    out["freq"][p] = _sig([r["activation_freq"]], 4)[0]
                name = r["label_name"] if isinstance(r["label_name"], str) else UNANNOTATED
                if name != UNANNOTATED:
                    out["label"][p] = terms((str(r["label_id"]), name, ""))
                    if "label_q" in c:
                        out["label_q"][p] = _sig([r["label_q"]])[0]
                k = cfg.top_genes
                tg = list(r["top_genes"])[:k] if r["top_genes"] is not None else []
                out["genes"][p] = [genes(str(g)) for g in tg]
                if "top_gene_counts" in c and r["top_gene_counts"] is not None:
                    out["gene_counts"][p] = [int(x) for x in list(r["top_gene_counts"])[:k]]
                if "top_gene_means" in c and r["top_gene_means"] is not None:
                    out["gene_means"][p] = _num(list(r["top_gene_means"])[:k], 3)
        enr = t.enrichment.get(int(layer))
        if enr is not None and len(enr) and cfg.max_terms:
            sig = enr[enr["significant"].astype(bool)] if "significant" in enr else enr
            sig = sig[sig["feature"].isin(ids)].sort_values(["feature", "q_value", "term_id"], kind="stable")
            sig = sig.groupby("feature", sort=False).head(cfg.max_terms)
            where = dict(zip(ids.tolist(), pos.tolist()))
            for r in sig.itertuples():
                p = where[int(r.feature)]
                out["terms"][p].append(terms((str(r.term_id), str(r.term_name), str(r.library))))
                out["term_q"][p].append(_sig([r.q_value])[0])
                out["term_overlap"][p].append(int(r.overlap) if hasattr(r, "overlap") else None)
        # label-only features (edges without an annotation run): the edge table's label
        if cat is None and t.edges is not None:
            _labels_from_edges(t.edges, int(layer), ids, pos, out, terms)
        ct = cell_types[ri]
        if ct is not None and int(layer) in ct.activity:
            act = ct.activity[int(layer)]
            for fid, p in zip(ids.tolist(), pos.tolist()):
                if fid in act:
                    out["cells"][p] = _num(act[fid], 3)
    return out


def _labels_from_edges(edges: pd.DataFrame, layer: int, ids: np.ndarray, pos: np.ndarray, out: dict,
                       terms: _Strings) -> None:
    lab = {}
    for side in ("source", "target"):
        sub = edges[edges[f"{side}_layer"] == layer]
        lab.update(zip(sub[f"{side}_feature"].tolist(), zip(sub[f"{side}_label_id"], sub[f"{side}_label"])))
    for fid, p in zip(ids.tolist(), pos.tolist()):
        lid, name = lab.get(fid, ("", UNANNOTATED))
        if name != UNANNOTATED:
            out["label"][p] = terms((str(lid), str(name), ""))


def _edge_columns(tables, edges: pd.DataFrame | None, index: dict) -> dict:
    cols = ("s", "t", "d", "q", "c", "n", "cap", "sp")
    if edges is None or not len(edges):
        return {k: [] for k in cols}
    run = edges["run"].to_numpy()
    s = [index[k] for k in zip(run.tolist(), edges["source_layer"].tolist(), edges["source_feature"].tolist())]
    t = [index[k] for k in zip(run.tolist(), edges["target_layer"].tolist(), edges["target_feature"].tolist())]
    floor = np.full(len(edges), np.nan)
    for ri, tab in enumerate(tables):
        if tab.null is None or not len(tab.null):
            continue
        q99 = {(int(a), int(b)): float(v) for a, b, v in zip(tab.null["source_layer"], tab.null["target_layer"],
                                                             tab.null["abs_d_q99"])}
        m = run == ri
        floor[m] = [q99.get((a, b), np.nan) for a, b in zip(edges.loc[m, "source_layer"], edges.loc[m, "target_layer"])]
    d = edges["cohens_d"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sp = np.where(floor > 0, np.abs(d) / floor, np.nan)
    q = edges["q_value"].to_numpy(np.float64) if "q_value" in edges else np.full(len(edges), np.nan)
    n = edges["n_cells"].to_numpy() if "n_cells" in edges else np.zeros(len(edges), np.int64)
    return {"s": s, "t": t, "d": _num(d, 3), "q": _sig(q, 3), "c": _num(edges["consistency"].to_numpy(), 3),
            "n": [int(x) for x in n.tolist()], "cap": edges["in_cap"].astype(np.int8).tolist(), "sp": _num(sp, 2)}


def _compare(cdir: Path, tables: list[RunTables], edges: pd.DataFrame | None, edge_cols: dict) -> dict:
    """Consensus domain pairs of a ``compare`` directory and the embedded edges behind each."""
    rd = RunDir(cdir, create=False)
    st = rd.require("compare")
    pairs_path = rd / "consensus_pairs.parquet"
    pairs = pd.read_parquet(pairs_path) if pairs_path.is_file() else pd.DataFrame()
    res = read_json(rd / "compare.json") if (rd / "compare.json").is_file() else {}
    groups = st.get("groups") or res.get("groups") or {}
    cmp_runs = {n: Path(p).resolve() for n, p in (st.get("runs") or res.get("runs") or {}).items()}
    by_path = {t.path.resolve(): ri for ri, t in enumerate(tables)}
    run_of = {n: by_path.get(p) for n, p in cmp_runs.items()}
    missing = sorted(n for n, ri in run_of.items() if ri is None)
    edge_set = "all"
    if len(pairs) and "edge_set" in pairs:
        edge_set = "all" if (pairs["edge_set"] == "all").any() else str(pairs["edge_set"].iloc[0])
        pairs = pairs[pairs["edge_set"] == edge_set]
    behind: dict = {}
    if edges is not None and len(edges) and len(pairs):
        key = pd.Series(list(zip(edges["source_label_id"], edges["target_label_id"])))
        want = set(zip(pairs["source_domain"], pairs["target_domain"]))
        for i, (k, ri) in enumerate(zip(key, edges["run"].tolist())):
            if k in want:
                behind.setdefault(k, {}).setdefault(ri, []).append(i)
    out_pairs = []
    for r in pairs.to_dict("records"):
        k = (r["source_domain"], r["target_domain"])
        per_group = {}
        for g, members in groups.items():
            per_group[g] = {"n_edges": r.get(f"n_edges_{g}"), "mean_abs_d": _num([r.get(f"mean_abs_d_{g}", np.nan)], 3)[0],
                            "mean_d": _num([r.get(f"mean_d_{g}", np.nan)], 3)[0],
                            "runs": [run_of[m] for m in members if run_of.get(m) is not None]}
        out_pairs.append({"source": [str(r["source_domain"]), str(r.get("source_name", ""))],
                          "target": [str(r["target_domain"]), str(r.get("target_name", ""))],
                          "high_confidence": bool(r.get("high_confidence", False)), "groups": per_group,
                          "edges": {str(ri): ix for ri, ix in behind.get(k, {}).items()}})
    cons = (res.get("consensus") or {}).get(edge_set) or {}
    nulls = {k: v for k, v in cons.items() if k.endswith("_null") and isinstance(v, dict)}
    headline = cons.get("headline_null")
    if headline in nulls:  # the comparison's headline null first
        nulls = {headline: nulls[headline], **{k: v for k, v in nulls.items() if k != headline}}
    return {"path": str(rd.path), "edge_set": edge_set, "groups": {g: list(m) for g, m in groups.items()},
            "n_consensus": cons.get("n_consensus"), "pairs_per_group": cons.get("pairs_per_group"),
            "nulls": nulls, "headline_null": headline if headline in nulls else None,
            "pairs": out_pairs, "runs_not_in_atlas": missing}
