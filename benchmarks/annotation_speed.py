"""Benchmark: gene-set enrichment of 4,608 features x 5,000 terms (issue 5 target: < 10 s).

Synthetic data: 15,000 gene symbols; every feature's top-gene set = 20 genes drawn with
gene-specific popularity (a few genes are top genes of many features, like real catalogs);
5,000 terms with sizes log-uniform in 5..500, a quarter of them planted to overlap some
features strongly so there are significant hits. Times :func:`annotate_layer` end to end
(corrected mode, one GO-BP-like library: sparse overlaps, p-values, BH, labels, overlap
genes) and reference (compat) mode, best of ``--repeats`` runs. With ``--network-edges E``
it also times the STRING/TRRUST degree-preserving null (random network of E edges over the
same genes, ``--permutations`` rewirings) and reports seconds per permutation.

    python benchmarks/annotation_speed.py [--features 4608] [--terms 5000] [--genes 15000]
                                          [--network-edges 200000 --permutations 50]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd


def synthetic(n_features: int, n_terms: int, n_genes: int, top: int, seed: int):
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i}" for i in range(n_genes)])
    popularity = rng.pareto(1.5, n_genes) + 1.0
    popularity /= popularity.sum()
    sets = [list(genes[rng.choice(n_genes, top, replace=False, p=popularity)]) for _ in range(n_features)]
    sizes = np.exp(rng.uniform(np.log(5), np.log(500), n_terms)).astype(int)
    terms = {}
    for t, size in enumerate(sizes):
        members = set(genes[rng.choice(n_genes, size, replace=False)])
        if t % 4 == 0:  # planted: contains half of some feature's top genes
            members |= set(sets[rng.integers(n_features)][: top // 2])
        terms[f"GO:{t:07d}"] = (f"term {t}", frozenset(members))
    catalog = pd.DataFrame({"feature": np.arange(n_features), "fire_count": 100,
                            "activation_freq": 0.01, "top_genes": sets})
    return catalog, {"go_bp": terms}, list(genes)


def main() -> None:
    from sccircuits.annotate import AnnotateConfig, annotate_layer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--terms", type=int, default=5000)
    ap.add_argument("--genes", type=int, default=15000)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--network-edges", type=int, default=0)
    ap.add_argument("--permutations", type=int, default=50)
    args = ap.parse_args()

    t0 = time.perf_counter()
    catalog, libs, background = synthetic(args.features, args.terms, args.genes, args.top, args.seed)
    n_members = sum(len(g) for _, g in libs["go_bp"].values())
    print(f"synthetic data: {args.features} features x {args.terms} terms ({n_members} memberships) over "
          f"{args.genes} genes, built in {time.perf_counter() - t0:.1f} s")
    for mode in ("", "reference"):
        cfg = AnnotateConfig(compat=mode)
        best, result = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = annotate_layer(catalog, libs, background, cfg)
            best = min(best, time.perf_counter() - t)
        cat, enr = result
        labelled = int((cat["label_name"] != "unannotated").sum())
        print(f"mode {mode or 'corrected'}: best of {args.repeats}: {best:.2f} s; "
              f"{len(enr)} significant rows, {labelled} features labelled")
    if args.network_edges:
        time_network(catalog, background, args.network_edges, args.permutations, args.seed)
    print(f"python {platform.python_version()}, {platform.machine()}")


def time_network(catalog, background, n_edges: int, n_perm: int, seed: int) -> None:
    """Seconds per permutation of the degree-preserving null on a random network."""
    from sccircuits.annotate import enrich, network

    rng = np.random.default_rng(seed + 1)
    n = len(background)
    e = np.sort(rng.integers(0, n, size=(int(n_edges * 1.2), 2)), axis=1)
    e = np.unique(e[e[:, 0] < e[:, 1]], axis=0)[:n_edges]
    index = {g: i for i, g in enumerate(background)}
    S = enrich.membership(catalog["top_genes"].tolist(), index)
    t = time.perf_counter()
    network.degree_null_test(S, e, n, n_perm=n_perm, burn_in=0)
    per = (time.perf_counter() - t) / n_perm
    print(f"network null: {len(e)} edges, {n_perm} permutations: {per:.3f} s per permutation "
          f"({per * 1000 / 60:.1f} min for 1,000)")


if __name__ == "__main__":
    main()
