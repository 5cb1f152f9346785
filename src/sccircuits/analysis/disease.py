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

That Fisher test treats pairs as independent and ignores that pairs share domains, and both
consensus membership and "either end is disease" rise with a domain's degree (popular domains
are in more pairs, more consensus pairs and, being generic, more disease categories): it finds
an association where disease status and consensus are independent given degree
(``tests/test_nulls.py``). :func:`degree_conditioned_null` is the sound test: disease
categories are permuted among domains of the same degree (domains as units, so shared domains
are handled), and the number of consensus pairs with a disease end is compared with its null.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..stats import bh_fdr, hypergeom_sf, permutation_p, stratified_permutations
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


def degree_strata(degree, min_size: int = 5) -> np.ndarray:
    """Stratum of each domain by its degree: equal degrees together, adjacent degrees merged
    (lowest first) until a stratum holds at least ``min_size`` domains (a short last stratum
    joins the one below)."""
    degree = np.asarray(degree, dtype=np.int64)
    values, counts = np.unique(degree, return_counts=True)
    label = np.zeros(values.size, dtype=np.int64)
    k, filled = 0, 0
    for i, c in enumerate(counts):
        label[i] = k
        filled += c
        if filled >= min_size:
            k, filled = k + 1, 0
    if 0 < filled < min_size and k > 0:
        label[label == k] = k - 1
    return label[np.searchsorted(values, degree)]


def degree_conditioned_null(pairs: pd.DataFrame, is_consensus, categories: Mapping[str, frozenset[str]],
                            n_perm: int = 1000, seed: int = 0, min_stratum: int = 5, chunk: int = 64) -> pd.DataFrame:
    """Consensus pairs with a disease end, against disease categories permuted within degree strata.

    A domain's degree is the number of pairs of ``pairs`` it is an end of; domains are grouped
    by :func:`degree_strata`. Each draw permutes the category sets among domains of the same
    stratum and counts the consensus pairs whose source or target is in the category. Returns
    one row per category ("any" first): observed count, null mean, fold = observed / null mean,
    two-sided permutation p (twice the smaller tail, capped at 1), draws, strata.
    """
    cons = np.asarray(is_consensus, dtype=bool)
    src_d = pairs["source_domain"].astype(str).to_numpy()
    tgt_d = pairs["target_domain"].astype(str).to_numpy()
    domains, inv = np.unique(np.concatenate([src_d, tgt_d]), return_inverse=True)
    si, ti = inv[: len(src_d)], inv[len(src_d):]
    degree = np.bincount(si, minlength=domains.size) + np.bincount(ti, minlength=domains.size)
    strata = degree_strata(degree, min_stratum)
    all_cats = sorted(set().union(*(categories.get(d, frozenset()) for d in domains))) if domains.size else []
    member = np.zeros((domains.size, 1 + len(all_cats)), dtype=bool)
    for i, d in enumerate(domains):
        c = categories.get(d, frozenset())
        member[i, 0] = bool(c)
        for j, cat in enumerate(all_cats):
            member[i, 1 + j] = cat in c
    cs, ct = si[cons], ti[cons]
    observed = (member[cs] | member[ct]).sum(axis=0)
    rng = np.random.default_rng(seed)
    null = np.zeros((n_perm, member.shape[1]), dtype=np.int64)
    for start in range(0, n_perm, chunk):
        perms = stratified_permutations(strata, min(chunk, n_perm - start), rng)  # (draws, domains)
        m = member[perms]  # (draws, domains, categories): domain i gets the categories of perms[i]
        null[start:start + perms.shape[0]] = (m[:, cs] | m[:, ct]).sum(axis=1)
    rows = []
    for j, cat in enumerate(["any", *all_cats]):
        mean = float(null[:, j].mean()) if n_perm else float("nan")
        p = (min(1.0, 2 * min(permutation_p(observed[j], null[:, j]), permutation_p(observed[j], null[:, j], "less")))
             if n_perm else float("nan"))
        rows.append({"category": cat, "consensus_in_category": int(observed[j]), "degree_null_mean": mean,
                     "degree_null_fold": observed[j] / mean if mean > 0 else float("nan"),
                     "degree_null_p": p, "degree_null_draws": int(n_perm),
                     "degree_strata": int(strata.max() + 1) if strata.size else 0})
    return pd.DataFrame(rows)
