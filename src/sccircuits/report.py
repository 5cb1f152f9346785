"""One self-contained HTML report of a run (and optionally of a comparison of runs).

Every number shown is read from the run's own tables (edges, catalogs, analysis and validation
outputs, manifest), so the report always agrees with the files beside it. Figures are PNGs
embedded as base64; the page loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import check, option
from .errors import InputError
from .rundir import RunDir, atomic_write_bytes, environment


@dataclass
class ReportConfig:
    """Options of ``sccircuits report``."""

    top_circuits: int = option(25, "Number of strongest annotated edges listed as top circuits.")
    capped: bool = option(False, "Use only the published top-N-capped edges (in_cap) in edge figures.")

    def __post_init__(self) -> None:
        check(self.top_circuits >= 0, "top_circuits must be >= 0")


# -- reading -------------------------------------------------------------------------------
def _read_parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _layer_tables(folder: Path, suffix: str) -> dict[int, pd.DataFrame]:
    out = {}
    for p in sorted(folder.glob(f"layer*_{suffix}.parquet")):
        out[int(p.name[5:].split("_")[0])] = pd.read_parquet(p)
    return out


@dataclass
class RunData:
    """What the report needs from one run directory."""

    name: str
    run: RunDir
    manifest: dict
    edges: pd.DataFrame | None
    catalogs: dict[int, pd.DataFrame]
    analysis: dict | None
    validation: dict | None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunData":
        run = RunDir(path, create=False)
        m = run.manifest
        edges = _read_parquet(run.path / "trace" / "edges.parquet") if run.is_complete("trace") else None
        cats = _layer_tables(run.path / "annotation", "catalog") if run.is_complete("annotate") else {}
        analysis = _read_json(run.path / "analysis" / "summary.json") if run.is_complete("analyze") else None
        validation = _read_json(run.path / "validation" / "summary.json") if run.is_complete("validate") else None
        return cls(run.path.name, run, m, edges, cats, analysis, validation)

    @property
    def model_label(self) -> str:
        ex = (self.manifest["stages"].get("extract") or {}).get("config", {})
        return str(ex.get("model") or ex.get("model_path") or self.name)


# -- figures ---------------------------------------------------------------------------------
def _fig_to_img(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_d_distribution(runs: list[RunData], capped: bool) -> str | None:
    plt = _plt()
    have = [(r, _edges(r, capped)) for r in runs if r.edges is not None and len(_edges(r, capped))]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    lo = min(float(e.cohens_d.min()) for _, e in have)
    hi = max(float(e.cohens_d.max()) for _, e in have)
    bins = np.linspace(lo, hi, 60)
    for r, e in have:
        ax.hist(e.cohens_d, bins=bins, alpha=0.5, label=r.name)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Cohen's d (d < 0: ablating the source lowers the target)")
    ax.set_ylabel("edges")
    ax.legend(fontsize=8)
    return _fig_to_img(fig, "distribution of Cohen's d")


def figure_attenuation(r: RunData, capped: bool) -> str | None:
    plt = _plt()
    e = _edges(r, capped)
    if e is None or not len(e):
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    for s, g in e.groupby("source_layer"):
        dist = (g.target_layer - g.source_layer).value_counts().sort_index()
        ax.plot(dist.index, dist.values, marker="o", label=f"source layer {s}")
    ax.set_xlabel("downstream distance (layers)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("edges")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _fig_to_img(fig, f"attenuation curves of {r.name}")


def figure_sae_quality(runs: list[RunData]) -> str | None:
    plt = _plt()
    rows = [t.assign(run=r.name) for r in runs if (t := sae_quality_table(r)) is not None]
    if not rows:
        return None
    df = pd.concat(rows)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, g in df.groupby("run"):
        ax.plot(g.layer, 100 * g.variance_explained, marker="o", label=name)
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("held-out variance explained (%)")
    ax.legend(fontsize=8)
    return _fig_to_img(fig, "SAE variance explained per layer")


def figure_null(null: np.ndarray, observed: float, xlabel: str, alt: str) -> str | None:
    """Histogram of a permutation null with the observed value marked."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not null.size or not np.isfinite(observed):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(null, bins=30, color="#999", label="null draws")
    ax.axvline(observed, color="crimson", lw=2, label="observed")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("draws")
    ax.legend(fontsize=8)
    return _fig_to_img(fig, alt)


def coherence_section(r: RunData) -> str:
    """Coherence against its stratified null (all edges and the published cap)."""
    if not r.analysis:
        return "<p class='na'>analyze has not run</p>"
    rows = []
    for edge_set in ("all", "capped"):
        s = r.analysis.get(edge_set) or {}
        for key, which in (("coherence_without_persistence", "without persistent edges (headline)"),
                           ("coherence", "all (published definition)")):
            c = s.get(key)
            if c is None:
                continue
            pers = c.get("persistence") or {}
            rows.append({"edges": edge_set, "which": which, "edges with both ends annotated": c.get("n_edges_annotated"),
                         "coherent": c.get("n_coherent"), "coherence": c.get("coherence"),
                         "null mean": c.get("null_mean"), "fold enrichment": c.get("fold_enrichment"),
                         "permutation p": c.get("p_value"), "draws": c.get("n_perm"),
                         "persistent edges left out": pers.get("n_edges_persistent"),
                         "their coherence": pers.get("coherence"), "note": c.get("reason", "")})
    html_ = ("<p class='note'>Persistent edges: source and target share at least half of their top genes "
             "(a feature carried forward by the residual stream); their term sets intersect by construction, "
             "so the headline leaves them out and shows their coherence apart.</p>" + _table(pd.DataFrame(rows).round(4)))
    null = _read_parquet(r.run.path / "analysis" / "coherence_null.parquet")
    alls = r.analysis.get("all") or {}
    key, which = (("coherence_without_persistence", "non_persistent") if alls.get("coherence_without_persistence")
                  else ("coherence", "all"))
    obs = (alls.get(key) or {}).get("coherence")
    if null is not None and len(null) and obs is not None:
        sel = null[(null.edge_set == "all") & (null["edges"] == which)] if "edges" in null else null[null.edge_set == "all"]
        img = figure_null(sel.coherence.to_numpy(), float(obs),
                          f"coherence ({which.replace('_', '-')} edges sharing a term)", f"coherence null of {r.name}")
        html_ += img or ""
    return html_


def consensus_section(cdir: Path) -> str:
    """Cross-model consensus with its three nulls (edge permutation = headline), from compare.json
    and consensus_null.parquet."""
    res = _read_json(cdir / "compare.json")
    if not res:
        return "<p class='na'>compare has not run</p>"
    rows, imgs = [], []
    null = _read_parquet(cdir / "consensus_null.parquet")
    for edge_set, c in (res.get("consensus") or {}).items():
        for kind in ("edge_permutation_null", "label_permutation_null", "rewiring_null"):
            if kind not in c:
                continue
            n = c.get(kind) or {}
            rows.append({"edges": edge_set, "null": kind.replace("_null", "").replace("_", " ")
                         + (" (headline)" if c.get("headline_null") == kind else ""),
                         "consensus pairs": c.get("n_consensus"), "of which self pairs": c.get("n_consensus_self_pairs"),
                         "expected": n.get("expected"), "fold": n.get("fold_enrichment"), "p": n.get("p_value"),
                         "draws": n.get("n_draws"), "high-confidence pairs": c.get("n_high_confidence"),
                         "pairs per group": json.dumps(c.get("pairs_per_group")),
                         "self pairs per group": json.dumps(c.get("self_pairs_per_group"))})
            if null is not None and len(null) and edge_set == "all":
                sel = null[(null.edge_set == edge_set) & (null["null"] == kind.replace("_null", ""))]
                img = figure_null(sel["size"].to_numpy(), float(c.get("n_consensus") or 0),
                                  f"consensus pairs ({kind.replace('_', ' ')})", kind)
                if img and sel["size"].max() > 0:
                    imgs.append(img)
    note = ("<p class='note'>Edge permutation (headline): each non-first group's edges keep their source "
            "domain and get a permuted target domain (never a new self pair), so every domain keeps its "
            "popularity and each group its self pairs (held fixed, so counted apart, not tested). The label "
            "permutation ignores domain popularity and the pair-level rewiring ignores self pairs; both report "
            "overlap between independent models (tests/test_nulls.py).</p>")
    return note + _table(pd.DataFrame(rows).round(4)) + "".join(imgs)


def disease_section(cdir: Path) -> str:
    """Disease pairs vs consensus: the naive Fisher test beside the degree-conditioned null."""
    res = _read_json(cdir / "compare.json")
    t = _read_parquet(cdir / "disease.parquet")
    if not res or t is None or not len(t):
        return "<p class='na'>no disease table</p>"
    d = res.get("disease") or {}
    cols = {"category": "category", "n_pairs": "disease pairs", "consensus_in_category": "consensus disease pairs",
            "odds_ratio": "Fisher OR (naive)", "p_value": "Fisher p (naive)", "degree_null_mean": "expected (degree null)",
            "degree_null_fold": "fold (degree null)", "degree_null_p": "p (degree null)"}
    t = t[[c for c in cols if c in t]].rename(columns=cols)
    return (f"<p class='note'>Categories: {html.escape(str(d.get('mode')))}. Fisher treats pairs as independent "
            "and is confounded by domain degree (popular domains are in more consensus pairs and more disease "
            f"categories). Degree null: {html.escape(str(d.get('degree_null')))}.</p>" + _table(t.round(4)))


# -- tables -----------------------------------------------------------------------------------
def _edges(r: RunData, capped: bool) -> pd.DataFrame | None:
    if r.edges is None:
        return None
    return r.edges[r.edges.in_cap] if capped and "in_cap" in r.edges else r.edges


def sae_quality_table(r: RunData) -> pd.DataFrame | None:
    """Per-layer SAE metrics as recorded by train-sae in the manifest."""
    return sae_quality_from_manifest(r.manifest)


def sae_quality_from_manifest(manifest: dict) -> pd.DataFrame | None:
    """Per-layer SAE metrics (variance explained, L0, dead latents, ...) of a run's manifest,
    or None when train-sae has not completed."""
    st = manifest["stages"].get("train-sae") or {}
    if st.get("status") != "complete":
        return None
    metrics = st.get("metrics") or {}
    keep = ["layer", "variance_explained", "l0", "dead", "dead_fraction", "d_sae", "n_train_positions",
            "n_eval_positions", "recipe"]
    rows = [{"layer": int(k[5:]), **v} for k, v in metrics.items() if k.startswith("layer")]
    if not rows:
        return None
    df = pd.DataFrame(rows).sort_values("layer")
    return df[[c for c in keep if c in df]].round(4)


def annotation_table(r: RunData) -> pd.DataFrame | None:
    """Per-layer annotation rate: annotated / alive features (alive = fired at least once)."""
    if not r.catalogs:
        return None
    rows = []
    for layer, c in sorted(r.catalogs.items()):
        alive = c[c.fire_count > 0]
        annotated = int((alive.label_name != "unannotated").sum())
        rows.append({"layer": layer, "features": len(c), "alive": len(alive), "annotated": annotated,
                     "annotation rate (%)": round(100 * annotated / max(len(alive), 1), 1)})
    return pd.DataFrame(rows)


def edge_summary(r: RunData, capped: bool) -> dict | None:
    """Counts, |d| and sign balance computed from edges.parquet."""
    e = _edges(r, capped)
    if e is None:
        return None
    ad = e.cohens_d.abs()
    n = len(e)
    return {"edges": n, "source features": int(e[["source_layer", "source_feature"]].drop_duplicates().shape[0]),
            "mean |d|": round(float(ad.mean()), 3) if n else None,
            "median |d|": round(float(ad.median()), 3) if n else None,
            "% d < 0 (source supports target; paper: 'inhibitory')": round(100 * float((e.cohens_d < 0).mean()), 1) if n else None,
            "% above the null-ablation noise floor": (round(100 * float(e.above_noise_floor.mean()), 1)
                                                      if n and "above_noise_floor" in e else None)}


def top_circuits(r: RunData, n: int, capped: bool) -> pd.DataFrame | None:
    e = _edges(r, capped)
    if e is None or not len(e):
        return None
    ann = e[(e.source_label != "unannotated") & (e.target_label != "unannotated")]
    cols = ["source_layer", "source_feature", "source_label", "target_layer", "target_feature",
            "target_label", "cohens_d", "consistency", "n_cells", "q_value"]
    top = ann.reindex(ann.cohens_d.abs().sort_values(ascending=False).index).head(n)
    return top[[c for c in cols if c in top]].round(4)


def _table(df: pd.DataFrame | None) -> str:
    if df is None:
        return "<p class='na'>not available in this run</p>"
    return df.to_html(index=False, border=0, classes="t", na_rep="")


def _dict_table(d: dict | None) -> str:
    if not d:
        return "<p class='na'>not available in this run</p>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table class='t kv'>{rows}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:400]
    return str(v)


def _scalars(d: dict | None) -> dict | None:
    """The scalar entries of a (possibly nested) summary dict, flattened with dotted keys."""
    if not d:
        return None
    out = {}

    def walk(prefix: str, x) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(x, (int, float, str, bool)) or x is None:
            out[prefix] = x

    walk("", d)
    return out


# -- the page ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table.t{border-collapse:collapse;font-size:.85em;margin:.5em 0}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
table.kv th{font-weight:600;color:#444}.na{color:#999;font-style:italic}img{max-width:100%}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:1px 4px}
"""


def build_report(runs: list[str | os.PathLike], compare: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, cfg: ReportConfig | None = None) -> Path:
    """Write a self-contained HTML report of ``runs`` (and a comparison directory) and return its path.

    ``out`` defaults to ``<first run>/report.html``.
    """
    cfg = cfg or ReportConfig()
    if not runs:
        raise InputError(None, "report needs at least one run directory")
    data = [RunData.load(p) for p in runs]
    parts = [f"<h1>sccircuits report</h1><p class='note'>Runs: {', '.join(html.escape(str(r.run.path)) for r in data)}."
             " Every number below is read from the run's tables. Sign convention: d &lt; 0 means ablating the"
             " source feature lowers the target feature (the source supports the target; the paper calls these"
             " edges 'inhibitory').</p>"]

    parts.append("<h2>SAE quality per layer</h2>")
    if (img := figure_sae_quality(data)):
        parts.append(img)
    for r in data:
        parts.append(f"<h3>{html.escape(r.name)}</h3>{_table(sae_quality_table(r))}")

    parts.append("<h2>Annotation rate per layer</h2>")
    for r in data:
        parts.append(f"<h3>{html.escape(r.name)}</h3>{_table(annotation_table(r))}")

    parts.append("<h2>Edges: effect sizes and sign balance</h2>")
    if (img := figure_d_distribution(data, cfg.capped)):
        parts.append(img)
    summ = {r.name: edge_summary(r, cfg.capped) for r in data}
    if any(summ.values()):
        parts.append(_table(pd.DataFrame([{"run": k, **v} for k, v in summ.items() if v])))

    parts.append("<h2>Attenuation</h2><p class='note'>Edges per downstream distance, per source layer. "
                 "That effects live downstream is true by construction of the tracing, not a finding.</p>")
    for r in data:
        img = figure_attenuation(r, cfg.capped)
        parts.append(f"<h3>{html.escape(r.name)}</h3>" + (img or "<p class='na'>no edges</p>"))

    parts.append("<h2>Top circuits</h2>")
    for r in data:
        parts.append(f"<h3>{html.escape(r.name)}</h3>{_table(top_circuits(r, cfg.top_circuits, cfg.capped))}")

    parts.append("<h2>Biological coherence against its null</h2><p class='note'>Coherence: share of edges with "
                 "both ends annotated whose significant GO/KEGG/Reactome term sets intersect. Null: term sets "
                 "shuffled among features of the same layer and annotation richness; p = (1+k)/(1+N).</p>")
    for r in data:
        parts.append(f"<h3>{html.escape(r.name)}</h3>{coherence_section(r)}")
        if r.analysis:
            parts.append(f"<details><summary>all analysis numbers of {html.escape(r.name)}</summary>"
                         f"{_dict_table(_scalars(r.analysis))}</details>")

    if compare is not None:
        cdir = Path(compare)
        parts.append("<h2>Cross-model comparison</h2>")
        table = _read_parquet(cdir / "comparison_table.parquet")
        parts.append("<h3>Conditions side by side</h3>" + _table(None if table is None else table.round(4)))
        parts.append("<h3>Cross-model consensus domain pairs</h3>" + consensus_section(cdir))
        pairs = _read_parquet(cdir / "consensus_pairs.parquet")
        if pairs is not None and len(pairs):
            parts.append("<h3>Consensus pairs</h3>" + _table(pairs.head(50)))
        parts.append("<h3>Disease pairs and consensus</h3>" + disease_section(cdir))

    if any(r.validation for r in data):
        parts.append("<h2>Validation against CRISPRi Perturb-seq</h2>")
        for r in data:
            table = pd.DataFrame(r.validation) if r.validation else None
            parts.append(f"<h3>{html.escape(r.name)}</h3>{_table(table)}")

    parts.append("<h2>Configuration and versions</h2>")
    for r in data:
        cfgs = {name: st.get("config") for name, st in r.manifest["stages"].items()}
        parts.append(f"<h3>{html.escape(r.name)}</h3><pre>{html.escape(json.dumps(cfgs, indent=1, default=str))}</pre>")
    parts.append(f"<pre>{html.escape(json.dumps(environment(), indent=1))}</pre>")

    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sccircuits report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    target = Path(out) if out is not None else data[0].run.path / "report.html"
    atomic_write_bytes(target, page.encode())
    return target
