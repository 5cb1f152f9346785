"""Tissue specificity of domain pairs (docs/method.md §6).

Each domain name is put in keyword classes (immune, kidney, lung, blood; case-insensitive
substrings); a pair belongs to a class when either of its domains does, and is "universal"
when neither domain matches any class. Given a *focus* condition (e.g. tissue cells) and a
*baseline* (e.g. K562 cells), pairs found only in the focus are compared with pairs found in
both, class by class: Fisher's exact test (two-sided) on

    [[focus-only in class, focus-only not in class],
     [shared in class,     shared not in class]]

with BH over the classes. The cleanest contrast keeps model and SAE fixed and changes only the
input cells, so differences come from the cells.

:func:`tissue_specificity_published` (``--compat reference``) is the published step 5
(bio-sae-circuits ``src/14_biological_knowledge_extraction.py`` L915-1087): its own keyword
lists (with a "universal" keyword class), one-sided Fisher ``alternative="greater"``, no
multiple-testing correction, and a class tested only when it has a pair on either side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact

from ..stats import bh_fdr, odds_ratio

TISSUE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "immune": ("immun", "t cell", "b cell", "lymphocyte", "leukocyte", "interferon", "interleukin", "cytokine",
               "antigen", "inflammat", "defense response", "chemokine", "toll-like", "natural killer",
               "macrophage", "neutrophil", "mhc"),
    "kidney": ("kidney", "renal", "nephr", "glomerul", "ureter", "podocyte", "urine"),
    "lung": ("lung", "pulmonary", "respiratory", "alveol", "surfactant", "bronch", "airway", "trachea"),
    "blood": ("erythrocyte", "hemoglobin", "heme", "platelet", "coagulation", "blood", "hematopoie",
              "hemopoie", "megakaryocyte", "oxygen transport", "myeloid"),
}


# published step 5 keyword lists, verbatim (src/14_biological_knowledge_extraction.py L932-996)
PUBLISHED_TISSUE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "immune": ("immune", "T cell", "B cell", "lymphocyte", "leukocyte", "cytokine", "interferon", "interleukin",
               "inflammatory", "innate immune", "adaptive immune", "antigen", "MHC", "complement",
               "natural killer", "macrophage", "dendritic"),
    "kidney": ("kidney", "renal", "nephron", "glomerular", "tubular", "urine", "filtration", "ion transport",
               "water transport"),
    "lung": ("lung", "respiratory", "surfactant", "alveolar", "bronchial", "pulmonary", "gas exchange", "airway"),
    "blood": ("erythrocyte", "hemoglobin", "hematopoietic", "platelet", "coagulation", "blood", "myeloid"),
    "universal": ("ribosom", "mitochond", "translation", "transcription", "cell cycle", "apoptosis", "DNA repair",
                  "RNA processing", "protein folding", "ubiquitin", "proteasom", "metaboli"),
}


def keyword_classes(name: str, keywords: dict[str, tuple[str, ...]] = TISSUE_KEYWORDS) -> frozenset[str]:
    """Classes whose keywords occur in ``name`` (lower-cased substring match)."""
    low = str(name).lower()
    return frozenset(c for c, kws in keywords.items() if any(k in low for k in kws))


def pair_classes(source_name: str, target_name: str, keywords=TISSUE_KEYWORDS) -> frozenset[str]:
    """Tissue classes of a pair: the union of its domains' classes, or {"universal"} when empty."""
    c = keyword_classes(source_name, keywords) | keyword_classes(target_name, keywords)
    return c if c else frozenset({"universal"})


def published_classes(name: str, keywords=PUBLISHED_TISSUE_KEYWORDS) -> list[str]:
    """Published ``classify_domain`` (L998-1006): classes whose keyword (lower-cased) occurs in the
    lower-cased name, in keyword-dict order, else ``["unclassified"]``."""
    low = str(name).lower()
    hits = [c for c, kws in keywords.items() if any(k.lower() in low for k in kws)]
    return hits or ["unclassified"]


def tissue_specificity_published(focus_pairs, baseline_pairs, names, keywords=PUBLISHED_TISSUE_KEYWORDS) -> pd.DataFrame:
    """Published tissue enrichment (L1030-1087): focus-only vs shared pairs, per class.

    ``focus_pairs`` / ``baseline_pairs``: sets of (source, target) domain keys (the published focus
    is the union of its tissue conditions' pairs, L1036-1040); ``names``: domain key -> name
    used for the keywords. A pair is in a class when either domain is (L1054-1067). Fisher's
    exact test, one-sided ``greater``, on [[focus-only in class, focus-only other], [shared in
    class, shared other]], only for classes with a pair on either side (L1072-1073); scipy's
    sample odds ratio; no correction.
    """
    focus_only = set(focus_pairs) - set(baseline_pairs)
    shared = set(focus_pairs) & set(baseline_pairs)
    cls = {d: published_classes(names.get(d, d), keywords) for p in focus_pairs for d in p}
    rows = []
    for c in keywords:
        a = sum(1 for s, t in focus_only if c in cls[s] or c in cls[t])
        s_in = sum(1 for s, t in shared if c in cls[s] or c in cls[t])
        if a == 0 and s_in == 0:
            continue
        or_, p = fisher_exact([[a, len(focus_only) - a], [s_in, len(shared) - s_in]], alternative="greater")
        rows.append({"class": c, "focus_only_in_class": a, "focus_only_not_in_class": len(focus_only) - a,
                     "shared_in_class": s_in, "shared_not_in_class": len(shared) - s_in,
                     "odds_ratio": float(or_), "p_value": float(p)})
    return pd.DataFrame(rows, columns=["class", "focus_only_in_class", "focus_only_not_in_class", "shared_in_class",
                                       "shared_not_in_class", "odds_ratio", "p_value"])


def fisher_2x2(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """(sample odds ratio, two-sided Fisher exact p) of [[a, b], [c, d]]."""
    _, p = fisher_exact([[a, b], [c, d]], alternative="two-sided")
    return float(odds_ratio(a, b, c, d)), float(p)


def tissue_specificity(focus: pd.DataFrame, baseline: pd.DataFrame, keywords=TISSUE_KEYWORDS) -> pd.DataFrame:
    """Per class: counts of focus-only and shared pairs in / not in the class, OR, p, BH q.

    ``focus`` and ``baseline`` are domain-pair tables (source_domain, target_domain,
    source_name, target_name).
    """
    base = set(zip(baseline["source_domain"], baseline["target_domain"]))
    keys = list(zip(focus["source_domain"], focus["target_domain"]))
    shared = np.array([k in base for k in keys], dtype=bool)
    classes = [pair_classes(s, t, keywords) for s, t in zip(focus["source_name"], focus["target_name"])]
    rows = []
    for cls in [*keywords, "universal"]:
        inc = np.array([cls in c for c in classes], dtype=bool)
        a, b = int((inc & ~shared).sum()), int((~inc & ~shared).sum())
        c, d = int((inc & shared).sum()), int((~inc & shared).sum())
        or_, p = fisher_2x2(a, b, c, d)
        rows.append({"class": cls, "focus_only_in_class": a, "focus_only_not_in_class": b,
                     "shared_in_class": c, "shared_not_in_class": d, "odds_ratio": or_, "p_value": p})
    out = pd.DataFrame(rows)
    out["q_value"] = bh_fdr(out["p_value"].to_numpy())
    return out
