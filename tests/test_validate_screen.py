"""Validation against small synthetic CRISPRi screens written by the tests."""

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccircuits.errors import InputError
from sccircuits.rundir import RunDir
from sccircuits.validate import ValidateConfig, validate
from sccircuits.validate.synthetic import write_run, write_screen

CTRL = "non-targeting"


def _screen_cells(knockdowns, lines=("K562",), n_kd=40, n_ctrl=200):
    rows = []
    for line in lines:
        rows += [(CTRL, line)] * n_ctrl
        for k in knockdowns:
            rows += [(k, line)] * n_kd
    return pd.DataFrame(rows, columns=["target", "cell_line"])


def _planted(n_sources=12, n_targets=6, n_genes=80, seed=0, bias=None):
    """Predictions: sources G0..G{n-1}, each with n_targets targets among the other genes."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    rows = []
    for s in range(n_sources):
        tg = rng.choice(np.arange(n_sources, n_genes), size=n_targets, replace=False)
        for t in tg:
            neg = rng.random() < (0.5 if bias is None else bias)
            rows.append((genes[s], genes[t], -1.5 if neg else 1.5))
    pred = pd.DataFrame(rows, columns=["source", "target", "mean_d"])
    pred["n_edges"] = 2
    pred["weighted_abs_d"] = pred["mean_d"].abs()
    pred["max_abs_d"] = pred["mean_d"].abs()
    return genes, pred


def _cfg(**kw):
    return ValidateConfig(**({"min_cells": 10, "n_boot": 300} | kw))


@pytest.mark.parametrize("sparse_x", [True, False])
def test_planted_effects_give_high_accuracy_and_enrichment(tmp_path, sparse_x):
    genes, pred = _planted()
    # knockdown of s moves each predicted target in the predicted direction: LFC sign = sign(d)
    effects = {("K562", s): {t: (0.35 if d < 0 else 2.8) for t, d in zip(g["target"], g["mean_d"])}
               for s, g in pred.groupby("source")}
    for (line, s), eff in effects.items():
        eff[s] = 0.2  # the knocked-down gene itself drops
    path = write_screen(tmp_path / "screen.h5ad", genes, _screen_cells(pred["source"].unique()), effects, seed=1,
                        sparse=sparse_x)  # Ensembl var_names, symbols in var['gene_name'] (Replogle layout)
    res = validate([], path, _cfg(chunk_size=150), predictions=pred, out=tmp_path / "out", progress=False)
    row = res.summary[res.summary["subset"] == "all"].iloc[0]
    assert row["accuracy"] > 0.95
    assert row["excess_ci_low"] > 0.2
    assert row["within_knockdown_p"] < 0.01 and row["within_target_p"] < 0.01
    assert row["n_knockdowns_enriched"] >= 10 and row["n_knockdowns_tested"] == 12
    assert (res.knockdowns["self_lfc"] < -1.5).all()
    # tables written and the stage recorded
    out = RunDir(tmp_path / "out", create=False)
    assert out.is_complete("validate")
    for name in ("pairs", "knockdowns", "enrichment", "summary", "predictions"):
        assert (tmp_path / "out/validation" / f"{name}.parquet").is_file()
    assert json.loads((tmp_path / "out/validation/summary.json").read_text())[0]["subset"] == "all"
    # same answer with the smaller background (genes predicted as a target of any source)
    small = validate([], path, _cfg(background="predicted"), predictions=pred, out=tmp_path / "o2", progress=False)
    row2 = small.summary.iloc[0]
    assert row2["accuracy"] == pytest.approx(row["accuracy"]) and row2["n_knockdowns_enriched"] >= 10


def test_random_effects_match_the_sign_bias_baseline(tmp_path):
    genes, pred = _planted(n_sources=40, n_targets=10, n_genes=200, bias=0.8, seed=2)
    rng = np.random.default_rng(5)
    # effects independent of the predictions, but 70% of them up: baseline = .2*.7 + .8*.3 = 0.38
    effects = {("K562", s): {t: (1.6 if rng.random() < 0.7 else 0.6) for t in g["target"]}
               for s, g in pred.groupby("source")}
    path = write_screen(tmp_path / "screen.h5ad", genes, _screen_cells(pred["source"].unique(), n_kd=25),
                        effects, seed=3)
    res = validate([], path, _cfg(), predictions=pred, out=tmp_path / "out", progress=False)
    row = res.summary.iloc[0]
    assert 0.3 < row["baseline"] < 0.46  # far from 0.5: the bias is real
    assert row["excess_ci_low"] <= 0 <= row["excess_ci_high"]
    assert row["accuracy_ci_low"] <= row["baseline"] <= row["accuracy_ci_high"]
    assert row["within_knockdown_p"] > 0.05 and row["within_target_p"] > 0.05
    assert row["within_knockdown_excess_ci_low"] <= 0 <= row["within_knockdown_excess_ci_high"]
    assert "naive_binomial_p_vs_half" in row and "binomial_p_vs_half" not in row
    assert "p_value_unstratified" in res.enrichment


def test_cell_lines_stay_separate(tmp_path):
    genes, pred = _planted(n_sources=8, n_targets=5, n_genes=60, seed=4)
    effects = {}
    for s, g in pred.groupby("source"):
        effects[("lineA", s)] = {t: (0.35 if d < 0 else 2.8) for t, d in zip(g["target"], g["mean_d"])}
        effects[("lineB", s)] = {t: (2.8 if d < 0 else 0.35) for t, d in zip(g["target"], g["mean_d"])}
    path = write_screen(tmp_path / "screen.h5ad", genes,
                        _screen_cells(pred["source"].unique(), lines=("lineA", "lineB")), effects, seed=5)
    res = validate([], path, _cfg(), predictions=pred, out=tmp_path / "out", progress=False)
    acc = res.summary.set_index("cell_line")["accuracy"]
    assert acc["lineA"] > 0.95 and acc["lineB"] < 0.05
    assert 0.4 < acc["(pooled)"] < 0.6
    assert set(res.pairs["cell_line"]) == {"lineA", "lineB"}


def _six_cell_file(path, sparse_x):
    counts = np.array([[10, 10, 80], [5, 15, 30], [0, 20, 180],  # controls
                       [1, 9, 90], [0, 40, 60], [2, 18, 180]],  # knockdown of A
                      dtype=np.float32)
    obs = pd.DataFrame({"gene": pd.Categorical([CTRL] * 3 + ["A"] * 3)}, index=[f"c{i}" for i in range(6)])
    a = ad.AnnData(X=sp.csr_matrix(counts) if sparse_x else counts, obs=obs, var=pd.DataFrame(index=["A", "B", "C"]))
    a.write_h5ad(path)
    return path


@pytest.mark.parametrize("sparse_x", [True, False])
def test_hand_computed_lfc_on_six_cells(tmp_path, sparse_x):
    path = _six_cell_file(tmp_path / "six.h5ad", sparse_x)
    pred = pd.DataFrame({"source": ["A", "A"], "target": ["B", "C"], "mean_d": [-1.0, 1.0],
                         "n_edges": 2, "weighted_abs_d": 1.0, "max_abs_d": 1.0})
    res = validate([], path, ValidateConfig(min_cells=3, n_boot=10, chunk_size=2), predictions=pred,
                   out=tmp_path / "out", progress=False)
    # CP10k per cell: controls B = 1000, 3000, 1000 -> 5000/3; C = 8000, 6000, 9000 -> 23000/3
    # knockdown B = 900, 4000, 900 -> 5800/3; C = 9000, 6000, 9000 -> 8000; A: 100, 0, 100 vs 1000, 1000, 0
    lfc = res.pairs.set_index("target")["lfc"]
    assert lfc["B"] == pytest.approx(np.log2((5800 / 3 + 0.1) / (5000 / 3 + 0.1)))
    assert lfc["C"] == pytest.approx(np.log2((8000 + 0.1) / (23000 / 3 + 0.1)))
    kd = res.knockdowns.iloc[0]
    assert kd["self_lfc"] == pytest.approx(np.log2((200 / 3 + 0.1) / (2000 / 3 + 0.1)))
    assert kd["n_cells"] == 3 and kd["n_control_cells"] == 3
    # B up (predicted down: d < 0), C up (predicted up) -> 1 of 2 correct
    assert res.summary.iloc[0]["accuracy"] == pytest.approx(0.5)


def test_min_cells_and_efficacy_filter(tmp_path):
    path = _six_cell_file(tmp_path / "six.h5ad", True)
    pred = pd.DataFrame({"source": ["A"], "target": ["B"], "mean_d": [-1.0], "n_edges": 2,
                         "weighted_abs_d": 1.0, "max_abs_d": 1.0})
    with pytest.raises(InputError, match="no knockdown of a predicted gene passes"):
        validate([], path, ValidateConfig(min_cells=4), predictions=pred, out=tmp_path / "o1", progress=False)
    # A drops ~90%: passes a 30% efficacy filter, fails a 95% one
    ok = validate([], path, ValidateConfig(min_cells=3, efficacy_filter=True, n_boot=10), predictions=pred,
                  out=tmp_path / "o2", progress=False)
    assert ok.knockdowns["used"].all()
    with pytest.raises(InputError, match="efficacy filter on"):
        validate([], path, ValidateConfig(min_cells=3, efficacy_filter=True, min_knockdown=0.95),
                 predictions=pred, out=tmp_path / "o3", progress=False)


def test_clear_errors(tmp_path):
    path = _six_cell_file(tmp_path / "six.h5ad", True)
    pred = pd.DataFrame({"source": ["A"], "target": ["B"], "mean_d": [-1.0]})
    kw = dict(predictions=pred, out=tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="control label 'NT' not found.*'non-targeting'"):
        validate([], path, ValidateConfig(control_label="NT"), **kw)
    with pytest.raises(InputError, match="no obs column 'guide_target'.*obs columns: gene"):
        validate([], path, ValidateConfig(target_column="guide_target"), **kw)
    with pytest.raises(InputError, match="no obs column 'line'"):
        validate([], path, ValidateConfig(cell_line_column="line"), **kw)
    with pytest.raises(InputError, match="missing.h5ad: file not found"):
        validate([], tmp_path / "missing.h5ad", ValidateConfig(), **kw)
    other = pd.DataFrame({"source": ["TP53"], "target": ["B"], "mean_d": [-1.0]})
    with pytest.raises(InputError, match="no overlap between predicted genes and the screen"):
        validate([], path, ValidateConfig(min_cells=1), predictions=other, out=tmp_path / "o", progress=False)


def test_end_to_end_from_runs_via_cli(tmp_path):
    """Run dir -> predict -> validate through the installed CLI (consensus subset included)."""
    genes = [f"G{i}" for i in range(40)]
    top = {0: {f: [genes[f], genes[f + 10]] for f in range(4)},  # sources G0..G3 (and G10..G13)
           2: {f: [genes[20 + f], genes[30 + f]] for f in range(4)}}
    edges = pd.DataFrame({"source_layer": 0, "source_feature": [0, 1, 2, 3] * 2, "target_layer": 2,
                          "target_feature": [0, 1, 2, 3, 1, 2, 3, 0],
                          "cohens_d": [-2.5, -2.5, 2.5, 2.5, -1.0, -1.0, 1.0, 1.0],
                          "consensus": [True, False] * 4})
    run = write_run(tmp_path / "run", edges, top)
    effects = {}
    for _, e in edges.iterrows():
        for s in top[0][e.source_feature]:
            for t in top[2][e.target_feature]:
                effects.setdefault(("all", s), {})[t] = 0.3 if e.cohens_d < 0 else 3.0
    cells = _screen_cells(genes[:4] + genes[10:14], lines=("all",), n_kd=30)
    screen = write_screen(tmp_path / "screen.h5ad", genes, cells, effects, seed=7, cell_line_column=None)
    from typer.testing import CliRunner

    from sccircuits.cli import app

    r = CliRunner().invoke(app, ["predict", "--run", str(run), "--min-edges", "1"])
    assert r.exit_code == 0, r.output
    assert (run / "validation/gene_predictions.parquet").is_file()
    r = CliRunner().invoke(app, ["validate", "--run", str(run), "--perturbations", str(screen), "--min-cells", "10",
                                 "--min-edges", "1", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    summary = pd.read_parquet(run / "validation/summary.parquet").set_index("subset")
    assert summary.loc["all", "accuracy"] > 0.9 and summary.loc["consensus", "n_pairs"] > 0
    # a user error through the real entry point: one red line, exit code 2, no traceback
    r = subprocess.run([sys.executable, "-m", "sccircuits.cli", "validate", "--run", str(run), "--perturbations",
                        str(screen), "--control-label", "NTC"], capture_output=True, text=True)
    assert r.returncode == 2 and "control label 'NTC' not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3 and "Traceback" not in r.stderr
