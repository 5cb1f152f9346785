"""Tracer speed: sccircuits.trace vs the naive published loop, back to back in one process,
plus a profile of the tracer's hot loop.

Inputs (defaults = the shape of issue 16): a Geneformer-shaped BERT (random weights, 8 layers,
d_model 256, 4 heads, FFN 512), random TopK SAEs (d_sae 4 x d_model, k 32) at every layer,
40 synthetic cells of 1,200 genes (reference tokenization: 400-800 tokens per cell), source
layers 0 and 4 with their 10 most frequent features each, compat reference.

Runs, one after the other in this process:

* ``ours_null_off``: ``trace(..., compat="reference", null_ablation=False)``;
* ``ours_default``: the same with the null ablation on (the default). Compat reference selects
  the published edge set (column ``edge`` = ``in_cap``), which is what the naive loop can be
  compared with; the null criterion (the default without compat) is computed all the same
  (columns ``passes_null`` etc., the same null ablations and tests), so this run pays its full
  cost; its edge count and estimated FDR are reported;
* with ``--ours layernorm`` instead: ``ours_live`` and ``ours_frozen``, the default without
  compat (reference tokenization so the cells are the same, null on) with ``--layernorm live``
  and ``frozen``: what frozen LayerNorms cost (their edges are not the published set);
* ``naive``: tests/naive_reference.py, one full forward per (cell, active feature), batch 1,
  eager attention, as the published scripts did.

For each: wall and CPU time and the load average before and after; for ours also forward
passes (with and without the null), the peak RSS increase and the manifest's memory bound
(docs/method.md §5; the second run reuses memory the first freed, so check a run's peak alone:
``--ours default --skip-naive --profile-cells 0``). Ours is timed as the whole ``trace()`` call (loading, tokenization,
feature check, blocks, tables); the naive loop only as its loop (model already loaded), so the
ratio is conservative. Edges: Jaccard of the capped edge sets, TopK boundary flips (edges in one
set only) and the largest relative d difference on shared edges; the null-on and null-off runs
must give the same real edges.

Profile (``--profile-cells``, 0 = off): torch.profiler over ``AblationEngine.run_cells`` on the
first N cells, null off and null on; top-level operator time grouped into linear layers,
attention, SAE encode matmuls, top-k, segment sums and other ops; the rest of the wall time is
Python overhead. Achieved GFLOP/s (FLOPs counted from operator shapes) vs the fp32 matmul peak
measured here. Timings are only meaningful on an otherwise idle machine.

    python benchmarks/trace_speed.py [--n-cells 40] [--threads 2] [--skip-naive] [--profile-cells 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
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
TARGETS = {"ours_null_off": 5.0, "ours_default": 3.5}
"""Issue 16's speed-up targets over the naive loop (wall clock, idle machine)."""


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul over ``reps`` tries (wall clock)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    load_before = load()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                 "load_before": load_before, "load_after": load()}


# ------------------------------------------------------------------------------ profile
def _flops(name: str, shapes) -> float:
    if name == "aten::linear" and len(shapes) >= 2 and shapes[0] and shapes[1]:
        return 2.0 * np.prod(shapes[0][:-1]) * shapes[0][-1] * shapes[1][0]
    if name == "aten::scaled_dot_product_attention" and len(shapes) >= 3 and shapes[0]:
        q, k = shapes[0], shapes[1]
        return 4.0 * np.prod(q[:-1]) * k[-2] * q[-1]
    return 0.0


def profile(engine, cells, idx, d_sae: int) -> dict:
    """Top-level operator time by category over ``engine.run_cells(cells, idx)``."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        engine.run_cells(cells, idx)
        wall = time.perf_counter() - t0
    cats: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.cpu_parent is not None:
            continue
        shapes = ev.input_shapes or []
        flops = _flops(ev.name, shapes)
        if ev.name == "aten::linear":
            cat = "SAE encode matmuls" if shapes[1] and shapes[1][0] == d_sae else "linear layers (blocks)"
        elif ev.name == "aten::scaled_dot_product_attention":
            cat = "attention"
        elif ev.name == "aten::topk":
            cat = "top-k"
        elif ev.name in ("aten::index_add_", "aten::zeros") or "index_add" in ev.name:
            cat = "segment sums"
        elif ev.name == "aten::layer_norm":
            cat = "layer norms"
        else:
            cat = "other ops (gather, index, elementwise, copies)"
        c = cats.setdefault(cat, [0.0, 0.0])
        c[0] += ev.cpu_time_total / 1e6
        c[1] += flops
    ops_s = sum(v[0] for v in cats.values())
    cats["Python overhead (wall - top-level ops)"] = [max(wall - ops_s, 0.0), 0.0]
    return {"wall_s": wall, "categories": cats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=40)
    ap.add_argument("--n-genes", type=int, default=1200)
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--sources", default="0,4")
    ap.add_argument("--features-per-layer", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="ablated rows per forward")
    ap.add_argument("--clean-batch-size", type=int, default=None, help="cells per clean forward")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--ours", choices=("both", "off", "default", "layernorm", "live", "frozen"), default="both",
                    help="which of our runs (one alone in a fresh process measures its peak RSS cleanly); "
                         "layernorm: two runs without compat (reference tokenization, null on), "
                         "--layernorm live then frozen, to time the frozen LayerNorms (live, frozen: one of them)")
    ap.add_argument("--profile-cells", type=int, default=8, help="cells profiled (0 = no profile)")
    ap.add_argument("--workdir", default=None, help="inputs are built here (reused when present)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="trace_speed_"))
    tmp.mkdir(parents=True, exist_ok=True)
    d, nl = args.d_model, args.n_layers
    model_dir, saes_dir, cells_path = tmp / "model", tmp / "saes", tmp / "cells.h5ad"
    if not model_dir.is_dir():
        testing.make_tiny_geneformer(model_dir, n_genes=args.n_genes, n_layers=nl, d_model=d, seed=0)
    if not saes_dir.is_dir():
        write_saes(random_saes(range(nl), d_in=d, d_sae=4 * d, k=32, seed=0), saes_dir)
    if not cells_path.is_file():
        write_cells(cells_path, n_cells=args.n_cells, n_genes=args.n_genes)

    adapter = load_model(model_dir)
    saes = load_saes(saes_dir)
    cells = adapter.tokenize(read_cells(cells_path)[:args.n_cells].copy(), mode="reference")
    sources = [int(x) for x in args.sources.split(",")]
    freq = feature_frequencies(adapter, saes, cells, sources, 8, progress=False)
    spec = {s: sorted(int(f) for f in np.argsort(-freq[s], kind="stable")[:args.features_per_layer]) for s in sources}
    feats = ";".join(f"{s}:" + ",".join(map(str, f)) for s, f in spec.items())
    lengths = cells.lengths()
    res: dict = {"inputs": {"layers": nl, "d_model": d, "d_ff": 2 * d, "heads": 4, "d_sae": 4 * d, "k": 32,
                            "cells": len(cells), "tokens_min_mean_max": [int(lengths.min()), round(float(lengths.mean()), 1),
                                                                         int(lengths.max())],
                            "features": feats, "threads": args.threads, "batch_size": args.batch_size,
                            "clean_batch_size": args.clean_batch_size},
                 "cpu": _cpu_name(), "matmul_peak_gflops": round(matmul_peak(args.threads), 1)}
    print(json.dumps(res["inputs"]), f"\nfp32 matmul peak here: {res['matmul_peak_gflops']} GFLOP/s "
          f"({args.threads} threads; load {load()})", flush=True)

    runs = {}
    if not args.skip_ours:
        compat = {"compat": "reference"}
        no_compat = {"tokenization": "reference", "min_cells": 2}
        plans = {"both": [("ours_null_off", {**compat, "null_ablation": False}), ("ours_default", compat)],
                 "off": [("ours_null_off", {**compat, "null_ablation": False})], "default": [("ours_default", compat)],
                 "layernorm": [("ours_live", {**no_compat, "layernorm": "live"}),
                               ("ours_frozen", {**no_compat, "layernorm": "frozen"})],
                 "live": [("ours_live", {**no_compat, "layernorm": "live"})],
                 "frozen": [("ours_frozen", {**no_compat, "layernorm": "frozen"})]}[args.ours]
        for key, opts in plans:
            reset_peak_rss()
            rss0 = rss_mib("VmRSS")
            r, t = timed(lambda: trace(model=model_dir, data=cells_path, saes=saes_dir, out=tmp / f"ours_{time.time_ns()}",
                                       features=feats, n_cells=args.n_cells, batch_size=args.batch_size,
                                       clean_batch_size=args.clean_batch_size, checkpoint_every=args.n_cells,
                                       progress=False, **opts))
            t["peak_rss_mib"] = round(rss_mib(), 1)
            t["peak_rss_increase_mib"] = round(rss_mib() - rss0, 1)
            m = r.metrics
            t.update({k: m.get(k) for k in ("compute_s", "ablations", "null_ablations", "clean_forward_passes",
                                            "ablation_forward_passes", "forward_passes", "forward_passes_null_free",
                                            "forward_pass_ratio", "ablated_sequences", "n_edges_in_cap",
                                            "n_edges_null_criterion", "estimated_fdr_null", "memory_estimate_mib",
                                            "memory_estimate_shape")})
            t["peak_rss_increase_within_bound"] = bool(t["peak_rss_increase_mib"] <= (m.get("memory_estimate_mib") or {}).get("total", 0))
            runs[key] = r
            res[key] = t
            print(f"{key}: {json.dumps(t)}", flush=True)
        if "ours_null_off" in runs and "ours_default" in runs:
            off, on = (runs[k].edges for k in ("ours_null_off", "ours_default"))
            res["null_on_vs_off_real_edges"] = compare_edges(on[on.in_cap], off[off.in_cap])
            print(f"real edges, null on vs null off: {json.dumps(res['null_on_vs_off_real_edges'])}", flush=True)
    if not args.skip_naive:
        obs, t = timed(lambda: naive_observations(adapter, saes, cells, spec))
        t["forward_passes"] = obs["forward_passes"]
        res["naive"] = t
        print(f"naive loop: {json.dumps(t)}", flush=True)
        ref = naive_edges(obs, top_n=50, min_cells=2)
        for key, r in runs.items():
            if key not in TARGETS:  # runs without compat: not the published edge set
                res[key]["speedup"] = round(t["wall_s"] / res[key]["wall_s"], 2)
                continue
            target = TARGETS[key]
            res[key]["speedup"] = round(t["wall_s"] / res[key]["wall_s"], 2)
            res[key]["speedup_cpu"] = round(t["cpu_s"] / res[key]["cpu_s"], 2)
            res[key]["speedup_target"] = target
            res[key]["edges_vs_naive"] = e = compare_edges(r.edges[r.edges.in_cap], ref)
            res[key]["exact"] = bool(e["jaccard"] >= 0.999 and e["d_outliers"] == 0)
            print(f"{key}: speed-up {res[key]['speedup']}x wall (target >= {target}x on an idle machine), "
                  f"{res[key]['speedup_cpu']}x CPU; edges vs naive {json.dumps(e)}; "
                  f"exact (Jaccard >= 0.999, every shared d within 1e-3): {res[key]['exact']}", flush=True)

    if args.profile_cells:
        res["profile"] = run_profile(adapter, saes, cells, spec, args, res["matmul_peak_gflops"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))


def compare_edges(ours, ref, rtol: float = 1e-3) -> dict:
    """Agreement of two capped edge sets: Jaccard, TopK boundary flips (edges in one set only),
    shared edges whose d differs by more than ``rtol`` relative (``d_outliers``: also flips, of a
    position in or out of a TopK support, when they occur) and the largest relative d difference."""
    m = ours.merge(ref, on=KEY, how="outer", suffixes=("", "_ref"), indicator=True)
    both = m[m["_merge"] == "both"]
    rel = np.abs(both.cohens_d - both.cohens_d_ref) / np.maximum(1e-12, np.abs(both.cohens_d_ref))
    return {"ours": int(len(ours)), "reference": int(len(ref)), "shared": int(len(both)),
            "jaccard": round(len(both) / max(len(m), 1), 5),
            "boundary_flips": int((m["_merge"] != "both").sum()), "d_outliers": int((rel > rtol).sum()),
            "max_rel_d_diff": float(rel.max()) if len(rel) else 0.0,
            "max_rel_d_diff_without_outliers": float(rel[rel <= rtol].max()) if (rel <= rtol).any() else 0.0}


def run_profile(adapter, saes, cells, spec, args, peak: float) -> dict:
    """Profile of ``AblationEngine.run_cells`` on the first ``--profile-cells`` cells with the
    trace's plan (compat reference: TopK-support firing), null off then null on."""
    from sccircuits.trace.engine import AblationEngine, TracePlan

    targets = {s: [t for t in sorted(saes) if t > s] for s in spec}
    idx = list(range(min(args.profile_cells, len(cells))))
    out = {}
    for null in (False, True):
        plan = TracePlan({s: np.asarray(f, np.int64) for s, f in spec.items()}, targets, null=null,
                         batch_size=args.batch_size, clean_batch_size=args.clean_batch_size, support_active=True)
        engine = AblationEngine(adapter, saes, plan)
        engine.run_cells(cells, idx[:1])  # warm-up
        p = profile(engine, cells, idx, 4 * args.d_model)
        wall = p["wall_s"]
        total_flops = sum(v[1] for v in p["categories"].values())
        name = "null on" if null else "null off"
        print(f"\nprofile: {len(idx)} cells, {name}, {wall:.2f} s wall (load {load()}); "
              f"{total_flops / 1e9:.1f} GFLOP = {total_flops / wall / 1e9:.1f} GFLOP/s "
              f"= {100 * total_flops / wall / 1e9 / peak:.0f}% of the measured matmul peak")
        print("| part | time s | share | GFLOP | GFLOP/s in part |\n|---|---|---|---|---|")
        for cat, (sec, fl) in sorted(p["categories"].items(), key=lambda kv: -kv[1][0]):
            rate = f"{fl / sec / 1e9:.0f}" if fl and sec else ""
            print(f"| {cat} | {sec:.2f} | {100 * sec / wall:.0f}% | {fl / 1e9:.1f} | {rate} |")
        out["null_on" if null else "null_off"] = {
            "cells": len(idx), "wall_s": wall, "gflop": total_flops / 1e9,
            "fraction_of_matmul_peak": total_flops / wall / 1e9 / peak,
            "categories": {k: {"s": v[0], "gflop": v[1] / 1e9} for k, v in p["categories"].items()}}
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
