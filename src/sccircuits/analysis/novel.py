"""Novel relations: domain pairs whose gene sets show no known link (docs/method.md §6).

Each domain has a gene set: the genes of its term in a GMT file when given (keyed by term id,
e.g. ``GO:0006915``), otherwise the union of the top genes of the features labelled with it.
For a pair (A, B) the overlap of the two sets is tested with a one-sided hypergeometric test
against the background (all genes of all domain sets, or the GMT's genes), BH over the pairs.

- ``novel`` (recommended): no significant overlap (q >= ``q_max``) and A != B;
- ``novel_compat`` (reference): A != B and not "known", known = both domains have a gene set
  and they share at least ``min_shared`` (3) genes (bio-sae-circuits
  ``src/14_biological_knowledge_extraction.py`` L540-570). A pair with a domain that has no
  gene set is therefore novel under the published rule (it can never be known).

Pairs whose domains have no gene set get NaN and are never ``novel``.

With ``--compat reference`` the domain gene sets come from :func:`gene_sets_published`: the
published matching of domains to the merged GO BP + KEGG + Reactome libraries (L505-534):
the exact term, else the *first* term (in library and file order) whose name contains the
domain's name or is contained in it (a substring match, so an unmatched domain can take the
genes of a broader or narrower term).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..stats import bh_fdr, hypergeom_sf


def gene_sets_from_catalogs(catalogs: Iterable[pd.DataFrame]) -> dict[str, frozenset[str]]:
    """Union of the top genes of all features sharing a label id, over one or more catalogs."""
    acc: dict[str, set[str]] = {}
    for cat in catalogs:
        ann = cat[cat["label_name"].astype(str) != "unannotated"]
        ids = ann["label_id"].where(ann["label_id"].notna(), ann["label_name"]).astype(str)
        for lid, genes in zip(ids, ann["top_genes"]):
            acc.setdefault(lid, set()).update(str(g) for g in genes)
    return {k: frozenset(v) for k, v in acc.items()}


def gene_sets_from_gmt(sets: Mapping[str, tuple[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """Domain gene sets from :func:`sccircuits.genesets.read_gmt` output (term id -> genes)."""
    return {tid: frozenset(genes) for tid, (_, genes) in sets.items()}


def gene_sets_published(domain_names: Mapping[str, str], libraries: Iterable[Mapping[str, tuple[str, frozenset[str]]]]
                        ) -> dict[str, frozenset[str]]:
    """Domain id -> genes by the published rule (L505-534).

    ``libraries``: :func:`sccircuits.genesets.read_gmt` outputs in the published order (GO BP,
    KEGG, Reactome); merged like ``dict.update`` (a repeated term id keeps its first position,
    takes the later genes). A domain whose id is a term id gets that term; otherwise the first
    term whose name contains the domain's name, or whose name the domain's name contains.
    """
    merged: dict[str, tuple[str, frozenset[str]]] = {}
    for lib in libraries:
        merged.update(lib)
    terms = [(str(name), genes) for name, genes in merged.values()]
    out = {}
    for dom, name in domain_names.items():
        if dom in merged:
            out[dom] = frozenset(merged[dom][1])
            continue
        name = str(name)
        for term, genes in terms:
            if name in term or term in name:
                out[dom] = frozenset(genes)
                break
    return out


def novel_relations(pairs: pd.DataFrame, gene_sets: Mapping[str, frozenset[str]], background: int | None = None,
                    q_max: float = 0.05, min_shared: int = 3) -> pd.DataFrame:
    """``pairs`` (source_domain, target_domain, ...) with overlap statistics and novelty flags.

    Added columns: source_size, target_size, shared_genes, background, p_overlap, q_overlap,
    novel, novel_compat. ``background`` defaults to the size of the union of all gene sets.
    """
    if background is None:
        background = len(set().union(*gene_sets.values())) if gene_sets else 0
    out = pairs.copy()
    s_sets = [gene_sets.get(d) for d in out["source_domain"]]
    t_sets = [gene_sets.get(d) for d in out["target_domain"]]
    have = np.array([a is not None and b is not None for a, b in zip(s_sets, t_sets)], dtype=bool)
    out["source_size"] = [len(a) if a is not None else -1 for a in s_sets]
    out["target_size"] = [len(b) if b is not None else -1 for b in t_sets]
    out["shared_genes"] = [len(a & b) if h else -1 for a, b, h in zip(s_sets, t_sets, have)]
    out["background"] = int(background)
    p = np.full(len(out), np.nan)
    if have.any():
        p[have] = hypergeom_sf(out["shared_genes"].to_numpy()[have], out["source_size"].to_numpy()[have],
                               out["target_size"].to_numpy()[have], background)
    out["p_overlap"] = p
    out["q_overlap"] = bh_fdr(p)
    different = (out["source_domain"] != out["target_domain"]).to_numpy()
    out["novel"] = have & different & (out["q_overlap"].fillna(0).to_numpy() >= q_max)
    known = have & (out["shared_genes"].to_numpy() >= min_shared)
    out["novel_compat"] = different & ~known
    return out


def novel_summary(table: pd.DataFrame) -> dict:
    """Counts of pairs and edges flagged novel, by both rules."""
    n_edges = table["n_edges"] if "n_edges" in table else pd.Series(1, index=table.index)
    have = table["shared_genes"] >= 0
    return {
        "n_pairs": int(len(table)),
        "n_pairs_with_gene_sets": int(have.sum()),
        "n_pairs_novel": int(table["novel"].sum()),
        "n_edges_novel": int(n_edges[table["novel"]].sum()),
        "n_pairs_novel_compat": int(table["novel_compat"].sum()),
        "n_edges_novel_compat": int(n_edges[table["novel_compat"]].sum()),
    }
