"""benchmarks/edge_criteria.py: the per-threshold real vs null table of both criteria and both
models of a demo-like directory (one run dir per model), as pasted into docs/demo-run.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trace_helpers import random_saes, write_cells, write_saes

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
    assert len(rows) == 8 and sum(k.startswith("published") for k in rows) == 4
    assert sum(k.startswith("null") for k in rows) == 4
    for i, name in enumerate(("geneformer", "scgpt")):
        e = results[name].edges
        # the run's own thresholds: the published rule at |d| > 0.5 is its uncapped published set,
        # and the null criterion at BH 0.05 is its default edge set
        assert int(rows[r"published, \|d\| > 0.5"][3 * i]) == int(e["passes_published"].sum())
        assert int(rows["null, BH 0.05"][3 * i]) == int(e["passes_null"].sum())
        assert float(rows["null, BH 0.05"][3 * i + 1]) == pytest.approx(
            float(results[name].null["expected_false_null"].sum()), abs=0.05)
    # a run directory given directly works too
    assert ec.table([path / "scgpt"]).splitlines()[0].count("scgpt:") == 3
