"""benchmarks/edge_criteria.py: the per-threshold real vs null table of both criteria and both
models of a demo-like directory (one run dir per model), as pasted into docs/demo-run.md."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from trace_helpers import random_saes, write_cells, write_saes

from sccircuits.trace import Accumulators, Thresholds, TraceConfig
from sccircuits.trace.edges import build_tables

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("edge_criteria", ROOT / "benchmarks" / "edge_criteria.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo_dir(tiny_geneformer, tiny_scgpt, tmp_path_factory):
    from sccircuits.trace import trace

    root = tmp_path_factory.mktemp("demo")
    cells = write_cells(root / "cells.h5ad", n_cells=12)
    saes = write_saes(random_saes([0, 2], d_in=32, d_sae=64, k=8, seed=3), root / "saes")
    results = {}
    for name, model in (("geneformer", tiny_geneformer), ("scgpt", tiny_scgpt)):
        opts = {} if name == "geneformer" else {"gene_column": "gene_symbols"}
        results[name] = trace(model=model, data=cells, saes=saes, out=root / "demo" / name, n_cells=12,
                              features="0:2,5,9,12,19,25,28,31", progress=False, **opts)
    return root / "demo", results


def test_one_table_both_models_both_criteria(demo_dir):
    path, results = demo_dir
    ec = _load_script()
    runs = ec.find_runs([str(path)])
    assert [r.name for r in runs] == ["geneformer", "scgpt"]
    lines = ec.table(runs).splitlines()
    assert "geneformer: real" in lines[0] and "scgpt: est. FDR" in lines[0]
    rows = {l.split(" | ")[0].lstrip("| "): l.strip("| ").split(" | ")[1:] for l in lines[2:]}
    assert len(rows) == 10 and sum(k.startswith("published") for k in rows) == 4
    assert sum(k.startswith(("null, BH", "null, run's BH")) for k in rows) == 4
    decoy_rows = {"decoy": "null, target-decoy at FDR 0.05", "decoy_plus": "null, target-decoy+ at FDR 0.05"}
    assert set(decoy_rows.values()) <= set(rows)
    for i, name in enumerate(("geneformer", "scgpt")):
        e = results[name].edges
        # the run's own thresholds: the published rule at |d| > 0.5 is its uncapped published set,
        # and the null criterion at BH 0.05 is its default edge set
        assert int(rows[r"published, \|d\| > 0.5"][3 * i]) == int(e["passes_published"].sum())
        assert int(rows["null, BH 0.05"][3 * i]) == int(e["passes_null"].sum())
        assert float(rows["null, BH 0.05"][3 * i + 1]) == pytest.approx(
            float(results[name].null["expected_false_null"].sum()), abs=0.05)
        # the target-decoy rows: the null criterion's edges with that cut at the run's FDR (0.05)
        acc, _ = Accumulators.load(path / name / "trace" / "accumulators.npz")
        for cut, label in decoy_rows.items():
            th = replace(Thresholds.from_config(TraceConfig()), threshold=cut)
            edges, _, null = build_tables(acc, th, name)
            assert int(rows[label][3 * i]) == int(edges["passes_null"].sum()), (name, cut)
            assert float(rows[label][3 * i + 1]) == pytest.approx(float(null["expected_false_null"].sum()), abs=0.05)
    # a run directory given directly works too
    assert ec.table([path / "scgpt"]).splitlines()[0].count("scgpt:") == 3


def test_decoy_rows_follow_the_runs_fdr(demo_dir, monkeypatch):
    """The target-decoy rows use the run's FDR level: at a loose one (0.9) the random tiny model
    keeps edges with the decoy cut (so the comparison is not 0 == 0), each row as build_tables."""
    path, _ = demo_dir
    ec = _load_script()
    own = ec.base_thresholds
    monkeypatch.setattr(ec, "base_thresholds", lambda run: replace(own(run), fdr=0.9))
    rows = {r["criterion"]: r for r in ec.rows_for(path / "geneformer")}
    acc, _ = Accumulators.load(path / "geneformer" / "trace" / "accumulators.npz")
    kept = {}
    for cut, label in (("decoy", "null, target-decoy at FDR 0.9"), ("decoy_plus", "null, target-decoy+ at FDR 0.9")):
        edges, _, null = build_tables(acc, replace(Thresholds.from_config(TraceConfig()), threshold=cut, fdr=0.9),
                                      "geneformer")
        kept[cut] = rows[label]["real"]
        assert kept[cut] == int(edges["passes_null"].sum()), cut
        assert rows[label]["null_scaled"] == pytest.approx(float(null["expected_false_null"].sum()), abs=0.05)
    assert kept["decoy"] > 0 and kept["decoy_plus"] <= kept["decoy"]  # decoy+ counts one null pass more


def test_bh_rows_use_bh_when_the_run_used_a_decoy_cut(demo_dir, monkeypatch):
    path, results = demo_dir
    ec = _load_script()
    own = ec.base_thresholds
    monkeypatch.setattr(ec, "base_thresholds", lambda run: replace(own(run), threshold="decoy"))
    rows = {r["criterion"]: r for r in ec.rows_for(path / "geneformer")}
    assert rows["null, BH 0.05"]["real"] == int(results["geneformer"].edges["passes_null"].sum())  # (BH, the default)
