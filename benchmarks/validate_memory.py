"""Peak memory of `validate` on a synthetic 200,000-cell x 2,000-gene sparse CRISPRi screen.

Usage (run by hand; results go to benchmarks/RESULTS.md):

    python benchmarks/validate_memory.py [--cells 200000] [--genes 2000] [--dir /tmp/validate_bench]

Phase 1 (a child process) writes the screen chunk by chunk (sccircuits.validate.synthetic.
write_screen) unless it already exists. Phase 2 runs the validation in another FRESH child
process and reports that process's peak resident memory: VmHWM from /proc/self/status (the
high-water mark of this process's own memory) and ru_maxrss (on Linux it can also include the
parent's resident size at fork time, so it is an upper bound; the parent stays small), its RSS
right after imports, tracemalloc's peak of Python-level allocations, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def vm_hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM, Linux), MiB; NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return float("nan")


def make_inputs(d: Path, n_cells: int, n_genes: int, seed: int = 0) -> tuple[Path, Path]:
    """Screen (.h5ad) and prediction table: 1,000 knockdowns, 500 of them predicted sources."""
    import numpy as np
    import pandas as pd

    from sccircuits.validate.synthetic import write_screen

    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(n_genes)]
    n_kd = 1000
    n_ctrl = n_cells // 20
    per_kd = (n_cells - n_ctrl) // n_kd
    targets = ["non-targeting"] * (n_cells - per_kd * n_kd) + [g for g in genes[:n_kd] for _ in range(per_kd)]
    cells = pd.DataFrame({"target": rng.permutation(np.array(targets, dtype=object)), "cell_line": "K562"})
    sources = genes[:500]
    rows, effects = [], {}
    for s in sources:
        tg = rng.choice(np.arange(n_kd, n_genes), size=20, replace=False)
        sign = rng.choice([-1.5, 1.5], size=20)
        rows += [(s, genes[t], di) for t, di in zip(tg, sign)]
        # half of the predictions are right, strongly; the rest is noise
        effects[("K562", s)] = {genes[t]: (0.5 if di < 0 else 2.0) for t, di in zip(tg[:10], sign[:10])} | {s: 0.2}
    pred = pd.DataFrame(rows, columns=["source", "target", "mean_d"])
    pred["n_edges"] = 2
    pred["weighted_abs_d"] = pred["mean_d"].abs()
    pred["max_abs_d"] = pred["mean_d"].abs()
    pred_path = d / "predictions.parquet"
    pred.to_parquet(pred_path, index=False)
    screen = d / "screen.h5ad"
    if not screen.exists():
        t0 = time.perf_counter()
        write_screen(screen, genes, cells, effects, library_size=1000.0, sparse=True, seed=seed, chunk_size=10000)
        print(f"wrote {screen} ({screen.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return screen, pred_path


def measure(screen: Path, pred_path: Path, out: Path) -> dict:
    """Validate in this process; report peak RSS (ru_maxrss) and tracemalloc peak."""
    import tracemalloc

    import pandas as pd

    from sccircuits.validate import ValidateConfig, validate

    rss_imports = vm_hwm_mib()
    pred = pd.read_parquet(pred_path)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = validate([], screen, ValidateConfig(), predictions=pred, out=out, progress=False)
    wall = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row = res.summary.iloc[0]
    return {"peak_rss_mib": vm_hwm_mib(), "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
            "rss_after_imports_mib": rss_imports, "tracemalloc_peak_mib": traced_peak / 2**20,
            "wall_s": wall, "n_pairs": int(row["n_pairs"]), "n_knockdowns": int(row["n_clusters"]),
            "accuracy": float(row["accuracy"]), "baseline": float(row["baseline"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/validate_bench"))
    ap.add_argument("--phase", choices=["write", "measure"], help=argparse.SUPPRESS)  # child modes
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    screen, pred_path = a.dir / "screen.h5ad", a.dir / "predictions.parquet"
    if a.phase == "write":
        make_inputs(a.dir, a.cells, a.genes)
        return
    if a.phase == "measure":
        print(json.dumps(measure(screen, pred_path, a.dir / "out")))
        return
    me = [sys.executable, os.path.abspath(__file__), "--dir", str(a.dir), "--cells", str(a.cells),
          "--genes", str(a.genes)]
    subprocess.run(me + ["--phase", "write"], check=True)
    child = subprocess.run(me + ["--phase", "measure"], capture_output=True, text=True, check=True)
    res = json.loads(child.stdout.strip().splitlines()[-1])
    size = screen.stat().st_size / 2**20
    print(f"screen {a.cells} cells x {a.genes} genes, sparse, {size:.0f} MiB on disk")
    for k, v in res.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    print("PASS" if res["peak_rss_mib"] < 2048 else "FAIL", "(peak RSS < 2 GiB)")


if __name__ == "__main__":
    main()
