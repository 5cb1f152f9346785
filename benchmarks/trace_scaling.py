"""Tracer scaling on Ray: a local single-process trace vs the Ray executor with 1 and 2 workers.

Same inputs for every run: a 6-layer Geneformer-style model (random weights, d_model 128), random
TopK SAEs (d_sae 512, k 32) at layers 0, 3, 5, the same cells and the same source features
(layers 0 and 3, chosen by frequency). Ray runs on a local cluster started once (``ray.init``
outside the timings); each run's wall time includes starting its worker actors (loading torch,
the model and the SAEs), which is a fixed cost per run. Every run's edges are checked to be
identical to the local run's.

    python benchmarks/trace_scaling.py [--n-cells 48] [--checkpoint-every 6] [--threads 1 2] [--workers 1 2]

Workers get 1 CPU each (Ray sets 1 torch thread per worker); the local runs use --threads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from trace_helpers import random_saes, write_cells, write_saes  # noqa: E402

from sccircuits.models import testing  # noqa: E402
from sccircuits.trace import trace  # noqa: E402
from sccircuits.trace.ray_executor import trace_with_ray  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=48)
    ap.add_argument("--n-genes", type=int, default=300)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-features", type=int, default=6)
    ap.add_argument("--checkpoint-every", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the local runs")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="trace_scaling_"))
    testing.make_tiny_geneformer(tmp / "model", n_genes=args.n_genes, n_layers=6, d_model=args.d_model, seed=0)
    write_saes(random_saes([0, 3, 5], d_in=args.d_model, d_sae=4 * args.d_model, k=32, seed=0), tmp / "saes")
    write_cells(tmp / "cells.h5ad", n_cells=args.n_cells, n_genes=args.n_genes)
    inputs = dict(model=tmp / "model", data=tmp / "cells.h5ad", saes=tmp / "saes")
    opts = dict(n_cells=args.n_cells, n_features=args.n_features, selection="frequency", source_layers=[0, 3],
                checkpoint_every=args.checkpoint_every, batch_size=args.batch_size, progress=False)

    rows = []
    for th in args.threads:
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        local = trace(**inputs, out=tmp / f"local{th}", **opts)
        rows.append((f"local, 1 process, {th} thread(s)", th, time.perf_counter() - t0, local.metrics))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for n in args.workers:
            t0 = time.perf_counter()
            res = trace_with_ray(**inputs, out=tmp / f"ray{n}", num_workers=n, **opts)
            rows.append((f"ray, {n} worker(s)", n, time.perf_counter() - t0, res.metrics))
            same = res.edges.equals(local.edges)
            print(f"ray {n} workers: edges identical to the local run: {same}")
            if not same:
                raise SystemExit("edges differ from the local run")
    finally:
        ray.shutdown()
    m = local.metrics
    print(f"\n{m['n_cells']} cells, {m['n_source_features']} source features, {m['ablations']} ablations "
          f"(+ {m['null_ablations']} null), {m['ablation_forward_passes']} ablated + {m['clean_forward_passes']} clean "
          f"forward passes, {-(-m['n_cells'] // args.checkpoint_every)} blocks (tasks); {m['n_edges']} edges\n")
    table = pd.DataFrame([{"run": r, "torch threads total": th, "wall s": round(w, 1),
                           "worker compute s (sum)": r_m["compute_s"],
                           "ablations/s (wall)": round(r_m["ablations"] / w, 1)} for r, th, w, r_m in rows])
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    shutil.rmtree(tmp, ignore_errors=True)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
