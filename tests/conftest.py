"""Shared fixtures: tiny random models of both kinds and small synthetic count data.

Model fixtures are session-scoped (built once per test run) and written in the real on-disk
formats, so tests go through the same loaders as real checkpoints.
"""

from __future__ import annotations

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
