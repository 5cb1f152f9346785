"""The report's biology-first section: what a biologist wants to see before the statistics.

Read through :mod:`sccircuits.artifacts` (annotation by the pointer rule, trace, analysis,
celltypes stages) and a comparison directory:

1. annotation rate per layer over GO BP, Reactome and Hallmark (a feature counts as labelled
   when any of these libraries gives it a term at BH q < alpha);
2. labelled hub features (most connected in the edge table) with their top genes and terms;
3. the strongest edges whose two ends are both labelled;
4. traced features whose activity differs across cell types (per-feature Kruskal-Wallis, BH);
5. cross-model consensus domain pairs, or, when none passes p < 0.05 under the comparison's
   headline null, why not, with the numbers.

Every function returns HTML (or a DataFrame for the tables) and tolerates a stage that has
not run.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from . import artifacts

#: libraries whose terms count as a biological label (the issue's and the paper's choice)
LABEL_LIBRARIES = ("go_bp", "reactome", "hallmark")


def _table(df: pd.DataFrame | None, empty: str = "not available in this run") -> str:
    if df is None or not len(df):
        return f"<p class='na'>{html.escape(empty)}</p>"
    return df.to_html(index=False, border=0, classes="t", na_rep="")


def best_terms(run_path: Path, libraries=LABEL_LIBRARIES, alpha: float = 0.05) -> pd.DataFrame:
    """Per (layer, feature) with a term of ``libraries`` at q < alpha: the most significant one
    (columns layer, feature, term, library, q, n_terms). Empty when annotate has not run."""
    rows = []
    enrichment = (artifacts.read_annotation(run_path, enrichment_columns=artifacts.ENRICHMENT_COLUMNS + ("p_value",))[1]
                  if artifacts.has_annotation(run_path) else {})
    for layer, e in sorted(enrichment.items()):
        if e.empty:
            continue
        ok = e["library"].isin(libraries) & (e["q_value"] < alpha)
        if "kind" in e:
            ok &= e["kind"] == "gene_set"
        e = e[ok]
        if e.empty:
            continue
        e = e.sort_values(["feature", "q_value", "p_value", "term_id"], kind="mergesort")
        n = e.groupby("feature").size()
        best = e.drop_duplicates("feature")
        rows.append(pd.DataFrame({"layer": int(layer), "feature": best["feature"].to_numpy(),
                                  "term": best["term_name"].to_numpy(), "library": best["library"].to_numpy(),
                                  "q": best["q_value"].to_numpy(), "n_terms": n.loc[best["feature"]].to_numpy()}))
    if not rows:
        return pd.DataFrame(columns=["layer", "feature", "term", "library", "q", "n_terms"])
    return pd.concat(rows, ignore_index=True)


def annotation_rate_table(catalogs: dict[int, pd.DataFrame], terms: pd.DataFrame) -> pd.DataFrame | None:
    """Per layer: alive features, labelled by GO BP / Reactome / Hallmark (q < alpha), rate."""
    if not catalogs:
        return None
    rows = []
    for layer, c in sorted(catalogs.items()):
        alive = set(c.loc[c.fire_count > 0, "feature"].astype(int))
        t = terms[terms.layer == layer]
        lab = {int(f) for f in t.feature} & alive
        by_lib = {lib: len({int(f) for f in t[t.library == lib].feature} & alive) for lib in LABEL_LIBRARIES}
        rows.append({"layer": layer, "alive": len(alive), "labelled": len(lab),
                     "rate (%)": round(100 * len(lab) / max(len(alive), 1), 1),
                     **{f"best term from {k}": v for k, v in by_lib.items()}})
    return pd.DataFrame(rows)


def _top_genes(catalogs: dict[int, pd.DataFrame], layer: int, feature: int, n: int = 8) -> str:
    c = catalogs.get(layer)
    if c is None:
        return ""
    row = c[c.feature == feature]
    if row.empty:
        return ""
    genes = row["top_genes"].iloc[0]
    return ", ".join(list(genes)[:n]) if genes is not None else ""


def _term_of(terms: pd.DataFrame) -> dict[tuple[int, int], str]:
    return {(int(l), int(f)): f"{t} ({lib}, q={q:.1e})" for l, f, t, lib, q in
            zip(terms.layer, terms.feature, terms.term, terms.library, terms.q)}


def labelled_hubs(run_path: Path, catalogs: dict[int, pd.DataFrame], terms: pd.DataFrame,
                  n: int = 10) -> pd.DataFrame | None:
    """The most connected labelled features of the (uncapped) edge table with top genes and term."""
    hubs = artifacts.read_analysis(run_path, "hubs")
    if hubs is None or hubs.empty:
        return None
    if "edge_set" in hubs:
        hubs = hubs[hubs.edge_set == "all"]
    term = _term_of(terms)
    keep = np.array([(int(l), int(f)) in term for l, f in zip(hubs.layer, hubs.feature)], dtype=bool)
    hubs = hubs.loc[keep]  # a boolean mask: an empty list would select columns instead
    if hubs.empty:
        return None
    hubs = hubs.sort_values(["degree", "layer", "feature"], ascending=[False, True, True], kind="mergesort").head(n)
    return pd.DataFrame({"layer": hubs.layer.to_numpy(), "feature": hubs.feature.to_numpy(),
                         "out-degree": hubs.out_degree.to_numpy(), "in-degree": hubs.in_degree.to_numpy(),
                         "best term": [term[(int(l), int(f))] for l, f in zip(hubs.layer, hubs.feature)],
                         "top genes": [_top_genes(catalogs, int(l), int(f)) for l, f in zip(hubs.layer, hubs.feature)]})


def strongest_labelled_edges(edges: pd.DataFrame | None, catalogs: dict[int, pd.DataFrame],
                             terms: pd.DataFrame, n: int = 15) -> pd.DataFrame | None:
    """Edges whose source and target both carry a term, by |d| (ties: source, target)."""
    if edges is None or edges.empty:
        return None
    term = _term_of(terms)
    src = [(int(l), int(f)) for l, f in zip(edges.source_layer, edges.source_feature)]
    tgt = [(int(l), int(f)) for l, f in zip(edges.target_layer, edges.target_feature)]
    ok = np.array([s in term and t in term for s, t in zip(src, tgt)], dtype=bool)
    e = edges[ok]
    if e.empty:
        return None
    e = e.assign(_a=-e.cohens_d.abs()).sort_values(
        ["_a", "source_layer", "source_feature", "target_layer", "target_feature"], kind="mergesort").head(n)
    return pd.DataFrame({
        "source": [f"L{l}:F{f}" for l, f in zip(e.source_layer, e.source_feature)],
        "source term": [term[(int(l), int(f))] for l, f in zip(e.source_layer, e.source_feature)],
        "source top genes": [_top_genes(catalogs, int(l), int(f), 5) for l, f in zip(e.source_layer, e.source_feature)],
        "target": [f"L{l}:F{f}" for l, f in zip(e.target_layer, e.target_feature)],
        "target term": [term[(int(l), int(f))] for l, f in zip(e.target_layer, e.target_feature)],
        "target top genes": [_top_genes(catalogs, int(l), int(f), 5) for l, f in zip(e.target_layer, e.target_feature)],
        "d": e.cohens_d.round(3).to_numpy()})


def celltype_tables(run_path: Path, catalogs: dict[int, pd.DataFrame], terms: pd.DataFrame,
                    n: int = 10, alpha: float = 0.05) -> tuple[dict | None, pd.DataFrame | None]:
    """(counts, table): traced source features ranked by Kruskal q, with their mean activity per
    cell type, top genes and term."""
    k = artifacts.read_celltypes(run_path, "kruskal")
    a = artifacts.read_celltypes(run_path, "activity")
    if k is None or a is None or k.empty:
        return None, None
    sig = k.q_value < alpha
    counts = {"features tested": int(len(k)), f"differ by cell type (q < {alpha})": int(sig.sum()),
              "traced source features tested": int(k.traced.sum()),
              f"traced sources that differ (q < {alpha})": int((sig & k.traced).sum())}
    top = k[k.traced] if k.traced.any() else k
    top = top.sort_values(["q_value", "layer", "feature"], kind="mergesort").head(n)
    means = a.pivot_table(index=["layer", "feature"], columns="cell_type", values="mean_activity")
    term = _term_of(terms)
    rows = []
    for l, f, h, eps, q, ct in zip(top.layer, top.feature, top.H, top.epsilon_sq, top.q_value, top.top_cell_type):
        row = {"feature": f"L{l}:F{f}", "term": term.get((int(l), int(f)), "unlabelled"),
               "top genes": _top_genes(catalogs, int(l), int(f), 5), "H": round(float(h), 1),
               "eps²": round(float(eps), 3), "q": f"{q:.1e}", "highest in": ct}
        if (l, f) in means.index:
            row.update({str(c): round(float(v), 3) for c, v in means.loc[(l, f)].items()})
        rows.append(row)
    return counts, pd.DataFrame(rows)


def consensus_explained(cdir: Path | None, alpha: float = 0.05) -> str:
    """Consensus domain pairs and their nulls; when no test reaches p < alpha, the numbers why."""
    if cdir is None:
        return "<p class='na'>no comparison in this report</p>"
    res = artifacts.read_compare(cdir, "compare")
    if res is None:
        return "<p class='na'>compare has not run</p>"
    cons = (res.get("consensus") or {}).get("all") or {}
    pairs = artifacts.read_compare(cdir, "consensus_pairs")
    if pairs is not None and "edge_set" in pairs:
        pairs = pairs[pairs.edge_set == "all"]
    nulls = {k: v for k, v in cons.items() if k.endswith("_null") and isinstance(v, dict)}
    headline = cons.get("headline_null")
    if isinstance(headline, str) and headline in nulls:
        order = [headline] + [k for k in nulls if k != headline]
    else:
        order = list(nulls)
    rows = [{"null": k.replace("_null", "").replace("_", " ") + (" (headline)" if i == 0 else ""),
             "observed pairs": v.get("observed"), "expected": v.get("expected"),
             "fold": v.get("fold_enrichment"), "p": v.get("p_value"), "draws": v.get("n_draws")}
            for i, (k, v) in enumerate((k, nulls[k]) for k in order)]
    out = _table(pd.DataFrame(rows).round(4) if rows else None, "no consensus test recorded")
    if pairs is not None and len(pairs):
        out += _table(pairs.head(20))
    head = nulls.get(order[0]) if order else None
    p = None if not head else head.get("p_value")
    if p is None or not (p < alpha):
        out += "<p class='note'>" + html.escape(why_no_consensus(cons, head, alpha)) + "</p>"
    return out


def why_no_consensus(cons: dict, head: dict | None, alpha: float = 0.05) -> str:
    """The sentence explaining, with the comparison's numbers, why no consensus domain pair
    reaches p < alpha under the headline null (``cons``: compare.json's consensus entry of one
    edge set; ``head``: its headline null's summary)."""
    per = cons.get("pairs_per_group") or {}
    n = cons.get("n_consensus")
    n_self = cons.get("n_consensus_self_pairs")
    p = None if not head else head.get("p_value")
    expected = None if not head else head.get("expected")
    parts = [f"No consensus domain pair reaches p < {alpha} under the headline null"
             + (f" ({cons['headline_null'].replace('_', ' ')})" if isinstance(cons.get("headline_null"), str) else "")
             + ": " + ", ".join(f"{g} has {k} labelled domain pair(s)" for g, k in per.items())
             + f"; {n} pair(s) are shared by both models"]
    if expected is not None and p is not None:
        parts.append(f"the null expects {float(expected):.2f} shared pair(s) (p = {float(p):.3g}, "
                     f"{head.get('n_draws')} draws)")
    if n_self:
        parts.append(f"{n_self} of the shared pairs link a domain to itself; the headline null keeps "
                     "every self pair, so these are shared in every draw and cannot be significant")
    if per and min(per.values()) < 5:
        parts.append("with so few labelled domain pairs per model even a complete overlap would not be "
                     "surprising: a pair needs labelled source and target features in both models' edge tables")
    return "; ".join(parts) + "."


def biology_section(runs, cdir: Path | None, edges_of) -> str:
    """The whole biology-first section for ``runs`` (report RunData objects); ``edges_of(r)``
    returns the edge table the report uses for a run."""
    parts = ["<h2>What the circuits say about biology</h2><p class='note'>A feature is labelled when GO BP, "
             "Reactome or Hallmark gives it a term at BH q &lt; 0.05; its best term is shown with its "
             "library. Top genes: the genes with the highest mean activation where the feature fires.</p>"]
    for r in runs:
        terms = best_terms(r.run.path)
        parts.append(f"<h3>{html.escape(r.name)}: annotation rate per layer</h3>")
        parts.append(_table(annotation_rate_table(r.catalogs, terms)))
        parts.append(f"<h3>{html.escape(r.name)}: labelled hub features</h3>")
        parts.append(_table(labelled_hubs(r.run.path, r.catalogs, terms), "no labelled hub feature"))
        parts.append(f"<h3>{html.escape(r.name)}: strongest labelled edges</h3>")
        parts.append(_table(strongest_labelled_edges(edges_of(r), r.catalogs, terms), "no edge with both ends labelled"))
        counts, table = celltype_tables(r.run.path, r.catalogs, terms)
        parts.append(f"<h3>{html.escape(r.name)}: traced features by cell type</h3>")
        if counts:
            parts.append("<p class='note'>Per-cell activity = mean SAE activation over the cell's genes; "
                         "Kruskal-Wallis across cell types, BH over all features and layers; eps² = H/(n-1). "
                         + html.escape("; ".join(f"{k}: {v}" for k, v in counts.items())) + ".</p>")
        parts.append(_table(table, "celltypes has not run"))
    parts.append("<h3>Cross-model consensus domain pairs</h3>" + consensus_explained(cdir))
    return "".join(parts)
