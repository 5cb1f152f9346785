"""The HTML report: built from a real (tiny) pipeline run, its numbers match the run's tables,
it is self-contained, and headless Chromium shows it without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sccircuits.models import testing


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two conditions (tiny Geneformer and scGPT) through every stage, plus a comparison."""
    from sccircuits.activations import ExtractConfig, extract
    from sccircuits.analysis import AnalyzeConfig, CompareConfig, analyze, compare
    from sccircuits.annotate import AnnotateConfig, annotate
    from sccircuits.genesets import write_gmt
    from sccircuits.sae import SAETrainConfig, train_saes
    from sccircuits.trace import TraceConfig, trace

    out = tmp_path_factory.mktemp("pipeline")
    testing.make_synthetic_adata(n_cells=40, n_genes=60, seed=1).write_h5ad(out / "cells.h5ad")
    rng = np.random.default_rng(0)
    syms = testing.gene_symbols(60)
    sets = {f"GO:{i:07d}": (f"process {i}", frozenset(rng.choice(syms, size=int(rng.integers(5, 20)), replace=False)))
            for i in range(40)}
    write_gmt(out / "go_bp.gmt", sets)
    testing.make_tiny_geneformer(out / "gf", n_genes=60, n_layers=4, d_model=32, seed=0)
    testing.make_tiny_scgpt(out / "sg", n_genes=60, n_layers=4, d_model=32, seed=0)
    runs = []
    for name, model, gene_column in (("gf_run", out / "gf", None), ("sg_run", out / "sg", "gene_symbols")):
        run = out / name
        extract(run, model, out / "cells.h5ad", ExtractConfig(dtype="float32", gene_column=gene_column), progress=False)
        train_saes(run, SAETrainConfig(expansion=2, k=4, epochs=2, batch_size=256), progress=False)
        annotate(run, [out / "go_bp.gmt"], AnnotateConfig(min_count=2), progress=False)
        trace(run, config=TraceConfig(source_layers=[0, 1], n_features=3, n_cells=16, selection="frequency",
                                      criterion="published"), progress=False)
        analyze(run, AnalyzeConfig(n_perm=20))
        runs.append(run)
    compare(runs, groups=f"geneformer={runs[0]};scgpt={runs[1]}", out=out / "cmp",
            cfg=CompareConfig(n_perm=20, n_rewire=20))
    return out, runs


def test_report_numbers_match_tables(pipeline):
    from sccircuits.report import build_report

    out, runs = pipeline
    path = build_report(runs, compare=out / "cmp", out=out / "report.html")
    page = path.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 3  # d distribution, SAE quality, attenuation
    for run in runs:
        edges = pd.read_parquet(run / "trace" / "edges.parquet")
        edges = edges[edges["edge"]]  # the trace's edge set (here the published capped set)
        # the edge summary row of this run: edges, mean |d|, % d<0 computed from edges.parquet
        row = re.search(rf"<td>{run.name}</td>\s*<td>([\d.]+)</td>\s*<td>[\d.]+</td>\s*<td>([\d.]+)</td>"
                        rf"\s*<td>[\d.]+</td>\s*<td>([\d.]+)</td>", page)
        assert row, f"edge summary of {run.name} missing"
        assert float(row.group(1)) == len(edges)
        assert float(row.group(2)) == pytest.approx(edges.cohens_d.abs().mean(), abs=6e-4)
        assert float(row.group(3)) == pytest.approx(100 * (edges.cohens_d < 0).mean(), abs=0.06)
    assert "Cross-model comparison" in page
    assert page.count("real vs null |d| of") == 2  # both runs traced with the null ablation


def test_report_needs_a_run(tmp_path):
    from sccircuits.errors import InputError
    from sccircuits.report import build_report

    with pytest.raises(InputError, match="no manifest.json"):
        build_report([tmp_path / "missing"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _console_messages(browser: str, page: Path, tmp: Path) -> list[str]:
    """Console lines Chromium logs while loading ``page`` headless."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<body" in proc.stdout, "Chromium did not render the page"
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package 'chromium')")
def test_report_loads_in_chromium_without_console_errors(pipeline, tmp_path):
    from sccircuits.report import build_report

    out, runs = pipeline
    path = build_report(runs, compare=out / "cmp", out=tmp_path / "report.html")
    broken = tmp_path / "broken.html"  # positive control: the check does see console errors
    broken.write_text("<html><body><script>console.error('planted')</script></body></html>")
    assert any("planted" in m for m in _console_messages(_chromium(), broken, tmp_path))
    assert _console_messages(_chromium(), path, tmp_path) == []
