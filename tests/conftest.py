"""Shared fixtures: tiny random models of both kinds and small synthetic count data.

Model fixtures are session-scoped (built once per test run) and written in the real on-disk
formats, so tests go through the same loaders as real checkpoints.
"""

from __future__ import annotations

import numpy as np
import pytest

from sccircuits.models import testing


@pytest.fixture
def tiny_adata():
    """24 cells x 60 genes of raw counts (Ensembl var_names, symbols in var['gene_symbols'])."""
    return testing.make_synthetic_adata(n_cells=24, n_genes=60, seed=0)


@pytest.fixture(scope="session")
def tiny_geneformer(tmp_path_factory):
    """Path of a 4-layer, d_model 32 Geneformer-V2-style BertForMaskedLM dir covering the 60 genes."""
    path = tmp_path_factory.mktemp("geneformer")
    testing.make_tiny_geneformer(path, n_genes=60, n_layers=4, d_model=32, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_scgpt(tmp_path_factory):
    """Path of a 4-layer, d_model 32 scGPT-style dir (args.json, vocab.json, best_model.pt)."""
    path = tmp_path_factory.mktemp("scgpt")
    testing.make_tiny_scgpt(path, n_genes=60, n_layers=4, d_model=32, seed=0)
    return path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Two conditions (tiny Geneformer and scGPT) through every stage, plus a comparison:
    (output folder, [run dirs]). Tests only read the runs."""
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
        trace(run, config=TraceConfig(source_layers=[0, 1], n_features=3, n_cells=16, selection="frequency"),
              progress=False)
        analyze(run, AnalyzeConfig(n_perm=20))
        runs.append(run)
    compare(runs, groups=f"geneformer={runs[0]};scgpt={runs[1]}", out=out / "cmp",
            cfg=CompareConfig(n_perm=20, n_rewire=20))
    return out, runs
