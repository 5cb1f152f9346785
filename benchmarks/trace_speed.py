"""Tracer speed: sccircuits.trace vs the naive published loop on the same inputs.

Both trace the same 6-layer Geneformer-style model (random weights), the same random TopK SAEs
at every layer, the same cells (reference tokenization) and the same source features (layers 0
and 3, the most frequent features). The naive loop (tests/naive_reference.py) runs one full
forward pass per (cell, active feature), batch 1, eager attention, as the published scripts did.
Reports ablations per second, the ratio, and whether the capped edge sets and d agree.

    python benchmarks/trace_speed.py [--n-cells 12] [--d-model 128] [--n-genes 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from naive_reference import naive_edges, naive_observations  # noqa: E402
from trace_helpers import random_saes, write_cells, write_saes  # noqa: E402

from sccircuits.data import read_cells  # noqa: E402
from sccircuits.models import load_model, testing  # noqa: E402
from sccircuits.sae import load_saes  # noqa: E402
from sccircuits.trace import feature_frequencies, trace  # noqa: E402

KEY = ["source_layer", "source_feature", "target_layer", "target_feature"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=12)
    ap.add_argument("--n-genes", type=int, default=400)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--features-per-layer", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="trace_speed_"))
    model_dir = tmp / "model"
    testing.make_tiny_geneformer(model_dir, n_genes=args.n_genes, n_layers=6, d_model=args.d_model, seed=0)
    saes_dir = write_saes(random_saes(range(6), d_in=args.d_model, d_sae=4 * args.d_model, k=32, seed=0), tmp / "saes")
    cells_path = write_cells(tmp / "cells.h5ad", n_cells=args.n_cells, n_genes=args.n_genes)

    adapter = load_model(model_dir)
    saes = load_saes(saes_dir)
    cells = adapter.tokenize(read_cells(cells_path), mode="reference")
    sources = [0, 3]
    freq = feature_frequencies(adapter, saes, cells, sources, 8, progress=False)
    spec = {s: sorted(int(f) for f in np.argsort(-freq[s], kind="stable")[:args.features_per_layer]) for s in sources}
    feats = ";".join(f"{s}:" + ",".join(map(str, f)) for s, f in spec.items())
    print(f"model: 6 layers, d_model {args.d_model}; SAEs d_sae {4 * args.d_model} k 32; {len(cells)} cells, "
          f"{cells.lengths().mean():.0f} tokens/cell on average; features {feats}; torch threads {args.threads}")

    runs = {}
    for null in (False, True):
        res = trace(model=model_dir, data=cells_path, saes=saes_dir, out=tmp / f"ours_null{int(null)}",
                    compat="reference", features=feats, n_cells=args.n_cells, batch_size=args.batch_size,
                    checkpoint_every=args.n_cells, null_ablation=null, progress=False)
        runs[null] = res
        m = res.metrics
        print(f"ours (null ablation {'on' if null else 'off'}): {m['ablations']} ablations in {m['compute_s']:.2f} s "
              f"= {m['ablations'] / m['compute_s']:.1f} ablations/s ({m['clean_forward_passes']} clean + "
              f"{m['ablation_forward_passes']} batched ablation forwards)")

    t0 = time.perf_counter()
    obs = naive_observations(adapter, saes, cells, spec)
    naive_s = time.perf_counter() - t0
    n_abl = obs["forward_passes"] - len(cells)
    print(f"naive: {n_abl} ablations ({obs['forward_passes']} full forward passes) in {naive_s:.2f} s "
          f"= {n_abl / naive_s:.1f} ablations/s")
    ours = runs[False]
    print(f"ratio (ours without null / naive): {(ours.metrics['ablations'] / ours.metrics['compute_s']) / (n_abl / naive_s):.1f}x; "
          f"with the null ablation on (twice the forwards): "
          f"{(runs[True].metrics['ablations'] / runs[True].metrics['compute_s']) / (n_abl / naive_s):.1f}x")

    ref = naive_edges(obs, top_n=50, min_cells=2)
    for null, res in runs.items():
        cap = res.edges[res.edges.in_cap]
        m = cap.merge(ref, on=KEY, how="outer", suffixes=("", "_ref"), indicator=True)
        both = m[m["_merge"] == "both"]
        rel = np.abs(both.cohens_d - both.cohens_d_ref) / np.maximum(1.0, np.abs(both.cohens_d_ref))
        print(f"edges (null {'on' if null else 'off'}): ours {len(cap)} capped, naive {len(ref)}; identical set: "
              f"{bool((m['_merge'] == 'both').all())}; max |d - d_naive| / max(1, |d|) = {rel.max():.2e}")


if __name__ == "__main__":
    main()
