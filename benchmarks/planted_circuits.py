"""Planted-circuit benchmark: how many edges each criterion gets right where the truth is known.

For each architecture (Geneformer-shaped BERT, our scGPT) a model with planted SAE-feature
edges is built (:mod:`sccircuits.models.planted`; docs/planted-circuits.md), traced once per
null design (``--null-directions``, default: the default design) with otherwise default options,
and the edge table is scored against the planted truth for both criteria: the default (null)
criterion and the published rule (|d| > 0.5, consistency > 0.7, top-50 cap, and the same rule
uncapped). Then the calibration sweep: the null criterion at BH levels 0.05-0.5 and magnitude
floors 0.05 (default) and 0 (off), rebuilt from the same statistics, with estimated vs actual
FDR and where the false edges come from (:func:`sccircuits.models.planted.calibration`).
Prints two markdown tables and writes them to --out as JSON.

    PYTHONPATH=src python benchmarks/planted_circuits.py --out /tmp/planted [--cells 60] [--seeds 0,1]
        [--null-directions feature,mixed] [--variant wide|narrow] [--rescore] [--source-norm median_mad] [--threshold decoy] [--decoy-score d]
        [--generic-units 32] [--generic-gain 1.0] [--layernorm live,frozen]

Variants: ``wide`` (d_model 96, 24 traced sources of which 12 planted with 2 edges each, 24
targets) and ``narrow`` (d_model 48, 16 traced sources of which 8 planted, 16 targets: the
planted units' LayerNorm side effects are larger relative to the stream). ``--generic-units N``
adds N generic FFN units to the planted block (a channel of non-edge effects that does not go
through LayerNorm; docs/planted-circuits.md, "Generic units"); runs with N > 0 go to their own
directories and files (suffix ``_gN``, ``_gNxG`` with a ``--generic-gain G`` other than the
default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


VARIANTS = {"wide": {}, "narrow": {"d_model": 48, "n_source_dict": 24, "n_traced": 16, "n_planted": 8, "n_targets": 16}}
"""make_planted options of each benchmark variant (wide: its defaults)."""


def run_one(out: Path, kind: str, seed: int, n_cells: int, min_strength: float, rescore: bool,
            null_directions: str = "feature", variant: str = "wide", source_norm: str | None = None,
            scoring: dict | None = None, generic_units: int = 0,
            generic_gain: float | None = None, layernorm: str = "frozen") -> tuple[list[dict], list[dict]]:
    from sccircuits.models.planted import GENERIC_GAIN, calibration, make_planted, score_edges
    from sccircuits.rundir import RunDir
    from sccircuits.trace import Accumulators, Thresholds, TraceConfig, build_tables, trace
    from sccircuits.trace.edges import estimated_fdr

    root = out / f"{kind}_s{seed}" if variant == "wide" else out / f"{kind}_s{seed}_{variant}"
    generic_gain = GENERIC_GAIN if generic_gain is None else generic_gain
    if generic_units:
        root = root.with_name(root.name + f"_g{generic_units}" + ("" if generic_gain == GENERIC_GAIN else f"x{generic_gain:g}"))
    run = root / (f"run_{null_directions}" + ("" if layernorm == "live" else f"_{layernorm}"))
    wall = None
    if not (rescore and (run / "trace" / "accumulators.npz").is_file()):
        pc = make_planted(root, kind, n_cells=n_cells, seed=seed, generic_units=generic_units,
                          generic_gain=generic_gain, **VARIANTS[variant])
        t0 = time.time()
        trace(model=pc.model, data=pc.data, saes=pc.saes, out=run, n_cells=n_cells, features=pc.features_spec(),
              progress=False, null_directions=null_directions, layernorm=layernorm,
              **({"gene_column": pc.gene_column} if pc.gene_column else {}))
        wall = round(time.time() - t0, 1)
    truth = pd.read_csv(root / f"{kind}_truth.csv")
    m = RunDir(run, create=False).stage("trace")["metrics"]
    # tables from the saved statistics with the current default thresholds
    acc, _ = Accumulators.load(run / "trace" / "accumulators.npz")
    base = Thresholds.from_config(TraceConfig(**({"source_norm": source_norm} if source_norm else {}), **(scoring or {})))
    e, _, null = build_tables(acc, base, kind)
    fdr = estimated_fdr(null)
    n_traced, n_targets = len(acc.features[min(acc.features)]), next(iter(acc.target_sizes.values()))
    # generic (non-edge) sensitivity: mean |mean change| of the targets a source has no planted edge to
    planted = set(truth["source_feature"])
    true = set(zip(truth["source_feature"], truth["target_feature"]))
    off = ~pd.Series([(f, g) in true for f, g in zip(e["source_feature"], e["target_feature"])], index=e.index)
    no_path = ~e["source_feature"].isin(planted)
    generic = {"mean_abs_effect_no_path": float(e.loc[no_path, "mean_delta"].abs().mean()),
               "mean_abs_effect_off_target": float(e.loc[off & ~no_path, "mean_delta"].abs().mean())}
    rows = []
    for name, col, est in (("default (null)", "passes_null", fdr["null"]), ("published, capped", "in_cap", None),
                           ("published, uncapped", "passes_published", fdr["published"])):
        sc = score_edges(e, truth, n_traced, n_targets, col, min_strength)
        rows.append({"architecture": kind, "seed": seed, "variant": variant, "generic_units": generic_units,
                     "generic_gain": generic_gain if generic_units else 0.0, "null_directions": null_directions, "layernorm": layernorm, "criterion": name, **sc, "estimated_fdr": est,
                     "forward_passes": m["forward_passes"], "forward_passes_null_free": m["forward_passes_null_free"],
                     "trace_wall_s": wall, **generic})
    cal = calibration(acc, truth, base, min_strength=min_strength, model=kind)
    cal.insert(0, "null_directions", null_directions)
    cal.insert(0, "generic_gain", generic_gain if generic_units else 0.0)
    cal.insert(0, "layernorm", layernorm)
    cal.insert(0, "generic_units", generic_units)
    cal.insert(0, "variant", variant)
    cal.insert(0, "seed", seed)
    cal.insert(0, "architecture", kind)
    return rows, cal.to_dict("records")


def markdown(df: pd.DataFrame, cols: list[str]) -> str:
    t = df[cols].round(3).astype(str)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in t.itertuples(index=False)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--kinds", default="geneformer,scgpt")
    ap.add_argument("--min-strength", type=float, default=0.1, help="recall counts planted edges this strong or more")
    ap.add_argument("--null-directions", default="feature", help="null designs to trace (comma-separated)")
    ap.add_argument("--variant", default="wide", choices=sorted(VARIANTS), help="planted construction (see above)")
    ap.add_argument("--rescore", action="store_true", help="score runs already traced under --out again (no tracing)")
    ap.add_argument("--source-norm", default=None, help="score with this TraceConfig.source_norm (default: the default)")
    ap.add_argument("--threshold", default=None, help="score with this TraceConfig.threshold (bh, decoy, decoy_plus)")
    ap.add_argument("--decoy-score", default=None, help="score with this TraceConfig.decoy_score (null_z, d)")
    ap.add_argument("--null-location", default=None, help="score with this TraceConfig.null_location (draws, pooled)")
    ap.add_argument("--generic-units", type=int, default=0,
                    help="generic (non-edge, not LayerNorm) FFN units in the planted block (default 0: none)")
    ap.add_argument("--generic-gain", type=float, default=None,
                    help="scale of the generic units' writes (default: make_planted's default)")
    ap.add_argument("--layernorm", default="frozen", help="TraceConfig.layernorm values to trace (comma-separated: frozen, the default, and live)")
    a = ap.parse_args()
    scoring = {k: v for k, v in (("threshold", a.threshold), ("decoy_score", a.decoy_score),
                                 ("null_location", a.null_location)) if v}
    rows, cal = [], []
    for kind in a.kinds.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            for nd in a.null_directions.split(","):
                for ln in a.layernorm.split(","):
                    r, c = run_one(a.out, kind, seed, a.cells, a.min_strength, a.rescore, nd, a.variant, a.source_norm,
                                   scoring, a.generic_units, a.generic_gain, ln)
                    rows += r
                    cal += c
    a.out.mkdir(parents=True, exist_ok=True)
    tag = ("" if a.variant == "wide" else f"_{a.variant}") + (f"_{a.source_norm}" if a.source_norm else "")
    tag += f"_g{a.generic_units}" if a.generic_units else ""
    tag += f"x{a.generic_gain:g}" if a.generic_units and a.generic_gain is not None else ""
    tag += "".join(f"_{v}" for v in scoring.values())
    tag += "" if a.layernorm == "frozen" else "_ln-" + a.layernorm.replace(",", "-")
    (a.out / f"planted_results{tag}.json").write_text(json.dumps(rows, indent=1, default=float))
    (a.out / f"planted_calibration{tag}.json").write_text(json.dumps(cal, indent=1, default=float))
    print(markdown(pd.DataFrame(rows), ["architecture", "seed", "variant", "generic_units", "generic_gain", "null_directions", "layernorm", "criterion", "kept", "true_positives",
                                        "precision", "actual_fdr", "estimated_fdr", "recall", "recall_all",
                                        "sign_accuracy", "share_d_negative", "forward_passes",
                                        "forward_passes_null_free", "mean_abs_effect_no_path"]))
    print()
    print(markdown(pd.DataFrame(cal), ["architecture", "seed", "variant", "generic_units", "generic_gain", "null_directions", "layernorm", "fdr", "min_rel_change", "kept",
                                       "false_positives", "fp_no_path", "fp_off_target", "actual_fdr",
                                       "estimated_fdr", "expected_false", "expected_false_no_path", "recall", "sign_accuracy",
                                       "share_d_negative"]))


if __name__ == "__main__":
    main()
