"""Disease mapping of domain pairs (docs/method.md §6).

Domains get disease categories in one of two ways:

- ``keyword``: keyword matches in the domain's GO term name (not the published procedure,
  see the end of this docstring). This is circular when the labels themselves come from GO,
  which is why
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

``keyword`` above is *not* the published procedure. The published one (``compare --compat
reference``: :func:`published_disease_gene_sets` and the functions after it) is bio-sae-circuits
``src/15_phase6_predictions_and_validation.py`` step 3 (L619-946): each disease category is
the union of the genes of every GO BP term whose name contains one of its keywords (L639-674;
plus TRRUST TFs when given, L676-687); each domain's
genes are the top genes of the features carrying its label in the circuit edges (L705-715);
a domain (>= 3 genes) is enriched for a category at one-sided Fisher p < 0.05, uncorrected
(L724-752); a domain pair is disease-associated only when both ends are enriched for the same
category, among categories with >= 2 enriched domains (L814-888); then one-sided Fisher of
disease vs consensus over every (source label, target label) pair of the edges, unannotated
ends included (L871-903).
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


# published disease categories, verbatim (src/15_phase6_predictions_and_validation.py L639-659)
PUBLISHED_DISEASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "DNA_damage_repair": ("dna repair", "dna damage", "dna integrity", "double-strand break"),
    "cell_cycle_cancer": ("mitotic cell cycle", "cell cycle checkpoint", "cell division", "chromosome segregation",
                          "sister chromatid"),
    "apoptosis": ("apoptotic process", "programmed cell death", "apoptotic signaling"),
    "immune_response": ("immune response", "inflammatory response", "interferon", "cytokine", "antigen",
                        "toll-like receptor", "nf-kappab", "t cell activation", "b cell activation"),
    "metabolism_cancer": ("glycolytic process", "oxidative phosphorylation", "cholesterol biosynthesis",
                          "fatty acid metabolic"),
    "transcription_regulation": ("regulation of transcription", "chromatin remodeling", "histone modification",
                                 "epigenetic"),
    "signaling_oncogenic": ("mapk cascade", "ras protein signal", "wnt signaling", "notch signaling",
                            "hedgehog signaling", "jak-stat", "pi3k", "mtor"),
    "protein_quality": ("unfolded protein response", "er stress", "protein folding", "ubiquitin-dependent",
                        "proteasome", "autophagy"),
    "angiogenesis": ("angiogenesis", "blood vessel", "vasculogenesis", "vegf"),
    "metastasis": ("cell migration", "cell adhesion", "epithelial to mesenchymal", "extracellular matrix", "integrin"),
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


# ---------------------------------------------------------------------------------------------
# the published procedure (compat)


def published_disease_gene_sets(go_sets: Mapping[str, tuple[str, frozenset[str]]], trrust_tfs=None,
                                keywords=PUBLISHED_DISEASE_KEYWORDS) -> dict[str, frozenset[str]]:
    """Category -> union of the genes of the GO terms whose name contains a keyword (L661-674),
    matched on the lower-cased term name; plus ``trrust_TFs`` when TF symbols are given (L686)."""
    out = {}
    for cat, kws in keywords.items():
        genes: set[str] = set()
        for name, members in go_sets.values():
            low = str(name).lower()
            if any(k in low for k in kws):
                genes |= members
        out[cat] = frozenset(genes)
    if trrust_tfs is not None:
        out["trrust_TFs"] = frozenset(trrust_tfs)
    return out


def published_domain_enrichment(domain_genes: Mapping[str, set[str]], disease_sets: Mapping[str, frozenset[str]],
                                unannotated: str = "unannotated") -> pd.DataFrame:
    """Every (domain, category) test of L724-752, one row each, ``enriched`` = p < 0.05.

    Background = the union of all domains' genes, unannotated ends included (L717-721); domains
    with < 3 genes and the unannotated key are skipped; a category is tested only when it shares
    a gene with the domain. Table [[a, b], [c, d]] with a = overlap, b = domain - disease,
    c = disease - domain (the disease set is *not* restricted to the background), d = background
    - |domain | disease| clipped at 0 (L737-742; the clip and the unrestricted c are published
    flaws, kept), Fisher one-sided greater.
    """
    from scipy.stats import fisher_exact

    n_bg = len(set().union(*domain_genes.values())) if domain_genes else 0
    rows = []
    for dom, genes in domain_genes.items():
        if dom == unannotated or len(genes) < 3:
            continue
        for cat, dg in disease_sets.items():
            a = len(genes & dg)
            if a < 1:
                continue
            b, c = len(genes - dg), len(dg - genes)
            d = max(n_bg - len(genes | dg), 0)
            or_, p = fisher_exact([[a, b], [c, d]], alternative="greater")
            rows.append({"domain": dom, "category": cat, "overlap": a, "domain_only": b, "category_only": c,
                         "neither": d, "odds_ratio": float(or_), "p_value": float(p), "enriched": bool(p < 0.05)})
    return pd.DataFrame(rows, columns=["domain", "category", "overlap", "domain_only", "category_only", "neither",
                                       "odds_ratio", "p_value", "enriched"])


def published_disease_pairs(all_pairs: set, enrichment: pd.DataFrame) -> set:
    """Pairs with both ends enriched for the same category, among categories with >= 2 enriched
    domains (L814-841: a category with fewer has no circuit edges, and only categories with
    circuit edges count, L880-888)."""
    enriched = enrichment[enrichment["enriched"]]
    doms = {c: set(g["domain"]) for c, g in enriched.groupby("category")}
    doms = {c: d for c, d in doms.items() if len(d) >= 2}
    return {(s, t) for s, t in all_pairs if any(s in d and t in d for d in doms.values())}


def published_disease_consensus(all_pairs: set, disease_pairs: set, consensus_pairs: set) -> dict:
    """L890-905: Fisher (one-sided greater) of disease vs consensus over ``all_pairs``; OR 1, p 1
    when a row of the table is empty."""
    from scipy.stats import fisher_exact

    non = set(all_pairs) - set(disease_pairs)
    a = len(set(disease_pairs) & set(consensus_pairs))
    b = len(disease_pairs) - a
    c = len(non & set(consensus_pairs))
    d = len(non) - c
    if a + b > 0 and c + d > 0:
        or_, p = fisher_exact([[a, b], [c, d]], alternative="greater")
    else:
        or_, p = 1.0, 1.0
    return {"disease_in_consensus": a, "disease_not_consensus": b, "other_in_consensus": c,
            "other_not_consensus": d, "disease_consensus_frac": round(a / (a + b), 4) if a + b else 0,
            "nondisease_consensus_frac": round(c / (c + d), 4) if c + d else 0,
            "odds_ratio": float(or_), "p_value": float(p)}
