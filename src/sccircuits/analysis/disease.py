"""Disease mapping of domain pairs (docs/method.md §6).

Domains get disease categories in one of two ways:

- ``keyword`` (compat, the published approach): keyword matches in the domain's GO term name.
  This is circular when the labels themselves come from GO, which is why
- ``gmt`` (recommended): an independent disease gene-set file; a domain belongs to a disease
  when its gene set overlaps the disease's genes significantly (hypergeometric, BH over all
  domain x disease tests, q < 0.05).

A pair is disease-associated when either domain has a category. Only annotated pairs enter
(domain pairs are annotated by definition). Tests: for each category and for "any disease",
Fisher's exact test of category membership vs consensus membership over the pairs, BH over
the categories:

    [[in category & consensus, in category & not consensus],
     [not in category & consensus, not in category & not consensus]]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..stats import bh_fdr, hypergeom_sf
from .tissue import fisher_2x2, keyword_classes

DISEASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cancer": ("cell cycle", "proliferation", "apoptotic", "apoptosis", "dna repair", "dna damage", "mitotic",
               "cell death", "growth factor"),
    "immune_inflammatory": ("inflammat", "immune", "cytokine", "interferon", "interleukin", "antigen"),
    "metabolic": ("insulin", "glucose", "lipid", "cholesterol", "fatty acid", "glycoly"),
    "neurological": ("neuron", "synap", "axon", "amyloid", "neurotransmitter", "nervous system"),
    "cardiovascular": ("heart", "cardiac", "angiogenesis", "blood vessel", "vascul", "blood pressure"),
    "hematological": ("erythrocyte", "hemoglobin", "platelet", "coagulation", "hemopoiesis", "hematopoie"),
}


def keyword_categories(names: Mapping[str, str], keywords=DISEASE_KEYWORDS) -> dict[str, frozenset[str]]:
    """Domain id -> disease categories by keyword in its name (compat)."""
    return {d: keyword_classes(n, keywords) for d, n in names.items()}


def gmt_categories(domain_genes: Mapping[str, frozenset[str]], disease_sets: Mapping[str, tuple[str, frozenset[str]]],
                   background: set[str] | None = None, q_max: float = 0.05) -> tuple[dict[str, frozenset[str]], pd.DataFrame]:
    """Domain id -> diseases whose genes overlap the domain's significantly; plus the test table.

    Background: the union of domain genes (default); disease sets are intersected with it.
    """
    if background is None:
        background = set().union(*domain_genes.values()) if domain_genes else set()
    N = len(background)
    rows = []
    for d, genes in domain_genes.items():
        g = genes & background
        for did, (dname, dgenes) in disease_sets.items():
            dg = dgenes & background
            rows.append((d, did, dname, len(g & dg), len(g), len(dg)))
    t = pd.DataFrame(rows, columns=["domain", "disease_id", "disease_name", "overlap", "domain_size", "disease_size"])
    if len(t):
        t["p_value"] = hypergeom_sf(t["overlap"].to_numpy(), t["domain_size"].to_numpy(), t["disease_size"].to_numpy(), N)
        t.loc[t["overlap"] == 0, "p_value"] = 1.0
    else:
        t["p_value"] = pd.Series(dtype=float)
    t["q_value"] = bh_fdr(t["p_value"].to_numpy())
    sig = t[t["q_value"] < q_max]
    cats = {d: frozenset() for d in domain_genes}
    for d, grp in sig.groupby("domain"):
        cats[d] = frozenset(grp["disease_name"].astype(str))
    return cats, t


def disease_vs_consensus(pairs: pd.DataFrame, is_consensus, categories: Mapping[str, frozenset[str]]) -> pd.DataFrame:
    """Fisher of category membership vs consensus over ``pairs``, per category and for "any", BH over categories.

    ``pairs``: domain-pair table (source_domain, target_domain); ``is_consensus``: bool per row.
    """
    cons = np.asarray(is_consensus, dtype=bool)
    pc = [categories.get(s, frozenset()) | categories.get(t, frozenset())
          for s, t in zip(pairs["source_domain"], pairs["target_domain"])]
    all_cats = sorted(set().union(*pc)) if pc else []
    rows = []
    for cat in ["any", *all_cats]:
        inc = np.array([bool(c) if cat == "any" else cat in c for c in pc], dtype=bool)
        a, b = int((inc & cons).sum()), int((inc & ~cons).sum())
        c, d = int((~inc & cons).sum()), int((~inc & ~cons).sum())
        or_, p = fisher_2x2(a, b, c, d)
        rows.append({"category": cat, "n_pairs": a + b, "consensus_in_category": a, "other_in_category": b,
                     "consensus_not_in_category": c, "other_not_in_category": d,
                     "frac_consensus_in_category": a / (a + b) if a + b else float("nan"),
                     "frac_consensus_not_in_category": c / (c + d) if c + d else float("nan"),
                     "odds_ratio": or_, "p_value": p})
    out = pd.DataFrame(rows)
    if len(out):
        q = np.full(len(out), np.nan)
        q[1:] = bh_fdr(out["p_value"].to_numpy()[1:])
        q[0] = out["p_value"].iloc[0]
        out["q_value"] = q
    return out
