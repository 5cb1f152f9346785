"""``--compat reference`` gene predictions and CRISPRi validation, pinned to hand-computed cases.

Published script: bio-sae-circuits ``src/15_phase6_predictions_and_validation.py``.
"""

from __future__ import annotations

import pandas as pd
import pytest

from sccircuits.errors import ConfigError
from sccircuits.rundir import RunDir
from sccircuits.validate import PredictConfig, ValidateConfig, predict_genes
from sccircuits.validate.core import knockdown_enrichment_counts
from sccircuits.validate.synthetic import write_run

# features: layer 0 -> {1: A, B; 4: B, A}, layer 1 -> {2: C, D; 5: D, C}
TOP = {0: {1: ["A", "B"], 4: ["B", "A"]}, 1: {2: ["C", "D"], 5: ["D", "C"]}}
EDGES = pd.DataFrame({"source_layer": [0, 0], "source_feature": [1, 4], "target_layer": [1, 1],
                      "target_feature": [2, 5], "cohens_d": [-1.0, 1.5]})


def _run(tmp_path, unannotated=()):
    run = write_run(tmp_path / "run", EDGES, TOP)
    for layer in TOP:  # the published gene lookup only knows annotated features
        path = RunDir(run, create=False) / f"annotation/layer{layer:02d}_catalog.parquet"
        cat = pd.read_parquet(path)
        cat["n_annotations"] = [0 if (layer, f) in unannotated else 3 for f in cat["feature"]]
        cat.to_parquet(path, index=False)
    return run


def _row(pred, s, t):
    r = pred[(pred["source"] == s) & (pred["target"] == t)]
    assert len(r) == 1
    return r.iloc[0]


def test_published_sign_is_weighted_sum_over_n_edges(tmp_path):
    """L170-180 and L226-227: each edge adds w * d with w = 1/((i+1)(j+1)) and counts one edge;
    mean_d = sum(w * d) / n_edges. A -> C: edge 1 (d = -1) at ranks (0, 0), w = 1; edge 2
    (d = +1.5) at ranks (1, 1), w = 1/4. Published: (-1 + 0.375) / 2 = -0.3125 (negative);
    the plain mean of d is +0.25 (positive): the predicted sign flips. mean_abs_d (L179, L226,
    the ranking key, L247) = (1 + 0.375) / 2 = 0.6875."""
    run = _run(tmp_path)
    ref = predict_genes(run, PredictConfig(min_edges=1, compat="reference"), progress=False)
    ours = predict_genes(run, PredictConfig(min_edges=1), progress=False)
    ac = _row(ref, "A", "C")
    assert ac.n_edges == 2 and ac.mean_d == pytest.approx(-0.3125) and ac.mean_abs_d == pytest.approx(0.6875)
    assert _row(ours, "A", "C").mean_d == pytest.approx(0.25)
    # B -> D: edge 1 at ranks (1, 1), w = 1/4, d = -1 -> -0.25; edge 2 at ranks (0, 0), d = 1.5 -> 1.5
    assert _row(ref, "B", "D").mean_d == pytest.approx((-0.25 + 1.5) / 2)
    # ranking by mean_abs_d: B -> D (0.875) before A -> C (0.6875)
    top2 = list(zip(ref["source"], ref["target"]))[:2]
    assert top2 == [("B", "D"), ("A", "C")]


def test_published_gene_lists_exist_only_for_annotated_features(tmp_path):
    """src/14_biological_knowledge_extraction.py L117-132 fills gene_lookup only for features in
    feature_annotations; src/15 L151-155 skips edges without genes. Layer-0 feature 4 has no
    annotation, so edge 2 gives no pairs: A -> C has one edge (w * d = -1)."""
    run = _run(tmp_path, unannotated={(0, 4)})
    ref = predict_genes(run, PredictConfig(min_edges=1, compat="reference"), progress=False)
    ac = _row(ref, "A", "C")
    assert ac.n_edges == 1 and ac.mean_d == pytest.approx(-1.0)
    assert set(ref["source"]) == {"A", "B"} and len(ref) == 4  # A,B x C,D from edge 1 only
    assert _row(predict_genes(run, PredictConfig(min_edges=1), progress=False), "A", "C").n_edges == 2


def test_published_plausible_needs_two_shared_go_terms(tmp_path):
    """L211-221: 'plausible' when not in STRING/TRRUST and the genes share >= 2 GO BP terms.
    A and C share one term (T1), B and D share two (T1, T2)."""
    run = _run(tmp_path)
    gmt = tmp_path / "go.gmt"
    gmt.write_text("T1\tt1\tA\tC\tB\tD\nT2\tt2\tB\tD\n")
    ref = predict_genes(run, PredictConfig(min_edges=1, go_gmt=str(gmt), compat="reference"), progress=False)
    ours = predict_genes(run, PredictConfig(min_edges=1, go_gmt=str(gmt)), progress=False)
    assert _row(ref, "A", "C").status == "novel" and _row(ours, "A", "C").status == "plausible"
    assert _row(ref, "B", "D").status == "plausible" and _row(ref, "B", "D").shared_go_terms == 2


def test_published_knockdown_fisher_counting():
    """L513: a knockdown is tested only with >= 3 predicted targets; L546: enriched at
    uncorrected p < 0.05 (no BH); L547-548: median of the finite odds ratios a*d/(b*c).
    X: 2 predicted -> not tested. Y: a=2, b=1, c=5, d=95 -> OR 38, p 0.01 -> enriched.
    Z: a=0 -> OR 0, p 1. W: b=0 -> OR inf (left out of the median), p 1e-4 -> enriched.
    Tested 3, enriched 2, median OR of [38, 0] = 19. BH q are all 0.2 here: the default rule
    (q < 0.05) counts none."""
    enr = pd.DataFrame({"knockdown": ["X", "Y", "Z", "W"], "n_predicted": [2, 3, 4, 3],
                        "n_predicted_responsive": [2, 2, 0, 3], "n_other_responsive": [5, 5, 10, 5],
                        "n_other": [100, 100, 100, 100], "p_value": [0.001, 0.01, 1.0, 1e-4],
                        "q_value": [0.2, 0.2, 0.2, 0.2]})
    ref = knockdown_enrichment_counts(enr, ValidateConfig(compat="reference"))
    assert ref == {"n_knockdowns_tested": 3, "n_knockdowns_enriched": 2, "median_odds_ratio": 19.0}
    ours = knockdown_enrichment_counts(enr, ValidateConfig())
    assert ours == {"n_knockdowns_tested": 4, "n_knockdowns_enriched": 0}


def test_published_fold_change_settings():
    """L362-397: LFC = log2(mean_kd + 1) - log2(mean_ctrl + 1) of the matrix as stored (no
    per-cell normalisation); L386: knockdowns need >= 5 cells; L446: |LFC| < 0.01 not scored;
    L503: responsive |LFC| > 0.5; the predictions follow the published rules too."""
    cfg = ValidateConfig(compat="reference")
    assert (cfg.normalize, cfg.pseudocount, cfg.min_cells, cfg.min_abs_lfc, cfg.responsive_lfc) == \
        (False, 1.0, 5, 0.01, 0.5)
    assert cfg.predict.compat == "reference" and cfg.predict.min_shared_go == 2
    ours = ValidateConfig()
    assert (ours.normalize, ours.pseudocount, ours.min_cells, ours.predict.min_shared_go) == (True, 0.1, 20, 1)
    with pytest.raises(ConfigError, match="--pseudocount"):  # compat never silently replaces a given value
        ValidateConfig(compat="reference", pseudocount=0.1)
    with pytest.raises(ConfigError, match="--min-shared-go"):
        ValidateConfig(compat="reference", predict=PredictConfig(min_shared_go=3))


def test_compat_validation_end_to_end(tmp_path):
    """The compat path through ``validate``: planted screen, 12 knockdowns with 6 predicted
    targets each (all >= 3, so all tested), effects in the predicted direction."""
    from test_validate_screen import _planted, _screen_cells
    from sccircuits.validate import validate
    from sccircuits.validate.synthetic import write_screen

    genes, pred = _planted()
    effects = {("K562", s): {t: (0.35 if d < 0 else 2.8) for t, d in zip(g["target"], g["mean_d"])}
               for s, g in pred.groupby("source")}
    path = write_screen(tmp_path / "screen.h5ad", genes, _screen_cells(pred["source"].unique()), effects, seed=1)
    res = validate([], path, ValidateConfig(compat="reference", n_boot=50), predictions=pred, out=tmp_path / "out",
                   progress=False)
    row = res.summary[res.summary["subset"] == "all"].iloc[0]
    assert row["n_knockdowns_tested"] == 12 and row["n_knockdowns_enriched"] >= 10
    assert row["accuracy"] > 0.95 and "median_odds_ratio" in res.summary.columns
