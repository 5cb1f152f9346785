"""Real vs null pass counts of both edge criteria, per threshold, for finished traces: one
markdown table with a column group per model (for docs/demo-run.md).

Each argument is a run directory holding ``trace/accumulators.npz``, or a directory whose
subdirectories are such runs (the demo's output: DIR/geneformer, DIR/scgpt). Per run and
threshold: real tests passing, null-draw tests passing scaled to the number of real tests
(expected false passes), and the estimated FDR (for the published rule their ratio; for the null
criterion the larger of that ratio and BH's plug-in, as in the manifest). Rows: the published rule
(reference consistency > 0.7, uncapped: a cap has no null counterpart) at |d| > 0.5, 1, 2, 3,
the null criterion at BH levels 0.01, 0.05, 0.1 with the run's magnitude floor, and at the
run's BH level without it, and the null criterion with the target-decoy cut (``threshold``
decoy and decoy_plus, :func:`sccircuits.trace.edges.decoy_cut`) at the run's FDR level.
Thresholds not varied are the run's own (its trace configuration). Nothing is recomputed from
the model.

    PYTHONPATH=src python benchmarks/edge_criteria.py DIR [RUN ...]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from sccircuits.artifacts import read_trace_meta
from sccircuits.config import from_dict
from sccircuits.trace import Accumulators, Thresholds, TraceConfig
from sccircuits.trace.edges import estimated_fdr, null_floor

STATS = Path("trace") / "accumulators.npz"


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories among ``paths`` and their immediate subdirectories (sorted)."""
    runs = []
    for p in map(Path, paths):
        if (p / STATS).is_file():
            runs.append(p)
        else:
            found = sorted(d for d in p.iterdir() if (d / STATS).is_file()) if p.is_dir() else []
            if not found:
                raise SystemExit(f"{p}: no {STATS} here or in a subdirectory")
            runs += found
    return runs


def base_thresholds(run: Path) -> Thresholds:
    """The run's own thresholds (its trace configuration), uncapped."""
    meta = read_trace_meta(run)
    cfg = from_dict(TraceConfig, meta["config"]) if meta and "config" in meta else TraceConfig()
    return replace(Thresholds.from_config(cfg), top_per_layer=0, max_q=None, consistency_kind="reference")


def rows_for(run: Path) -> list[dict]:
    """One row per (criterion, threshold): real passes, scaled null passes, estimated FDR."""
    acc, _ = Accumulators.load(run / STATS)
    base = base_thresholds(run)
    settings = [(f"published, |d| > {d}", "published", replace(base, d_threshold=d)) for d in (0.5, 1.0, 2.0, 3.0)]
    bh = replace(base, threshold="bh")  # (the run may have used a decoy cut)
    settings += [(f"null, BH {q}", "null", replace(bh, fdr=q)) for q in (0.01, 0.05, 0.1)]
    settings.append(("null, run's BH level, no magnitude floor", "null", replace(bh, min_rel_change=0.0)))
    settings += [(f"null, {name} at FDR {base.fdr}", "null", replace(base, threshold=cut))
                 for name, cut in (("target-decoy", "decoy"), ("target-decoy+", "decoy_plus"))]
    out = []
    for name, kind, th in settings:
        n = null_floor(acc, th)
        real_col, exp_col = (("n_real_passing", "expected_false_published") if kind == "published"
                             else ("n_real_passing_null", "expected_false_null"))
        real, exp = int(n[real_col].sum()), float(n[exp_col].sum())
        # the null criterion's estimate, as the manifest states it: the larger of the null draws'
        # count and BH's plug-in (tests x p cut / kept; BH cut only); the published rule's: the count
        est = estimated_fdr(n)["null" if kind == "null" else "published"] if real else None
        out.append({"run": run.name, "criterion": name, "real": real, "null_scaled": round(exp, 1),
                    "estimated_fdr": None if est is None else round(est, 4)})
    return out


def table(runs: list[Path]) -> str:
    """Markdown: a row per criterion and threshold, a (real, null scaled, estimated FDR) column
    group per run."""
    per_run = {r.name: {x["criterion"]: x for x in rows_for(r)} for r in runs}
    names = list(per_run)
    head = "| criterion | " + " | ".join(f"{n}: real | {n}: null (scaled) | {n}: est. FDR" for n in names) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(names)]
    for crit in per_run[names[0]]:
        cells = []
        for n in names:
            r = per_run[n].get(crit)
            cells += ["" if r is None else str(r["real"]), "" if r is None else str(r["null_scaled"]),
                      "" if r is None or r["estimated_fdr"] is None else f"{r['estimated_fdr']:.2%}"]
        lines.append(f"| {crit.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(table(find_runs(sys.argv[1:])))


if __name__ == "__main__":
    main()
