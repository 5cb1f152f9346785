"""analyze / compare end to end on tiny constructed run directories (issue 7)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sccircuits.analysis import AnalyzeConfig, CompareConfig, analyze, compare
from sccircuits.cli import app
from sccircuits.errors import InputError
from sccircuits.rundir import RunDir

# domain -> (name, genes)
DOMAINS = {
    "GO:1": ("T cell activation", ["CD3E", "CD2", "LCK", "ZAP70"]),
    "GO:2": ("apoptotic process", ["BAX", "BCL2", "CASP3", "LCK"]),
    "GO:3": ("translation", ["RPL3", "RPL4", "EEF1A1"]),
    "GO:4": ("kidney development", ["PAX2", "PAX8", "WT1"]),
    "GO:5": ("RNA splicing", ["SF3B1", "SRSF1", "U2AF1"]),
    "GO:6": ("insulin secretion", ["INS", "GCK", "ABCC8"]),
}


def fake_run(path, model: str, edges: list[tuple], labels: dict[tuple[int, int], str], annotate: bool = True) -> RunDir:
    """A run dir with trace/edges.parquet and (optionally) annotation tables.

    ``edges``: (source_layer, source_feature, target_layer, target_feature, d, in_cap);
    ``labels``: (layer, feature) -> domain id (absent = unannotated). A labelled feature's
    significant GO terms are {its domain, and a private term}, so edges between features of the
    same domain are coherent.
    """
    run = RunDir(path)
    rows = []
    for sl, sf, tl, tf, d, cap in edges:
        s, t = labels.get((sl, sf)), labels.get((tl, tf))
        rows.append({"model": model, "source_layer": sl, "source_feature": sf,
                     "source_label": DOMAINS[s][0] if s else "unannotated", "source_label_id": s,
                     "target_layer": tl, "target_feature": tf,
                     "target_label": DOMAINS[t][0] if t else "unannotated", "target_label_id": t,
                     "n_cells": 30, "mean_delta": d / 10, "sd_delta": 0.1, "cohens_d": d, "consistency": 0.9,
                     "consistency_nonzero": 0.9, "p_value": 1e-3, "q_value": 1e-2, "in_cap": cap})
    run.begin_stage("trace", {})
    (run / "trace").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(run / "trace/edges.parquet")
    run.complete_stage("trace", outputs=["trace/edges.parquet"])
    if annotate:
        run.begin_stage("annotate", {})
        (run / "annotation").mkdir(exist_ok=True)
        layers = sorted({l for l, _ in labels} | {e[0] for e in edges} | {e[2] for e in edges})
        for layer in layers:
            feats = sorted({f for (l, f) in labels if l == layer} | {e[1] for e in edges if e[0] == layer}
                           | {e[3] for e in edges if e[2] == layer})
            cat, enr = [], []
            for f in feats:
                dom = labels.get((layer, f))
                cat.append({"feature": f, "fire_count": 10, "activation_freq": 0.1, "mean_activation": 1.0,
                            "top_genes": DOMAINS[dom][1] if dom else ["X"], "top_gene_tokens": [1],
                            "label_id": dom, "label_name": DOMAINS[dom][0] if dom else "unannotated",
                            "label_q": 0.001 if dom else None})
                if dom:
                    for term in (dom, f"PRIV:{layer}:{f}"):
                        enr.append({"feature": f, "library": "go_bp", "term_id": term, "term_name": term,
                                    "overlap": 3, "set_size": 20, "term_size": 50, "background_size": 1000,
                                    "odds_ratio": 5.0, "p_value": 1e-4, "q_value": 1e-3, "overlap_genes": ["A"]})
                    enr.append({"feature": f, "library": "STRING", "term_id": "STRING", "term_name": "string",
                                "overlap": 3, "set_size": 20, "term_size": 50, "background_size": 1000,
                                "odds_ratio": 5.0, "p_value": 1e-4, "q_value": 1e-3, "overlap_genes": ["A"]})
            pd.DataFrame(cat).to_parquet(run / f"annotation/layer{layer:02d}_catalog.parquet")
            pd.DataFrame(enr).to_parquet(run / f"annotation/layer{layer:02d}_enrichment.parquet")
        run.complete_stage("annotate", outputs=["annotation/"])
    return run


def _circuit(pairs: list[tuple[str, str]], n_rep: int = 5, d: float = -1.5, seed: int = 0):
    """Edges realising each domain pair ``n_rep`` times between layer-0 and layer-2 features, plus
    unannotated noise edges. Returns (edges, labels)."""
    rng = np.random.default_rng(seed)
    labels, edges, f = {}, [], 0
    for s, t in pairs:
        for r in range(n_rep):
            labels[(0, f)] = s
            labels[(2, f)] = t
            edges.append((0, f, 2, f, float(d * (1 + 0.1 * rng.random())), r < 3))
            f += 1
    edges.append((0, 999, 1, 998, 0.7, True))  # unannotated ends
    edges.append((0, 0, 1, 5, 2.5, True))
    return edges, labels


PAIRS_A = [("GO:1", "GO:1"), ("GO:1", "GO:2"), ("GO:3", "GO:3"), ("GO:4", "GO:2")]
PAIRS_B = [("GO:1", "GO:2"), ("GO:3", "GO:3"), ("GO:5", "GO:6")]


@pytest.fixture
def runs(tmp_path):
    ea, la = _circuit(PAIRS_A, seed=1)
    eb, lb = _circuit(PAIRS_B, d=1.2, seed=2)
    a = fake_run(tmp_path / "gf_k562", "geneformer", ea, la)
    b = fake_run(tmp_path / "scgpt_ts", "scgpt", eb, lb)
    return a, b


def test_analyze_writes_outputs_and_records_the_stage(runs):
    a, _ = runs
    s = analyze(a, AnalyzeConfig(n_perm=99, seed=0, progress=False))
    assert a.is_complete("analyze")
    for name in ("summary.json", "attenuation.parquet", "hubs.parquet", "coherence_null.parquet",
                 "domain_pairs.parquet", "hierarchy.parquet", "novel_pairs.parquet", "circuit.graphml"):
        assert (a / "analysis" / name).is_file(), name
    assert json.loads((a / "analysis/summary.json").read_text())["all"]["n_edges"] == 22
    al, cap = s["all"], s["capped"]
    assert al["n_edges"] == 22 and cap["n_edges"] == 4 * 3 + 2
    assert al["sign_balance"]["d_negative"]["n"] == 20
    c = al["coherence"]
    # 20 annotated edges, each between features sharing their domain term only when s == t:
    # GO:1->GO:1 and GO:3->GO:3 (10 edges) are coherent, GO:1->GO:2 and GO:4->GO:2 are not
    assert c["n_edges_annotated"] == 20 and c["n_coherent"] == 10 and c["coherence"] == 0.5
    assert 1 / 100 <= c["p_value"] <= 1
    # features of the same domain have the same top genes here: the 10 coherent edges are all
    # 'persistent' (a feature carried forward) and leave the headline coherence at 0
    w = al["coherence_without_persistence"]
    # (11 persistent edges: the 10 plus one between two unannotated features whose only top gene is 'X')
    assert w["persistence"]["n_edges_persistent"] == 11 and w["persistence"]["n_edges_annotated"] == 10
    assert w["persistence"]["coherence"] == 1.0
    assert w["n_edges_annotated"] == 10 and w["n_coherent"] == 0 and w["p_value"] == 1.0
    assert set(pd.read_parquet(a / "analysis/coherence_null.parquet")["edges"]) == {"all", "non_persistent"}
    assert al["n_domain_pairs"] == 4
    assert s["n_layers"] == 3 and s["n_layers_from"] == "inferred"
    att = pd.read_parquet(a / "analysis/attenuation.parquet")
    assert set(att["edge_set"]) == {"all", "capped"}
    g = nx.read_graphml(a / "analysis/circuit.graphml")
    assert g.number_of_edges() == 22
    assert a.stage("analyze")["config"]["n_perm"] == 99


def test_analyze_without_annotation_reports_why(tmp_path):
    e, l = _circuit(PAIRS_B)
    run = fake_run(tmp_path / "r", "scgpt", e, l, annotate=False)
    s = analyze(run, AnalyzeConfig(n_perm=10, progress=False, graphml=False))
    assert s["all"]["coherence"]["coherence"] is None and "annotate" in s["all"]["coherence"]["reason"]
    assert not (run / "analysis/circuit.graphml").exists()


def test_analyze_input_errors_name_the_file(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(InputError, match="stage 'trace' has not completed"):
        analyze(run)
    run.begin_stage("trace", {})
    (run / "trace").mkdir()
    pd.DataFrame({"source_layer": [0]}).to_parquet(run / "trace/edges.parquet")
    run.complete_stage("trace")
    with pytest.raises(InputError, match=r"edges.parquet: missing column"):
        analyze(run)


def test_compare_consensus_table_and_nulls(runs, tmp_path):
    a, b = runs
    out = tmp_path / "cmp"
    cfg = CompareConfig(n_perm=49, n_rewire=49, n_edge_perm=49, disease_n_perm=49, seed=42,
                        contrasts=["gf_k562:scgpt_ts"], progress=False, analyze=AnalyzeConfig(n_perm=19, progress=False))
    r = compare([a.path, b.path], f"geneformer={a.path};scgpt=scgpt_ts", out, cfg)
    c = r["consensus"]["all"]
    assert c["pairs_per_group"] == {"geneformer": 4, "scgpt": 3}
    assert c["n_consensus"] == 2  # (GO:1, GO:2) and (GO:3, GO:3)
    for null in ("label_permutation_null", "rewiring_null", "edge_permutation_null"):
        assert 1 / 50 <= c[null]["p_value"] <= 1 and c[null]["n_draws"] == 49
    assert c["headline_null"] == "edge_permutation_null"
    # (GO:3, GO:3) is a self pair in both groups: held fixed by the edge permutation, reported apart
    assert c["n_consensus_self_pairs"] == 1 and c["n_consensus_other_pairs"] == 1
    nulls = pd.read_parquet(out / "consensus_null.parquet")
    assert (nulls[nulls["null"] == "edge_permutation"]["size"] >= 1).all()
    cp = pd.read_parquet(out / "consensus_pairs.parquet")
    allp = cp[cp["edge_set"] == "all"]
    assert sorted(zip(allp["source_domain"], allp["target_domain"])) == [("GO:1", "GO:2"), ("GO:3", "GO:3")]
    assert allp["high_confidence"].all()  # mean |d| >= 1.2 in both groups
    t = pd.read_csv(out / "comparison_table.csv")
    assert len(t) == 4 and set(t["condition"]) == {"gf_k562", "scgpt_ts"}
    row = t[(t["condition"] == "scgpt_ts") & (t["edge_set"] == "all")].iloc[0]
    assert row["n_edges"] == 17 and row["pct_d_negative_source_supports_target_paper_inhibitory"] == 0
    assert row["pct_abs_d_gt_1"] == pytest.approx(100 * 16 / 17)
    assert RunDir(out, create=False).is_complete("compare")
    tissue = pd.read_parquet(out / "tissue.parquet")
    assert set(tissue["class"]) == {"immune", "kidney", "lung", "blood", "universal"}
    imm = tissue.set_index("class").loc["immune"]
    # focus gf_k562 pairs: (1,1) immune only-focus, (1,2) immune shared, (3,3) shared, (4,2) kidney only-focus
    assert (imm.focus_only_in_class, imm.shared_in_class) == (1, 1)
    d = pd.read_parquet(out / "disease.parquet").set_index("category")
    assert d.loc["any", "n_pairs"] >= 1
    assert d.loc["any", "degree_null_draws"] == 49 and 0 < d.loc["any", "degree_null_p"] <= 1
    assert (out / "novel_pairs.parquet").is_file() and (out / "hierarchy.parquet").is_file()


def test_compare_groups_errors(runs, tmp_path):
    a, b = runs
    cfg = CompareConfig(n_perm=5, n_rewire=5, edge_sets=["all"], progress=False, analyze=AnalyzeConfig(n_perm=5))
    with pytest.raises(InputError, match="not among the compared runs"):
        compare([a.path, b.path], "x=gf_k562;y=nope", tmp_path / "c", cfg)
    r = compare([a.path, b.path], None, tmp_path / "c2", cfg)  # default: grouped by model
    assert r["groups"] == {"geneformer": ["gf_k562"], "scgpt": ["scgpt_ts"]}


def test_cli_analyze_and_compare(runs, tmp_path):
    a, b = runs
    cli = CliRunner()
    res = cli.invoke(app, ["analyze", "--run", str(a.path), "--permutations", "19"])
    assert res.exit_code == 0, res.output
    assert "d<0 (source supports target; paper: inhibitory)" in res.output and "coherence 50.0%" in res.output
    res = cli.invoke(app, ["compare", str(a.path), str(b.path), "--groups", "gf=gf_k562;sc=scgpt_ts",
                           "--out", str(tmp_path / "cmp"), "--permutations", "9", "--rewirings", "9",
                           "--edge-sets", "all"])
    assert res.exit_code == 0, res.output
    assert "all: 2 consensus pairs" in res.output
    assert (tmp_path / "cmp/compare.json").is_file()


def test_compare_three_runs_two_groups_and_single_group(runs, tmp_path):
    a, b = runs
    ec, lc = _circuit([("GO:4", "GO:2"), ("GO:5", "GO:6")], seed=3)
    c = fake_run(tmp_path / "gf_ts", "geneformer", ec, lc)
    analyze(a, AnalyzeConfig(n_perm=9, progress=False))
    cfg = CompareConfig(n_perm=19, n_rewire=19, edge_sets=["all"], progress=False, analyze=AnalyzeConfig(n_perm=9))
    r = compare([a.path, b.path, c.path], "gf=gf_k562,gf_ts;sc=scgpt_ts", tmp_path / "c3", cfg)
    # geneformer union adds (GO:5, GO:6) from gf_ts: consensus (1,2), (3,3), (5,6)
    assert r["consensus"]["all"]["n_consensus"] == 3
    assert r["summaries_from"]["gf_k562"] == "RUN/analysis/summary.json"
    assert r["summaries_from"]["gf_ts"].startswith("computed")
    r1 = compare([a.path, c.path], "gf=gf_k562,gf_ts", tmp_path / "c1", cfg)
    assert "at least two groups" in r1["consensus"]["all"]["note"]
    assert pd.read_csv(tmp_path / "c1/comparison_table.csv").shape[0] == 4


def test_analyze_novel_relations_from_a_gmt(runs, tmp_path):
    from sccircuits.genesets import write_gmt

    a, _ = runs
    gmt = tmp_path / "domains.gmt"
    write_gmt(gmt, {d: (name, frozenset(genes)) for d, (name, genes) in DOMAINS.items()})
    s = analyze(a, AnalyzeConfig(n_perm=9, gene_sets=str(gmt), progress=False, graphml=False))
    assert s["all"]["novel"]["gene_sets"].startswith("gmt:")
    t = pd.read_parquet(a / "analysis/novel_pairs.parquet").set_index(["source_domain", "target_domain"])
    assert t.loc[("GO:1", "GO:2"), "shared_genes"] == 1  # LCK
    assert bool(t.loc[("GO:1", "GO:2"), "novel_compat"]) and not t.loc[("GO:1", "GO:1"), "novel_compat"]
    assert t.loc[("GO:4", "GO:2"), "shared_genes"] == 0


def test_a_failed_analyze_marks_the_stage_failed_and_frees_the_run(runs, monkeypatch):
    """In a notebook the process lives on after an error: the stage must say 'failed' (not
    'running' forever) and another process must be able to use the run at once."""
    import subprocess
    import sys

    import sccircuits.analysis.pipeline as pipeline

    a, _ = runs

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "summarize", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze(a, AnalyzeConfig(n_perm=9, progress=False))
    assert a.stage("analyze")["status"] == "failed"
    probe = ("import fcntl, sys\nfh = open(sys.argv[1], 'a+')\n"
             "fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n")  # raises if the run is still locked
    subprocess.run([sys.executable, "-c", probe, str(a.path / ".run.lock")], check=True)
    monkeypatch.undo()
    analyze(a, AnalyzeConfig(n_perm=9, progress=False))  # and the same process can rerun it
    assert a.is_complete("analyze")
