"""Why are (or aren't) a run's SAE features annotated? Per layer of an annotated run:

- coherence: mean pairwise co-expression correlation (log-normalised bundled blood cells) of each
  alive feature's top genes, against random sets drawn with the same gene popularity (how often
  each gene is a top gene in that layer);
- rate: features with a GO BP / Reactome / Hallmark term at BH q < 0.05 (default annotation
  test), for the real top genes and for those popularity-matched random sets (the test's false
  annotation rate on a null built to fool it through gene popularity).

Usage: python benchmarks/annotation_diagnosis.py RUN_DIR   (a run of `sccircuits demo`, blood data)
Needs the run's activations, SAEs and annotation. Numbers from 2026-12-02 are in
docs/demo-models.md ("Why co-expression initialisation").
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from sccircuits import artifacts, datasets
from sccircuits.activations import ActivationStore
from sccircuits.annotate.config import AnnotateConfig
from sccircuits.annotate.stage import annotate_layer, load_libraries, token_symbols
from sccircuits.pretrain import standardised_log_expression

LABEL_LIBRARIES = ("go_bp", "reactome", "hallmark")


def standardised_expression():
    a = datasets.blood()
    Z, _ = standardised_log_expression(a.X)
    return Z, {s.upper(): i for i, s in enumerate(a.var_names)}


def coherence(Z, col, genes) -> float:
    idx = [col[g.upper()] for g in genes if g.upper() in col]
    if len(idx) < 3:
        return float("nan")
    C = Z[:, idx].T @ Z[:, idx] / Z.shape[0]
    return float((C.sum() - np.trace(C)) / (len(idx) * (len(idx) - 1)))


def main(run: str) -> None:
    libs = load_libraries(datasets.gene_set_paths())
    symbols = token_symbols(ActivationStore(run).genes())
    background = sorted({s.upper() for s in symbols.values()})
    catalogs, _ = artifacts.read_annotation(run, follow=False, catalog_columns=("feature",), enrichment_columns=())
    Z, col = standardised_expression()
    cfg = AnnotateConfig()

    def rate(cat: pd.DataFrame) -> float:
        c, e = annotate_layer(cat, libs, background, cfg)
        alive = c.fire_count > 0
        sig = e[e.significant & e.library.isin(LABEL_LIBRARIES)]
        return len(set(sig.feature) & set(c.feature[alive])) / max(int(alive.sum()), 1)

    rng = np.random.default_rng(0)
    for layer, cat in sorted(catalogs.items()):
        alive = cat.fire_count > 0
        sets = [list(g) for g in cat.top_genes[alive]]
        pop = pd.Series([g for s in sets for g in s]).value_counts()
        p = pop.to_numpy() / pop.sum()
        null = [list(rng.choice(pop.index.to_numpy(), size=len(s), replace=False, p=p)) if len(s) <= len(pop) else s
                for s in sets]
        it = iter(null)
        null_cat = cat.assign(top_genes=[next(it) if a else list(g) for a, g in zip(alive, cat.top_genes)])
        print(json.dumps({"layer": int(layer), "alive": int(alive.sum()), "distinct_top_genes": int(len(pop)),
                          "coherence": round(float(np.nanmean([coherence(Z, col, s) for s in sets])), 4),
                          "coherence_popularity_null": round(float(np.nanmean([coherence(Z, col, s) for s in null])), 4),
                          "rate": round(rate(cat), 4), "rate_popularity_null": round(rate(null_cat), 4)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
