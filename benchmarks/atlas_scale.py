"""Atlas at scale: file size, build time and time to first render (run by hand; results go to RESULTS.md).

A synthetic run directory written with the pipeline's own table layouts and manifest:
10 layers x 2,000 SAE features (20,000 features, all alive, 10% labelled with 1-8 of 8,000 GO-like
terms, 20 top genes from 5,000 symbols), 100,000 edges from 90 source features (30 in each of
layers 0, 3, 6) to downstream features, a null-ablation table per layer pair and SAE metrics.
The atlas is built with the default AtlasConfig (no cell types: the run has no activations), then
opened in headless Chromium over the DevTools protocol (tests/browser.py):

* time to first render: ``performance.now()`` when the page's script has drawn the overview
  (``window.atlasReadyAt``, ms from navigation start), plus the load event as seen from Python;
* a gene search (first call, which builds the index, and a second one) and opening the card of
  the busiest source feature (about 1,200 edges: card, edge tables and graph; until painted), timed inside the page.

    python benchmarks/atlas_scale.py [--edges 100000] [--features-per-layer 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sccircuits.atlas import AtlasConfig, build_atlas  # noqa: E402
from sccircuits.rundir import RunDir, atomic_write_parquet  # noqa: E402
from sccircuits.trace import EDGE_COLUMNS  # noqa: E402


def synthetic_run(path: Path, n_edges: int, per_layer: int, n_layers: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    run = RunDir(path)
    genes = np.array([f"G{i}" for i in range(5000)], dtype=object)
    n_terms = 8000
    run.begin_stage("train-sae", {"synthetic": True})
    run.complete_stage("train-sae", outputs=[], metrics={
        f"layer{l:02d}": {"variance_explained": float(rng.uniform(0.85, 0.95)), "l0": 32.0, "dead": 3,
                          "dead_fraction": 3 / per_layer, "d_sae": per_layer} for l in range(n_layers)})
    run.begin_stage("annotate", {"synthetic": True})
    outputs = []
    for l in range(n_layers):
        fire = rng.integers(1, 100_000, per_layer)
        labelled = rng.random(per_layer) < 0.10
        label_term = rng.integers(0, n_terms, per_layer)
        top = [rng.choice(genes, 20, replace=False).tolist() for _ in range(per_layer)]
        cat = pd.DataFrame({
            "feature": np.arange(per_layer), "fire_count": fire, "activation_freq": fire / 2e7,
            "top_genes": top, "top_gene_counts": [sorted(rng.integers(5, 500, 20).tolist(), reverse=True) for _ in top],
            "top_gene_means": [sorted(rng.uniform(0.1, 5, 20).round(3).tolist(), reverse=True) for _ in top],
            "label_id": np.where(labelled, [f"GO:{t:07d}" for t in label_term], ""),
            "label_name": np.where(labelled, [f"synthetic process {t}" for t in label_term], "unannotated"),
            "label_q": np.where(labelled, rng.uniform(1e-8, 0.05, per_layer), np.nan)})
        rows = []
        for f in np.flatnonzero(labelled):
            k = int(rng.integers(1, 9))
            ts = np.unique(np.r_[label_term[f], rng.integers(0, n_terms, k - 1)])
            for t in ts:
                rows.append((int(f), "go_bp", f"GO:{t:07d}", f"synthetic process {t}", int(rng.integers(3, 20)),
                             float(rng.uniform(1e-8, 0.05)), True))
        enr = pd.DataFrame(rows, columns=["feature", "library", "term_id", "term_name", "overlap", "q_value", "significant"])
        for kind, df in (("catalog", cat), ("enrichment", enr)):
            rel = f"annotation/layer{l:02d}_{kind}.parquet"
            atomic_write_parquet(run / rel, df)
            outputs.append(rel)
    run.complete_stage("annotate", outputs=outputs)

    run.begin_stage("trace", {"synthetic": True})
    sources = [(l, f) for l in (0, 3, 6) for f in rng.choice(per_layer, 30, replace=False)]
    s_idx = rng.integers(0, len(sources), n_edges * 2)
    s_layer = np.array([sources[i][0] for i in s_idx])
    t_layer = s_layer + rng.integers(1, n_layers - s_layer)
    t_feat = rng.integers(0, per_layer, n_edges * 2)
    e = pd.DataFrame({"source_layer": s_layer, "source_feature": [sources[i][1] for i in s_idx],
                      "target_layer": t_layer, "target_feature": t_feat})
    e = e.drop_duplicates().head(n_edges).reset_index(drop=True)
    n = len(e)
    d = rng.choice([-1, 1], n) * rng.uniform(0.5, 4.0, n)
    e = e.assign(model="synthetic", source_label="unannotated", source_label_id="", target_label="unannotated",
                 target_label_id="", n_cells=rng.integers(3, 200, n), mean_delta=d * 0.1, sd_delta=0.1, cohens_d=d,
                 consistency=rng.uniform(0.7, 1, n), consistency_nonzero=rng.uniform(0.5, 1, n),
                 p_value=rng.uniform(0, 1e-3, n), q_value=rng.uniform(0, 0.01, n), in_cap=rng.random(n) < 0.3,
                 above_noise_floor=rng.random(n) < 0.1)[EDGE_COLUMNS]
    null = pd.DataFrame([{"source_layer": s, "target_layer": t, "n_tests": 10000, "abs_d_q95": 1.5, "abs_d_q99": 2.5,
                          "abs_d_max": 4.0, "n_null_passing": 8000, "frac_null_passing": 0.8}
                         for s in (0, 3, 6) for t in range(s + 1, n_layers)])
    atomic_write_parquet(run / "trace/edges.parquet", e)
    atomic_write_parquet(run / "trace/null.parquet", null)
    atomic_write_parquet(run / "trace/features.parquet", pd.DataFrame())
    run.complete_stage("trace", outputs=["trace/edges.parquet", "trace/null.parquet", "trace/features.parquet"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=100_000)
    ap.add_argument("--features-per-layer", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="page loads (a fresh browser each)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    from browser import Browser

    work = args.dir or Path(tempfile.mkdtemp(prefix="atlas_bench_"))
    print(f"load before: {os.getloadavg()}")
    synthetic_run(work / "run", args.edges, args.features_per_layer)
    c0, t0 = time.process_time(), time.perf_counter()
    path = build_atlas([work / "run"], out=work / "atlas.html", cfg=AtlasConfig())
    build_cpu, build_wall = time.process_time() - c0, time.perf_counter() - t0
    size = path.stat().st_size
    print(f"atlas: {size / 2**20:.1f} MiB ({size:,} bytes); build {build_wall:.1f} s wall, {build_cpu:.1f} s CPU; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for rep in range(args.repeats):
        with Browser() as b:
            t0 = time.perf_counter()
            b.open(path)
            b.wait_for("window.atlas && window.atlas.ready")
            load = time.perf_counter() - t0
            ready = b.evaluate("window.atlasReadyAt")
            nf, ne = b.evaluate("[window.atlas.data.features.id.length, window.atlas.data.edges.s.length]")
            timing = b.evaluate("""(async () => {
                let t = performance.now(); const r1 = window.atlas.search('G17'); const s1 = performance.now() - t;
                t = performance.now(); window.atlas.search('G4242'); const s2 = performance.now() - t;
                const E = window.atlas.data.edges, deg = new Map();
                for (let i = 0; i < E.s.length; i++) deg.set(E.s[i], (deg.get(E.s[i]) || 0) + 1);
                let hub = -1, best = -1; deg.forEach((v, k) => { if (v > best) { best = v; hub = k; } });
                t = performance.now(); window.atlas.go('f=' + hub);
                await new Promise(r => { const ok = () => document.getElementById('card-title') ? r() : setTimeout(ok, 0); ok(); });
                await new Promise(r => requestAnimationFrame(() => r()));  // until the card is painted
                const card = performance.now() - t;
                return {search_first_ms: s1, search_again_ms: s2, results: r1.length, hub_edges: best, card_ms: card};
            })()""")
            print(f"run {rep + 1}: {nf:,} features, {ne:,} edges; first render {ready:.0f} ms after navigation "
                  f"(ready seen from Python after {load:.2f} s); {timing}; console {b.console}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
