"""``compare --compat reference``: the published cross-condition analyses, rule by rule.

Runs next to the default analyses of :func:`sccircuits.analysis.compare` and reports what the
published scripts (bio-sae-circuits ``src/14_biological_knowledge_extraction.py`` and
``src/15_phase6_predictions_and_validation.py``) would report on the same runs:

- the edges are the capped ones (the published ``circuit_graph.json`` holds the top-50 cap);
- a domain is a label (id here, 1:1 with the published label string); unannotated ends keep a
  key of their own, because the published disease test counts pairs with them (L871-878);
- consensus = intersection over groups of each group's union of annotated pairs (L353-386);
  the published label-permutation p is ``mean(null >= observed)`` and the enrichment
  ``observed / max(expected, 1)`` (L439-441), taken here from the same draws as the default
  null (the published draws depend on Python's string-hash order and cannot be replayed);
- novel relations with the published domain gene sets (L505-570, :func:`.novel.gene_sets_published`);
- disease mapping, published procedure (:func:`.disease.published_disease_gene_sets` etc.);
- tissue contrasts with the published keywords and one-sided Fisher
  (:func:`.tissue.tissue_specificity_published`); a contrast focus may join runs with ``+``
  (the published focus is the union of two tissue conditions, L1036-1040).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..rundir import RunDir
from . import consensus as cons
from . import disease as dis
from . import novel as nov
from . import tissue as tis

UNANNOTATED = "unannotated"


def annotation_inputs(rd: RunDir) -> tuple[list[str], str | None]:
    """(gene-set files in the order given, TRRUST file or None) recorded by the annotate stage of
    the run holding ``rd``'s feature catalogs."""
    from ..validate.predictions import annotation_run

    st = annotation_run(rd.path).require("annotate")
    cfg = st.get("config", {})
    others = {cfg.get("string_pairs"), cfg.get("trrust")} - {None}
    return [p for p in st.get("inputs", {}) if p not in others], cfg.get("trrust")


def _keys(edges: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    src = np.where(edges["source_annotated"], edges["source_label_id"].astype(str), UNANNOTATED)
    tgt = np.where(edges["target_annotated"], edges["target_label_id"].astype(str), UNANNOTATED)
    return src, tgt


def _domain_genes(rd: RunDir, edges: pd.DataFrame, acc: dict[str, set[str]]) -> None:
    """Add each edge's source genes to its source label and target genes to its target label
    (published L705-715; gene lists: top 20 of annotated features only, src/14 L107-132)."""
    from ..validate.predictions import read_top_genes

    if edges.empty:
        return
    layers = set(edges["source_layer"]) | set(edges["target_layer"])
    g = read_top_genes(rd.path, layers, 20, annotated_only=True)
    lists = {k: list(v) for k, v in g.groupby(["layer", "feature"])["gene"]}
    src, tgt = _keys(edges)
    for side, keys in (("source", src), ("target", tgt)):
        for key, l, f in zip(keys, edges[f"{side}_layer"], edges[f"{side}_feature"]):
            acc.setdefault(key, set()).update(lists.get((int(l), int(f)), ()))


def compare_reference(data: Mapping[str, dict], groups: Mapping[str, Sequence[str]], contrasts: Sequence[str],
                      gene_set_files: Sequence[str], trrust: str | None, n_perm: int, seed: int,
                      min_shared: int = 3, progress: bool = False) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The published analyses of several runs (module docstring). ``data``: run name -> the
    :func:`sccircuits.analysis.pipeline.load_run` dict. Returns (JSON-able result, tables)."""
    from ..annotate.labels import find_label_library
    from ..genesets import library_name, read_gmt, read_pairs

    if not gene_set_files:
        raise InputError(None, "--compat reference needs the gene-set libraries (GO BP, KEGG, Reactome): "
                               "none recorded by the annotate stage; pass them with --compat-gene-sets")
    libraries = {library_name(p): read_gmt(p) for p in gene_set_files}
    go = libraries[find_label_library(list(libraries))]
    capped = {n: d["edges"][d["edges"]["in_cap"]].reset_index(drop=True) for n, d in data.items()}
    names: dict[str, str] = {}
    pairs_of, annotated_of = {}, {}
    for n, e in capped.items():
        src, tgt = _keys(e)
        pairs_of[n] = set(zip(src, tgt))
        annotated_of[n] = {p for p in pairs_of[n] if UNANNOTATED not in p}
        names.update(zip(e["source_label_id"].astype(str), e["source_label"].astype(str)))
        names.update(zip(e["target_label_id"].astype(str), e["target_label"].astype(str)))
    all_pairs = set().union(*pairs_of.values()) if pairs_of else set()

    # consensus (src/14 L353-441)
    group_sets = {g: set().union(*(annotated_of[m] for m in members)) for g, members in groups.items()}
    consensus = cons.consensus(group_sets) if len(group_sets) >= 2 else set()
    res: dict = {"edge_set": "capped", "gene_set_files": list(gene_set_files), "consensus": {"n_consensus": len(consensus)}}
    if len(group_sets) >= 2:
        draws = cons.label_permutation_null(group_sets, n_perm, seed, progress=progress)
        expected = float(draws.mean()) if draws.size else float("nan")
        res["consensus"].update({"permutation_expected": expected,
                                 "permutation_p_value": float(np.mean(draws >= len(consensus))) if draws.size else None,
                                 "enrichment_ratio": len(consensus) / max(expected, 1) if draws.size else None})

    # novel relations (src/14 L505-586)
    ann_union = set().union(*annotated_of.values()) if annotated_of else set()
    domains = {d for p in ann_union for d in p}
    gene_sets = nov.gene_sets_published({d: names.get(d, d) for d in domains}, libraries.values())
    n_edges = pd.concat([pd.DataFrame({"source_domain": _keys(e)[0], "target_domain": _keys(e)[1]}) for e in capped.values()],
                        ignore_index=True).value_counts().rename("n_edges").reset_index()
    n_edges = n_edges[(n_edges["source_domain"] != UNANNOTATED) & (n_edges["target_domain"] != UNANNOTATED)]
    novel = nov.novel_relations(n_edges.reset_index(drop=True), gene_sets, min_shared=min_shared)
    matched = sorted(gene_sets)
    n_known = sum(1 for i, a in enumerate(matched) for b in matched[i + 1:] if len(gene_sets[a] & gene_sets[b]) >= min_shared)
    res["novel"] = {"n_domains": len(domains), "n_domains_matched": len(matched), "n_known_links": n_known,
                    "n_novel_pairs": int(novel["novel_compat"].sum()),
                    "n_novel_edges": int(novel.loc[novel["novel_compat"], "n_edges"].sum())}

    # disease mapping (src/15 L619-905)
    domain_genes: dict[str, set[str]] = {}
    for n, e in capped.items():
        _domain_genes(data[n]["run"], e, domain_genes)
    tfs = {a for a, _ in read_pairs(trrust)} if trrust else None
    dsets = dis.published_disease_gene_sets(go, tfs)
    denr = dis.published_domain_enrichment(domain_genes, dsets)
    dpairs = dis.published_disease_pairs(all_pairs, denr)
    res["disease"] = {"categories": {c: len(g) for c, g in dsets.items()},
                      "trrust_TFs": "included" if tfs is not None else "left out (no TRRUST file)",
                      "n_domains_enriched": int(denr.loc[denr["enriched"], "domain"].nunique()),
                      "n_pairs": len(all_pairs), "n_disease_pairs": len(dpairs),
                      **dis.published_disease_consensus(all_pairs, dpairs, consensus)}

    # tissue contrasts (src/14 L1030-1087)
    rows = []
    for c in contrasts:
        focus, base = c.split(":")
        fp = set().union(*(annotated_of[_member(x, data)] for x in focus.split("+")))
        bp = set().union(*(annotated_of[_member(x, data)] for x in base.split("+")))
        rows.append(tis.tissue_specificity_published(fp, bp, names).assign(focus=focus, baseline=base))
    tissue = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    res["tissue"] = {"tests": tissue.to_dict("records")}
    return res, {"reference_novel_pairs": novel, "reference_disease_domains": denr, "reference_tissue": tissue}


def _member(name: str, data: Mapping[str, dict]) -> str:
    if name in data:
        return name
    resolved = {str(Path(d["run"].path).resolve()): n for n, d in data.items()}
    key = resolved.get(str(Path(name).resolve()))
    if key is None:
        raise InputError(name, "a --contrast names a run that is not among the compared runs")
    return key
