"""Feature labels, annotation richness and source-feature selection.

One rule labels a feature in every role (source or target of an edge, any analysis): its most
significant term of the GO BP library (q below alpha), else ``"unannotated"``. Ties are broken
by p-value, then larger overlap, then term id, so the label never depends on row order.

With ``--compat reference`` the published scripts use two rules (reproduced here):

- as an edge **target**, the GO BP term with the lowest adjusted p (bio-sae-circuits
  ``src/14_biological_knowledge_extraction.py`` L120-129: strict ``<`` over the annotation list,
  so ties go to the term listed first, i.e. first in the GMT file): :func:`label_features` with
  a ``term_order`` column;
- as an edge **source**, the *first* entry of the feature's annotation list that is a GO BP,
  KEGG or Reactome term (``src/13_causal_circuit_tracing.py`` L171-175), whatever its p. The
  list (bio-sae ``src/04_annotate_features.py`` L243-345) holds the significant tests in test
  order: GO BP terms in file order, then KEGG, then Reactome. So the source label is the first
  significant GO BP term of the file, else the first KEGG term, else the first Reactome term:
  :func:`first_listed_labels`. Its rows go to the catalog as ``source_label_id`` /
  ``source_label_name`` and the tracer labels edge sources with them.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError

UNANNOTATED = "unannotated"
GO_BP_NAME = re.compile(r"go[_\-. ]?bp|biological[_\-. ]?process", re.IGNORECASE)


def find_label_library(names: Sequence[str], requested: str = "") -> str:
    """The library whose terms label features: ``requested`` if given, else the first name
    that looks like GO biological process (``go_bp``, ``GO_Biological_Process_2023``, ...)."""
    if requested:
        if requested not in names:
            raise ConfigError(f"label library {requested!r} is not among the gene-set libraries "
                              f"{list(names)} (library name = file name without .gmt/.gz)")
        return requested
    for name in names:
        if GO_BP_NAME.search(name):
            return name
    raise ConfigError(f"no GO biological-process library among {list(names)}: labels use GO BP terms; "
                      "name the file go_bp.gmt(.gz) or pass --label-library NAME")


def label_features(enrichment: pd.DataFrame, n_features: int, label_library: str,
                   alpha: float = 0.05, inclusive: bool = False) -> pd.DataFrame:
    """Label of every feature: its most significant ``label_library`` term, else unannotated.

    A term qualifies when q < alpha (q <= alpha with ``inclusive``, the published
    threshold). Returns columns feature, label_id (None when unannotated), label_name,
    label_q (NaN when unannotated), one row per feature 0..n_features-1.
    """
    out = pd.DataFrame({"feature": np.arange(n_features, dtype=np.int64), "label_id": None,
                        "label_name": UNANNOTATED, "label_q": np.nan})
    if enrichment.empty:
        return out
    q = enrichment["q_value"].to_numpy(dtype=np.float64)
    ok = (enrichment["library"] == label_library).to_numpy() & ((q <= alpha) if inclusive else (q < alpha))
    if "kind" in enrichment:
        ok &= (enrichment["kind"] == "gene_set").to_numpy()
    order = "term_order" in enrichment  # compat: ties go to the term listed first (published)
    cand = enrichment.loc[ok, ["feature", "term_id", "term_name", "q_value", "p_value", "overlap"]
                          + (["term_order"] if order else [])]
    if cand.empty:
        return out
    keys = ["feature", "q_value", "term_order"] if order else ["feature", "q_value", "p_value", "neg_overlap", "term_id"]
    cand = cand.assign(neg_overlap=-cand["overlap"]).sort_values(keys, kind="mergesort")
    best = cand.drop_duplicates("feature", keep="first")
    idx = best["feature"].to_numpy(dtype=np.int64)
    out.loc[idx, "label_id"] = best["term_id"].to_numpy()
    out.loc[idx, "label_name"] = best["term_name"].to_numpy()
    out.loc[idx, "label_q"] = best["q_value"].to_numpy(dtype=np.float64)
    return out


def first_listed_labels(enrichment: pd.DataFrame, n_features: int, libraries: Sequence[str],
                        alpha: float = 0.05) -> pd.DataFrame:
    """Published source-label rule: the first significant (q <= alpha) term of ``libraries`` taken
    in that order (GO BP, KEGG, Reactome), each in file order (``term_order``), else unannotated.

    Returns columns feature, source_label_id, source_label_name, one row per feature.
    """
    out = pd.DataFrame({"feature": np.arange(n_features, dtype=np.int64), "source_label_id": None,
                        "source_label_name": UNANNOTATED})
    if enrichment.empty:
        return out
    rank = {lib: i for i, lib in enumerate(libraries)}
    lib_rank = enrichment["library"].map(rank)
    ok = lib_rank.notna().to_numpy() & (enrichment["q_value"].to_numpy(dtype=np.float64) <= alpha)
    cand = enrichment.loc[ok, ["feature", "term_id", "term_name", "term_order"]].assign(lib_rank=lib_rank[ok])
    if cand.empty:
        return out
    best = cand.sort_values(["feature", "lib_rank", "term_order"], kind="mergesort").drop_duplicates("feature")
    idx = best["feature"].to_numpy(dtype=np.int64)
    out.loc[idx, "source_label_id"] = best["term_id"].to_numpy()
    out.loc[idx, "source_label_name"] = best["term_name"].to_numpy()
    return out


def annotation_summary(enrichment: pd.DataFrame, n_features: int) -> pd.DataFrame:
    """Per feature: n_annotations (significant rows), n_libraries (libraries with one), min_q
    (smallest finite q among them, NaN if none) and richness = 10 x n_libraries + n_annotations
    - log10(min_q) (the published score; 0 for unannotated features)."""
    out = pd.DataFrame({"feature": np.arange(n_features, dtype=np.int64), "n_annotations": 0,
                        "n_libraries": 0, "min_q": np.nan})
    if not enrichment.empty:
        sig = enrichment[enrichment["significant"].to_numpy(dtype=bool)]
        if not sig.empty:
            g = sig.groupby("feature")
            idx = np.asarray(g.size().index, dtype=np.int64)
            out.loc[idx, "n_annotations"] = g.size().to_numpy()
            out.loc[idx, "n_libraries"] = g["library"].nunique().to_numpy()
            out.loc[idx, "min_q"] = g["q_value"].min().to_numpy(dtype=np.float64)
    min_q = np.clip(out["min_q"].to_numpy(dtype=np.float64), 1e-300, 1.0)
    neg_log = np.where(np.isnan(min_q), 0.0, -np.log10(min_q))
    out["richness"] = 10.0 * out["n_libraries"] + out["n_annotations"] + neg_log
    return out


def select_from_catalog(catalog: pd.DataFrame, method: str = "richness", n: int = 30, seed: int = 0,
                        features: Sequence[int] | None = None, min_freq: float = 0.01) -> list[int]:
    """Source features for tracing from one layer's catalog (see :func:`select_features`)."""
    alive = catalog[catalog["fire_count"] > 0]
    eligible = alive[alive["activation_freq"] >= min_freq]
    if method == "richness":
        ranked = eligible.assign(_neg_r=-eligible["richness"], _neg_f=-eligible["activation_freq"])
        ranked = ranked.sort_values(["_neg_r", "_neg_f", "feature"], kind="mergesort")
        return ranked["feature"].head(n).astype(int).tolist()
    if method == "frequency":
        ranked = eligible.assign(_neg_f=-eligible["activation_freq"]).sort_values(["_neg_f", "feature"], kind="mergesort")
        return ranked["feature"].head(n).astype(int).tolist()
    if method == "random":
        pool = np.sort(eligible["feature"].to_numpy(dtype=np.int64))
        rng = np.random.default_rng(seed)
        pick = rng.choice(pool, size=min(n, pool.size), replace=False) if pool.size else pool
        return sorted(int(f) for f in pick)
    if method == "list":
        if features is None or len(features) == 0:
            raise ConfigError("method 'list' needs features=[...]")
        n_feat = len(catalog)
        bad = [f for f in features if not 0 <= int(f) < n_feat]
        if bad:
            raise ConfigError(f"feature ids {bad} out of range 0..{n_feat - 1}")
        return list(dict.fromkeys(int(f) for f in features))
    if method == "all":
        return alive["feature"].astype(int).tolist()
    raise ConfigError(f"unknown selection method {method!r} (richness, frequency, random, list, all)")
