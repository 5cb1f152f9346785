"""``analyze`` (one run) and ``compare`` (several runs): load, call the pure statistics, write.

Outputs of :func:`analyze` in ``RUN/analysis/``:

- ``summary.json``: for the ``all`` (the trace's edges: column ``edge``, uncapped) and ``capped``
  (published top-N) edge sets: counts, effect sizes, sign balance, coherence with its null (all
  edges, and without the edges that carry a feature forward), hierarchy and novelty summaries;
- ``attenuation.parquet``, ``hubs.parquet``, ``coherence_null.parquet``, ``domain_pairs.parquet``,
  ``hierarchy.parquet``, ``novel_pairs.parquet`` (tables with an ``edge_set`` column where relevant);
- ``circuit.graphml`` (every edge, ``in_cap`` as an edge attribute) and ``domains.graphml`` (the
  domain meta-graph, edge weight = number of circuit edges).

Outputs of :func:`compare` in its ``out`` directory: ``compare.json``, ``comparison_table.parquet``
(+ ``.csv``), ``consensus_pairs.parquet``, ``consensus_null.parquet``, ``novel_pairs.parquet``,
``hierarchy.parquet``, ``disease.parquet``, ``disease_domains.parquet``, ``tissue.parquet``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts as art
from ..artifacts import as_rundir
from ..errors import InputError
from ..artifacts import EDGE_COLUMN
from ..rundir import RunDir, atomic_write_bytes
from . import coherence as coh
from . import consensus as cons
from . import disease as dis
from . import hierarchy as hier
from . import novel as nov
from . import summary as summ
from . import tissue as tis
from .config import AnalyzeConfig, CompareConfig
from .graph import circuit_graph, write_graphml
from .inputs import infer_n_layers, load_edges


def edge_subset(edges: pd.DataFrame, edge_set: str) -> pd.DataFrame:
    """``all``: the trace's edges (column :data:`~sccircuits.artifacts.EDGE_COLUMN`, the
    configured criterion's set, no cap); ``capped``: the published top-N capped set (``in_cap``)."""
    return art.select_edges(edges, "edges" if edge_set == "all" else "capped")


def load_run(run: RunDir | str | Path) -> dict:
    """Edges plus, when the run's features are annotated (in the run itself or in the
    annotation run the tracer used, :func:`~sccircuits.artifacts.annotation_run`), catalogs
    and enrichment.

    Edge rows: the trace's edges (column ``edge``) and the published capped set (``in_cap``);
    rows that pass neither (e.g. the published rule beyond its cap) are dropped."""
    run = as_rundir(run)
    edges = load_edges(run)
    edges = edges[edges[EDGE_COLUMN] | edges["in_cap"]].reset_index(drop=True)
    catalogs, enrichment = art.read_annotation(run) if art.has_annotation(run) else (None, None)
    return {"run": run, "edges": edges, "catalogs": catalogs, "enrichment": enrichment}


def domain_gene_sets(gmt: str | None, catalogs: Sequence[Mapping[int, pd.DataFrame]]) -> tuple[dict, str]:
    """Domain gene sets from a GMT (when given) or the union of top genes of labelled features."""
    if gmt:
        from ..genesets import read_gmt

        return nov.gene_sets_from_gmt(read_gmt(gmt)), f"gmt:{gmt}"
    tables = [t for cats in catalogs if cats for t in cats.values()]
    return nov.gene_sets_from_catalogs(tables), "union of top genes of features with the label"


def summarize(edges: pd.DataFrame, enrichment: Mapping[int, pd.DataFrame] | None, cfg: AnalyzeConfig,
              catalogs: Mapping[int, pd.DataFrame] | None = None) -> dict:
    """Per edge set: counts, effect sizes, sign balance and coherence (with null) of one condition.

    ``coherence`` is over all edges (the published definition); with ``catalogs``,
    ``coherence_without_persistence`` leaves out edges whose ends share most top genes (a
    feature carried forward by the residual stream) and is the sound figure.
    Returns {"all": {...}, "capped": {...}, "_tables": {...}} where ``_tables`` holds the
    attenuation, hubs and coherence-null DataFrames (not JSON).
    """
    term_sets = coh.term_sets_from_enrichment(enrichment, cfg.libraries, cfg.q_max) if enrichment else None
    top_genes = coh.top_genes_from_catalogs(catalogs) if catalogs else None
    out: dict = {}
    att, hub, nulls = [], [], []
    for es in ("all", "capped"):
        e = edge_subset(edges, es)
        s = summ.describe_edges(e)
        if term_sets is not None:
            res, null = coh.coherence_test(e, term_sets, n_perm=cfg.n_perm, seed=cfg.seed, progress=cfg.progress)
            res.update({"libraries": list(cfg.libraries), "term_q_max": cfg.q_max,
                        "null": "term sets shuffled among features of the same layer and richness stratum (floor log2 #terms)"})
            nulls.append(pd.DataFrame({"edge_set": es, "edges": "all", "draw": np.arange(null.size), "coherence": null}))
            if top_genes is not None:
                ctrl, cnull = coh.coherence_with_persistence_control(
                    e, term_sets, top_genes, cfg.persistence_min_overlap, n_perm=cfg.n_perm, seed=cfg.seed,
                    progress=cfg.progress)
                ctrl.update({"libraries": list(cfg.libraries), "term_q_max": cfg.q_max,
                             "null": "as 'coherence', over the edges that are not persistent"})
                s["coherence_without_persistence"] = ctrl
                nulls.append(pd.DataFrame({"edge_set": es, "edges": "non_persistent", "draw": np.arange(cnull.size),
                                           "coherence": cnull}))
        else:
            res = {"coherence": None, "reason": "annotate stage not complete in this run (nor in the "
                                                "annotation run its trace used)"}
        s["coherence"] = res
        h = summ.hubs(e)
        s["top_hubs"] = h.head(cfg.top_hubs).to_dict("records")
        att.append(summ.attenuation(e).assign(edge_set=es))
        hub.append(h.assign(edge_set=es))
        out[es] = s
    out["_tables"] = {"attenuation": pd.concat(att, ignore_index=True), "hubs": pd.concat(hub, ignore_index=True),
                      "coherence_null": pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame()}
    return out


def analyze(run: RunDir | str | Path, cfg: AnalyzeConfig | None = None) -> dict:
    """Analyse one condition's circuit; write ``RUN/analysis/`` and return the summary dict."""
    cfg = cfg or AnalyzeConfig()
    data = load_run(run)
    run, edges, catalogs = data["run"], data["edges"], data["catalogs"]
    with run.hold("analyze"):  # a failure marks the stage failed and frees the run lock
        run.begin_stage("analyze", cfg, upstream=run.stamps("annotate", "trace"))
        outdir = run / "analysis"
        n_layers = cfg.n_layers or infer_n_layers(run, edges, catalogs)

        result = summarize(edges, data["enrichment"], cfg, catalogs)
        tables = result.pop("_tables")
        pairs = cons.domain_pairs(edge_subset(edges, "all"))
        gene_sets, gs_source = domain_gene_sets(cfg.gene_sets, [catalogs])
        novel = nov.novel_relations(pairs, gene_sets, q_max=cfg.q_max, min_shared=cfg.min_shared_genes)
        hier_rows = []
        for es in ("all", "capped"):
            e = edge_subset(edges, es)
            p = cons.domain_pairs(e)
            nodes, hs = hier.hierarchy(p, hier.domain_depths(e, n_layers), alpha=cfg.pagerank_alpha)
            hier_rows.append(nodes.assign(edge_set=es))
            result[es]["hierarchy"] = hs
            result[es]["n_domain_pairs"] = int(len(p))
            nt = novel if es == "all" else nov.novel_relations(p, gene_sets, q_max=cfg.q_max, min_shared=cfg.min_shared_genes)
            result[es]["novel"] = {**nov.novel_summary(nt), "gene_sets": gs_source, "q_max": cfg.q_max,
                                   "compat_min_shared_genes": cfg.min_shared_genes}
        summary = {"run": str(run.path), "models": sorted(edges["model"].astype(str).unique().tolist()),
                   "n_layers": int(n_layers), "n_layers_from": "config" if cfg.n_layers else "inferred",
                   "sign_convention": summ.SIGN_CLASSES, **result}

        outputs = [art.write_table(run, art.analysis_file(f"{name}.parquet"), df) for name, df in (
            ("attenuation", tables["attenuation"]), ("hubs", tables["hubs"]), ("coherence_null", tables["coherence_null"]),
            ("domain_pairs", pairs), ("hierarchy", pd.concat(hier_rows, ignore_index=True)), ("novel_pairs", novel))]
        if cfg.graphml:
            write_graphml(circuit_graph(edges), outdir / "circuit.graphml")
            write_graphml(hier.domain_graph(pairs), outdir / "domains.graphml")
            outputs += ["analysis/circuit.graphml", "analysis/domains.graphml"]
        outputs.insert(0, art.write_json(run, art.ANALYSIS_SUMMARY, summary))
        run.complete_stage("analyze", outputs=outputs, metrics=_metrics(summary))
        return summary


def _metrics(summary: dict) -> dict:
    m = {}
    for es in ("all", "capped"):
        s = summary[es]
        m[f"{es}_n_edges"] = s["n_edges"]
        m[f"{es}_mean_abs_d"] = s["mean_abs_d"]
        m[f"{es}_frac_d_negative"] = s["sign_balance"]["d_negative"]["frac"]
        m[f"{es}_coherence"] = s["coherence"].get("coherence")
        m[f"{es}_coherence_fold"] = s["coherence"].get("fold_enrichment")
        ctrl = s.get("coherence_without_persistence") or {}
        m[f"{es}_coherence_without_persistence"] = ctrl.get("coherence")
        m[f"{es}_coherence_without_persistence_p"] = ctrl.get("p_value")
    return m


# ---------------------------------------------------------------------------------------------
# compare


def parse_groups(spec: str | Mapping[str, Sequence[str]] | None, names: Mapping[str, RunDir],
                 models: Mapping[str, str]) -> dict[str, list[str]]:
    """Groups of run names from ``"geneformer=RUN_A,RUN_C;scgpt=RUN_B"`` (names or paths).

    With no spec, runs are grouped by their edge table's ``model`` column.
    """
    if spec is None or spec == "":
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(models[n], []).append(n)
        return groups
    if isinstance(spec, str):
        parsed: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            if "=" not in part:
                raise InputError(None, f"--groups: '{part}' is not NAME=RUN[,RUN...]")
            g, members = part.split("=", 1)
            parsed[g.strip()] = [m.strip() for m in members.split(",") if m.strip()]
        spec = parsed
    by_path = {str(Path(r.path).resolve()): n for n, r in names.items()}
    out: dict[str, list[str]] = {}
    for g, members in spec.items():
        out[g] = []
        for m in members:
            key = m if m in names else by_path.get(str(Path(m).resolve()))
            if key is None:
                raise InputError(m, f"group '{g}' names a run that is not among the compared runs")
            out[g].append(key)
    used = [m for ms in out.values() for m in ms]
    if len(set(used)) != len(used):
        raise InputError(None, "--groups: a run appears in more than one group")
    return out


def _run_names(runs: Sequence[RunDir | str | Path]) -> dict[str, RunDir]:
    names: dict[str, RunDir] = {}
    for r in runs:
        rd = as_rundir(r)
        base = rd.path.resolve().name or str(rd.path)
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names[name] = rd
    return names


def _run_summary(rd: RunDir, data: dict, cfg: AnalyzeConfig) -> dict:
    """The run's own analysis when complete, else the same summary computed in memory."""
    if rd.is_complete("analyze"):
        return art.read_analysis_summary(rd)
    s = summarize(data["edges"], data["enrichment"], cfg, data["catalogs"])
    s.pop("_tables")
    return s


def comparison_table(summaries: Mapping[str, dict], models: Mapping[str, str]) -> pd.DataFrame:
    """The side-by-side table: one row per (condition, edge set)."""
    rows = []
    for name, s in summaries.items():
        for es in ("all", "capped"):
            x = s[es]
            c = x.get("coherence") or {}
            rows.append({
                "condition": name, "model": models[name], "edge_set": es,
                "n_edges": x["n_edges"], "n_sources": x["n_sources"], "n_targets": x["n_targets"],
                "mean_abs_d": x["mean_abs_d"], "median_abs_d": x["median_abs_d"],
                "pct_abs_d_gt_1": 100 * x["frac_abs_d_gt_1"], "pct_abs_d_gt_2": 100 * x["frac_abs_d_gt_2"],
                "pct_d_negative_source_supports_target_paper_inhibitory": 100 * x["sign_balance"]["d_negative"]["frac"],
                "pct_d_positive_source_suppresses_target": 100 * x["sign_balance"]["d_positive"]["frac"],
                "coherence": c.get("coherence"), "coherence_null_mean": c.get("null_mean"),
                "coherence_fold": c.get("fold_enrichment"), "coherence_p": c.get("p_value"),
                **{f"coherence_without_persistence{k}": (x.get("coherence_without_persistence") or {}).get(v)
                   for k, v in (("", "coherence"), ("_fold", "fold_enrichment"), ("_p", "p_value"))},
                "n_edges_persistent": ((x.get("coherence_without_persistence") or {}).get("persistence") or {})
                .get("n_edges_persistent"),
            })
    return pd.DataFrame(rows)


def compare(runs: Sequence[RunDir | str | Path], groups=None, out: str | os.PathLike = "compare",
            cfg: CompareConfig | None = None) -> dict:
    """Compare conditions: comparison table, consensus with nulls, novelty, hierarchy, tissue, disease."""
    cfg = cfg or CompareConfig()
    names = _run_names(runs)
    data = {n: load_run(rd) for n, rd in names.items()}
    models = {n: ",".join(sorted(d["edges"]["model"].astype(str).unique())) or "unknown" for n, d in data.items()}
    groups = parse_groups(groups, names, models)
    outrd = RunDir(out)
    with outrd.hold("compare"):  # a failure marks the stage failed and frees the run lock
        outrd.begin_stage("compare", cfg, runs={n: str(rd.path) for n, rd in names.items()}, groups=groups)
        outdir = outrd.path

        summaries = {n: _run_summary(names[n], data[n], cfg.analyze) for n in names}
        table = comparison_table(summaries, models)
        result: dict = {"runs": {n: str(rd.path) for n, rd in names.items()}, "groups": groups,
                        "summaries_from": {n: ("RUN/" + art.ANALYSIS_SUMMARY if names[n].is_complete("analyze")
                                               else "computed now with the 'analyze' options") for n in names},
                        "sign_convention": summ.SIGN_CLASSES, "consensus": {}}

        pair_tables, cons_rows, null_rows = {}, [], []
        for es in cfg.edge_sets:
            gp = {g: cons.domain_pairs(pd.concat([edge_subset(data[n]["edges"], es) for n in members], ignore_index=True))
                  for g, members in groups.items()}
            pair_tables[es] = gp
            if len(groups) < 2:
                result["consensus"][es] = {"note": "consensus needs at least two groups"}
                continue
            sets = {g: cons.pair_set(p) for g, p in gp.items()}
            observed = len(cons.consensus(sets))
            lab = cons.label_permutation_null(sets, cfg.n_perm, cfg.seed, progress=cfg.progress)
            rew = cons.rewiring_null(sets, cfg.n_rewire, cfg.seed, cfg.rewire_swaps_per_draw, progress=cfg.progress)
            edg = cons.edge_permutation_null(gp, cfg.n_edge_perm, cfg.seed, progress=cfg.progress)
            ct = cons.consensus_table(gp, cfg.high_conf_abs_d)
            cons_rows.append(ct.assign(edge_set=es))
            null_rows += [pd.DataFrame({"edge_set": es, "null": "label_permutation", "draw": np.arange(lab.size), "size": lab}),
                          pd.DataFrame({"edge_set": es, "null": "rewiring", "draw": np.arange(rew.size), "size": rew}),
                          pd.DataFrame({"edge_set": es, "null": "edge_permutation", "draw": np.arange(edg.size), "size": edg})]
            result["consensus"][es] = {
                "pairs_per_group": {g: len(s) for g, s in sets.items()},
                "n_consensus": observed,
                "n_high_confidence": int(ct["high_confidence"].sum()) if len(ct) else 0,
                "high_confidence_rule": f"mean |d| > {cfg.high_conf_abs_d} in every group",
                "label_permutation_null": {**cons.null_summary(observed, lab), "seed": cfg.seed,
                                           "method": "random bijection of each non-first group's sorted domains"},
                "rewiring_null": {**cons.null_summary(observed, rew), "seed": cfg.seed,
                                  "method": "directed double-edge swaps preserving out/in degree, no duplicate pairs"},
                "edge_permutation_null": {**cons.null_summary(observed, edg), "seed": cfg.seed,
                                          "method": "target domains of each non-first group's non-self edges permuted "
                                                    "(no new self pairs), collapsed to pairs: keeps every domain's edge "
                                                    "out/in degree and the self pairs"},
                "headline_null": "edge_permutation_null",
                **cons.self_pair_summary(sets),
            }

        # union of pairs over all runs (primary edge set) for novelty, hierarchy and disease
        es0 = cfg.edge_sets[0]
        all_edges = pd.concat([edge_subset(d["edges"], es0) for d in data.values()], ignore_index=True)
        union = cons.domain_pairs(all_edges)
        cons_set = cons.consensus({g: cons.pair_set(p) for g, p in pair_tables[es0].items()}) if len(groups) >= 2 else set()
        union["consensus"] = [k in cons_set for k in zip(union["source_domain"], union["target_domain"])]
        gene_sets, gs_source = domain_gene_sets(cfg.gene_sets, [d["catalogs"] for d in data.values()])
        novel = nov.novel_relations(union, gene_sets, q_max=cfg.q_max, min_shared=cfg.min_shared_genes)
        result["novel"] = {**nov.novel_summary(novel), "n_consensus_pairs_novel": int((novel["novel"] & novel["consensus"]).sum()),
                           "edge_set": es0, "gene_sets": gs_source}

        depths = []
        for n, d in data.items():
            nl = cfg.analyze.n_layers or infer_n_layers(names[n], d["edges"], d["catalogs"])
            depths.append(hier.domain_depths(edge_subset(d["edges"], es0), nl).assign(condition=n))
        dep = pd.concat(depths, ignore_index=True)
        dep = dep.assign(w=dep["n_features"] * dep["mean_relative_depth"]).groupby("domain").agg(
            n_features=("n_features", "sum"), w=("w", "sum")).reset_index()
        dep["mean_relative_depth"] = dep["w"] / dep["n_features"]
        nodes, hs = hier.hierarchy(union, dep[["domain", "n_features", "mean_relative_depth"]], alpha=cfg.analyze.pagerank_alpha)
        result["hierarchy"] = {**hs, "edge_set": es0}

        names_map = dict(zip(union["source_domain"], union["source_name"])) | dict(zip(union["target_domain"], union["target_name"]))
        if cfg.disease_gmt:
            from ..genesets import read_gmt

            cats, dtests = dis.gmt_categories(gene_sets, read_gmt(cfg.disease_gmt), q_max=cfg.q_max)
            mode = f"gmt:{cfg.disease_gmt}"
        else:
            cats = dis.keyword_categories(names_map)
            dtests = pd.DataFrame({"domain": list(cats), "categories": [sorted(c) for c in cats.values()]})
            mode = ("keyword categories from GO term names (circular when labels come from GO; not the published "
                    "procedure, which is compare --compat reference)")
        dtable = dis.disease_vs_consensus(union, union["consensus"], cats)
        if cfg.disease_n_perm and len(union):
            dnull = dis.degree_conditioned_null(union, union["consensus"], cats, cfg.disease_n_perm, cfg.seed,
                                                cfg.disease_min_stratum)
            dtable = dtable.merge(dnull.drop(columns="consensus_in_category"), on="category", how="left")
        result["disease"] = {"mode": mode, "edge_set": es0, "tests": dtable.to_dict("records"),
                             "fisher": "pairs as independent units; confounded by domain degree (naive)",
                             "degree_null": ("disease categories permuted among domains of the same degree stratum "
                                             f"(>= {cfg.disease_min_stratum} domains); count of consensus pairs with a "
                                             "disease end; two-sided p") if cfg.disease_n_perm else None}

        tissue_rows = []
        for c in cfg.contrasts:
            focus, base = c.split(":")
            fk, bk = (parse_groups({"x": [focus, base]}, names, models)["x"])
            fe, be = edge_subset(data[fk]["edges"], es0), edge_subset(data[bk]["edges"], es0)
            t = tis.tissue_specificity(cons.domain_pairs(fe), cons.domain_pairs(be))
            same_model = models[fk] == models[bk]
            tissue_rows.append(t.assign(focus=fk, baseline=bk, same_model=same_model))
        tissue = pd.concat(tissue_rows, ignore_index=True) if tissue_rows else pd.DataFrame()
        result["tissue"] = {"contrasts": cfg.contrasts, "edge_set": es0,
                            "note": "cleanest contrast: same model and SAE, different input cells",
                            "tests": tissue.to_dict("records")}
        result["comparison_table"] = table.to_dict("records")
        ref_tables = _reference(data, names, groups, cfg, result) if cfg.compat == "reference" else {}

        atomic_write_bytes(outdir / "comparison_table.csv", table.to_csv(index=False).encode())
        outputs = [art.write_compare(outdir, name, obj) for name, obj in (
            ("comparison_table", table),
            ("consensus_pairs", pd.concat(cons_rows, ignore_index=True) if cons_rows else pd.DataFrame()),
            ("consensus_null", pd.concat(null_rows, ignore_index=True) if null_rows else pd.DataFrame()),
            ("novel_pairs", novel), ("hierarchy", nodes), ("disease", dtable), ("disease_domains", dtests),
            ("tissue", tissue), *ref_tables.items(), ("compare", result))] + ["comparison_table.csv"]
        metrics = {f"{es}_n_consensus": v.get("n_consensus") for es, v in result["consensus"].items()}
        outrd.complete_stage("compare", outputs=outputs, metrics=metrics)
        return result


def _reference(data: dict, names: Mapping[str, RunDir], groups: dict, cfg: CompareConfig, result: dict) -> dict:
    """``--compat reference``: the published analyses into ``result["reference"]``; returns tables."""
    from .reference import annotation_inputs, compare_reference

    files, trrust = list(cfg.compat_gene_sets), cfg.compat_trrust
    if not files or trrust is None:
        rec_files, rec_trrust = annotation_inputs(next(iter(names.values())))
        files, trrust = files or rec_files, trrust if trrust is not None else rec_trrust
    contrasts = cfg.compat_contrasts or cfg.contrasts
    ref, tables = compare_reference(data, groups, contrasts, files, trrust, cfg.n_perm, cfg.seed,
                                    cfg.min_shared_genes, progress=cfg.progress)
    result["reference"] = ref
    return tables
