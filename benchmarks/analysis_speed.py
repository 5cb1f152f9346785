"""Speed of the analysis nulls at published scale (run by hand; results go to RESULTS.md).

Synthetic inputs of the published Geneformer size: 4 source layers x 17 downstream layers,
4,608 features per layer of which half are annotated (1-40 significant terms from 5,000),
20,000 edges; consensus: two groups of 15,000 and 3,000 domain pairs over 2,000 domains.

    python benchmarks/analysis_speed.py [--n-perm 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from sccircuits.analysis import coherence as coh
from sccircuits.analysis import consensus as cons


def synthetic(seed: int = 0, n_feat: int = 4608, n_layers: int = 18, n_terms: int = 5000, n_edges: int = 20000):
    rng = np.random.default_rng(seed)
    ts = {}
    for l in range(n_layers):
        ann = rng.choice(n_feat, n_feat // 2, replace=False)
        ts[l] = {int(f): frozenset(f"T{t}" for t in rng.choice(n_terms, rng.integers(1, 41), replace=False)) for f in ann}
    src_l = rng.choice([0, 5, 11, 15], n_edges)
    tgt_l = np.minimum(src_l + rng.integers(1, 18, n_edges), n_layers - 1)
    tgt_l = np.where(tgt_l == src_l, src_l + 1, tgt_l)
    edges = pd.DataFrame({"source_layer": src_l, "source_feature": rng.integers(0, n_feat, n_edges),
                          "target_layer": tgt_l, "target_feature": rng.integers(0, n_feat, n_edges)})
    return edges, ts


def pair_sets(seed: int = 0, n_dom: int = 2000, sizes=(15000, 3000)):
    rng = np.random.default_rng(seed)
    out = {}
    for g, n in zip(("geneformer", "scgpt"), sizes):
        s = set()
        while len(s) < n:
            a, b = rng.integers(0, n_dom, 2)
            s.add((f"D{a:04d}", f"D{b:04d}"))
        out[g] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-perm", type=int, default=1000)
    args = ap.parse_args()
    edges, ts = synthetic()
    t0 = time.perf_counter()
    res, _ = coh.coherence_test(edges, ts, n_perm=args.n_perm, seed=0)
    t1 = time.perf_counter()
    print(f"coherence null: {len(edges)} edges, {res['n_edges_annotated']} annotated, {args.n_perm} permutations: "
          f"{t1 - t0:.1f} s (coherence {res['coherence']:.3f}, null {res['null_mean']:.3f}, p {res['p_value']:.3g})")
    sets = pair_sets()
    t0 = time.perf_counter()
    lab = cons.label_permutation_null(sets, n_perm=args.n_perm, seed=42)
    t1 = time.perf_counter()
    rew = cons.rewiring_null(sets, n_draws=args.n_perm, seed=42)
    t2 = time.perf_counter()
    obs = len(cons.consensus(sets))
    print(f"label-permutation null: {args.n_perm} draws, {t1 - t0:.1f} s (observed {obs}, expected {lab.mean():.1f})")
    print(f"rewiring null: {args.n_perm} draws, {t2 - t1:.1f} s (expected {rew.mean():.1f})")


if __name__ == "__main__":
    main()
