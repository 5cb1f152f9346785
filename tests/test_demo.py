"""A reduced demo, end to end on the shipped demo models and PBMC cells (what a newcomer runs first)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sccircuits.demo import DemoConfig, run_demo


def test_reduced_demo_end_to_end_and_rerun_reuses_stages(tmp_path, capsys):
    cfg = DemoConfig(n_cells=80, trace_cells=8, n_features=2, sae_epochs=1, n_perm=10)
    report = run_demo(tmp_path, cfg, progress=False)
    assert report == tmp_path / "report.html" and report.is_file()
    page = report.read_text()
    for kind in ("geneformer", "scgpt"):
        m = json.loads((tmp_path / kind / "manifest.json").read_text())
        for stage in ("extract", "train-sae", "annotate", "trace", "analyze", "celltypes"):
            assert m["stages"][stage]["status"] == "complete", (kind, stage)
        edges = pd.read_parquet(tmp_path / kind / "trace" / "edges.parquet")
        assert m["stages"]["trace"]["config"]["n_cells"] == 8
        assert f"<td>{kind}</td>" in page and f"<td>{len(edges)}</td>" in page
    assert (tmp_path / "compare" / "comparison_table.parquet").is_file()
    assert "Cross-model comparison" in page
    assert "atlas-data" in (tmp_path / "atlas.html").read_text()  # the atlas beside the report
    from sccircuits.artifacts import read_demo_timings

    timings = read_demo_timings(tmp_path)  # wall and CPU seconds of every step that ran
    steps = {f"{k}/{s}" for k in ("geneformer", "scgpt") for s in ("extract", "train-sae", "annotate", "trace",
                                                                    "analyze", "celltypes")}
    assert steps | {"write data", "compare", "report", "atlas"} <= set(timings)
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in timings.values())
    assert sum(t["cpu_s"] for t in timings.values()) > 0

    capsys.readouterr()
    run_demo(tmp_path, cfg, progress=False)  # second run: every per-model stage is reused
    err = capsys.readouterr().err
    assert err.count("already done, reused") == 12  # 6 stages x 2 models


def test_demo_twice_gives_byte_identical_edge_tables(tmp_path):
    """Two demo runs from scratch in two directories: the same edge and null tables, byte for byte."""
    cfg = DemoConfig(models="geneformer", n_cells=40, trace_cells=6, n_features=2, sae_epochs=1, n_perm=10)
    for d in ("a", "b"):
        run_demo(tmp_path / d, cfg, progress=False)
    for name in ("trace/edges.parquet", "trace/null.parquet", "celltypes/kruskal.parquet"):
        a = (tmp_path / "a" / "geneformer" / name).read_bytes()
        assert a == (tmp_path / "b" / "geneformer" / name).read_bytes(), name
    assert len(pd.read_parquet(tmp_path / "a" / "geneformer" / "trace" / "edges.parquet")) > 0


def test_demo_config_rejects_unknown_model():
    from sccircuits.errors import ConfigError

    with pytest.raises(ConfigError, match="models must list"):
        DemoConfig(models="bert")
    with pytest.raises(ConfigError, match="data must be one of"):
        DemoConfig(data="lung")
