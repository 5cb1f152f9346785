"""Real vs null pass counts of both edge criteria on a finished trace (its accumulators.npz).

For the published rule (consistency > 0.7, reference consistency) at |d| thresholds 0.5, 1, 2,
3 and for the null criterion at BH levels 0.01, 0.05, 0.1: real tests passing, null-draw tests
passing scaled to the number of real tests (expected false passes), and their ratio (the
estimated FDR). Nothing is recomputed from the model.

    PYTHONPATH=src python benchmarks/edge_criteria.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from sccircuits.trace import Accumulators, Thresholds
from sccircuits.trace.edges import null_floor


def rows_for(run: Path) -> list[dict]:
    acc, _ = Accumulators.load(run / "trace" / "accumulators.npz")
    base = Thresholds(min_cells=3, top_per_layer=0)
    out = []
    for d in (0.5, 1.0, 2.0, 3.0):
        n = null_floor(acc, replace(base, d_threshold=d))
        real, exp = int(n.n_real_passing.sum()), float(n.expected_false_published.sum())
        out.append({"run": run.name, "criterion": f"published |d| > {d}", "real": real, "null_scaled": round(exp, 1),
                    "estimated_fdr": round(min(exp / real, 1.0), 3) if real else None})
    for q in (0.01, 0.05, 0.1):
        n = null_floor(acc, replace(base, fdr=q))
        real, exp = int(n.n_real_passing_null.sum()), float(n.expected_false_null.sum())
        out.append({"run": run.name, "criterion": f"null, BH {q}", "real": real, "null_scaled": round(exp, 1),
                    "estimated_fdr": round(min(exp / real, 1.0), 3) if real else None})
    return out


def main() -> None:
    print("| run | criterion | real passes | null passes (scaled) | estimated FDR |\n|---|---|---|---|---|")
    for run in sys.argv[1:]:
        for r in rows_for(Path(run)):
            print(f"| {r['run']} | {r['criterion']} | {r['real']} | {r['null_scaled']} | {r['estimated_fdr']} |")


if __name__ == "__main__":
    main()
