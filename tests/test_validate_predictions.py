"""Gene-level predictions on hand-made runs (edges + catalogs written by the tests)."""

import pandas as pd
import pytest

from sccircuits.errors import InputError
from sccircuits.validate import PredictConfig, predict_genes
from sccircuits.validate.synthetic import write_run

TOP = {0: {1: ["A", "B"]}, 1: {2: ["C", "D"], 3: ["C", "A"]}}


def _edges(**extra):
    e = pd.DataFrame({"source_layer": [0, 0], "source_feature": [1, 1], "target_layer": [1, 1],
                      "target_feature": [2, 3], "cohens_d": [-1.0, 3.0]})
    for k, v in extra.items():
        e[k] = v
    return e


def _row(pred, s, t):
    r = pred[(pred["source"] == s) & (pred["target"] == t)]
    assert len(r) == 1, f"{s}->{t} not predicted once"
    return r.iloc[0]


def test_two_edge_weights_hand_computed(tmp_path):
    # edge 1 (d=-1): A->C w1, A->D w1/2, B->C w1/2, B->D w1/4
    # edge 2 (d=+3): A->C w1, (A->A self, dropped), B->C w1/2, B->A w1/4
    run = write_run(tmp_path / "r1", _edges(), TOP)
    pred = predict_genes(run, PredictConfig(min_edges=1), progress=False)
    assert len(pred) == 5
    ac = _row(pred, "A", "C")
    assert (ac.n_edges, ac.weight, ac.weighted_abs_d, ac.mean_d, ac.max_abs_d) == (2, 2.0, 4.0, 1.0, 3.0)
    bc = _row(pred, "B", "C")
    assert (bc.n_edges, bc.weight, bc.weighted_abs_d, bc.mean_d) == (2, 1.0, 0.5 * 1 + 0.5 * 3, 1.0)
    bd = _row(pred, "B", "D")
    assert (bd.n_edges, bd.weight, bd.weighted_abs_d, bd.mean_d) == (1, 0.25, 0.25, -1.0)
    ba = _row(pred, "B", "A")
    assert (ba.weight, ba.weighted_abs_d, ba.mean_d) == (0.25, 0.75, 3.0)
    assert pred.iloc[0]["source"] == "A" and pred.iloc[0]["target"] == "C"  # sorted by weighted |d|
    assert not ((pred["source"] == "A") & (pred["target"] == "A")).any()


def test_default_filter_keeps_two_edge_or_strong_pairs(tmp_path):
    run = write_run(tmp_path / "r1", _edges(), TOP)
    pred = predict_genes(run, PredictConfig(), progress=False)
    # A->C, B->C (2 edges each) and B->A (max |d| 3 > 2); A->D, B->D (1 edge, |d| 1) dropped
    assert set(zip(pred["source"], pred["target"])) == {("A", "C"), ("B", "C"), ("B", "A")}
    strict = predict_genes(run, PredictConfig(min_max_abs_d=5.0), progress=False)
    assert set(zip(strict["source"], strict["target"])) == {("A", "C"), ("B", "C")}
    top1 = predict_genes(run, PredictConfig(top_genes=1), progress=False)
    assert set(zip(top1["source"], top1["target"])) == {("A", "C")}


def test_edge_sets_trace_edges_capped_uncapped(tmp_path):
    """Default: the trace's edge set (column 'edge'); 'capped': the published top-N set; 'uncapped':
    the published rule without its cap. Edge 1 alone gives B->D, edge 2 alone gives B->A."""
    run = write_run(tmp_path / "r1", _edges(in_cap=[True, False], edge=[False, True], passes_published=[True, True]), TOP)
    chosen = predict_genes(run, PredictConfig(min_edges=1), progress=False)
    assert _row(chosen, "A", "C").n_edges == 1 and _row(chosen, "B", "A").n_edges == 1
    assert not ((chosen["source"] == "B") & (chosen["target"] == "D")).any()
    capped = predict_genes(run, PredictConfig(min_edges=1, edges="capped"), progress=False)
    assert _row(capped, "B", "D").n_edges == 1
    assert not ((capped["source"] == "B") & (capped["target"] == "A")).any()
    uncapped = predict_genes(run, PredictConfig(min_edges=1, edges="uncapped"), progress=False)
    assert _row(uncapped, "A", "C").n_edges == 2


def test_conditions_across_runs(tmp_path):
    r1 = write_run(tmp_path / "gf", _edges(), TOP)
    r2 = write_run(tmp_path / "scgpt", _edges().iloc[:1], TOP)
    pred = predict_genes([r1, r2], PredictConfig(min_edges=1), progress=False)
    ac = _row(pred, "A", "C")
    assert ac.n_edges == 3 and ac.n_conditions == 2 and ac.conditions == "gf,scgpt"
    assert ac.mean_d == pytest.approx((-1 + 3 - 1) / 3)
    assert _row(pred, "B", "A").conditions == "gf"


def test_consensus_and_novel_flags_from_domain_pairs(tmp_path):
    e = _edges(source_label=["dnaA", "dnaA"], target_label=["immune", "stress"])
    run = write_run(tmp_path / "r1", e, TOP)
    cons = tmp_path / "consensus.tsv"
    cons.write_text("source_label\ttarget_label\ndnaA\tstress\n")
    pred = predict_genes(run, PredictConfig(min_edges=1, consensus_pairs=str(cons)), progress=False)
    assert _row(pred, "A", "C").n_consensus_edges == 1 and _row(pred, "A", "C").consensus
    assert not _row(pred, "A", "D").consensus  # only in the immune edge
    assert "novel" not in pred.columns
    flagged = write_run(tmp_path / "r2", _edges(novel=[True, False]), TOP)
    pred2 = predict_genes(flagged, PredictConfig(min_edges=1), progress=False)
    assert _row(pred2, "A", "D").novel and not _row(pred2, "B", "A").novel


def test_status_against_string_trrust_go(tmp_path):
    run = write_run(tmp_path / "r1", _edges(), TOP)
    (tmp_path / "string.tsv").write_text("protein1\tprotein2\tscore\nC\tA\t900\n")
    (tmp_path / "trrust.tsv").write_text("X\tY\tRepression\t1\nB\tA\tActivation\t123\n")
    (tmp_path / "go.gmt").write_text("GO:1\tterm one\tB\tC\tX\nGO:2\tterm two\tA\tZ\n")
    cfg = PredictConfig(min_edges=1, string_pairs=str(tmp_path / "string.tsv"),
                        trrust=str(tmp_path / "trrust.tsv"), go_gmt=str(tmp_path / "go.gmt"))
    pred = predict_genes(run, cfg, progress=False)
    status = dict(zip(zip(pred["source"], pred["target"]), pred["status"]))
    assert status == {("A", "C"): "confirmed",  # STRING, either orientation
                      ("B", "A"): "confirmed",  # TRRUST B -> A
                      ("B", "C"): "plausible",  # share GO:1
                      ("A", "D"): "novel", ("B", "D"): "novel"}
    assert _row(pred, "B", "C").shared_go_terms == 1


def test_missing_stage_or_catalog_is_a_clear_error(tmp_path):
    from sccircuits.rundir import RunDir

    RunDir(tmp_path / "empty")
    with pytest.raises(InputError, match="stage 'trace' has not completed"):
        predict_genes(tmp_path / "empty", progress=False)
    run = write_run(tmp_path / "r1", _edges(), {0: TOP[0]})  # no layer-1 catalog
    with pytest.raises(InputError, match="layer01_catalog.parquet: feature catalog not found"):
        predict_genes(run, progress=False)


def test_catalogs_from_the_annotation_run_the_tracer_used(tmp_path):
    """Trace output in one run, annotation in another (trace_meta.json names it)."""
    import json

    from sccircuits.rundir import RunDir

    ann = write_run(tmp_path / "ann", _edges().iloc[:0], TOP)
    rd = RunDir(tmp_path / "traced")
    rd.begin_stage("trace", {})
    (rd / "trace").mkdir()
    write_run(tmp_path / "tmp", _edges(), {})  # reuse the edge-table defaults
    (tmp_path / "tmp/trace/edges.parquet").rename(rd / "trace/edges.parquet")
    (rd / "trace/trace_meta.json").write_text(json.dumps({"annotation": str(ann)}))
    rd.complete_stage("trace")
    pred = predict_genes(rd.path, PredictConfig(min_edges=1), progress=False)
    assert _row(pred, "A", "C").n_edges == 2


def test_novel_flags_from_the_runs_analysis_output(tmp_path):
    from sccircuits.rundir import RunDir

    e = _edges(source_label_id=["GO:1", "GO:1"], target_label_id=["GO:2", "GO:3"])
    run = write_run(tmp_path / "r1", e, TOP)
    rd = RunDir(run, create=False)
    rd.begin_stage("analyze", {})
    (rd / "analysis").mkdir()
    pd.DataFrame({"edge_set": "all", "source_domain": ["GO:1", "GO:1"], "target_domain": ["GO:2", "GO:3"],
                  "novel": [True, False]}).to_parquet(rd / "analysis/novel_pairs.parquet")
    rd.complete_stage("analyze")
    pred = predict_genes(run, PredictConfig(min_edges=1), progress=False)
    assert _row(pred, "A", "D").novel  # only from the GO:1 -> GO:2 edge
    assert not _row(pred, "B", "A").novel  # only from the GO:1 -> GO:3 edge
    assert _row(pred, "A", "C").n_novel_edges == 1
    off = predict_genes(run, PredictConfig(min_edges=1, auto_novel=False), progress=False)
    assert "novel" not in off.columns
