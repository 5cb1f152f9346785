"""Tiny models and data for tests, benchmarks and examples (random weights, nothing downloaded).

``make_synthetic_adata`` lives here; ``make_tiny_geneformer`` and ``make_tiny_scgpt`` write a
small checkpoint directory in the real on-disk format of each model so that it loads through
:func:`sccircuits.models.load_model` exactly like a real one.
"""

from __future__ import annotations

import numpy as np


def gene_ids(n: int) -> list[str]:
    """Ensembl-style ids ENSG00000000001, ... used by the synthetic data."""
    return [f"ENSG{i:011d}" for i in range(1, n + 1)]


def gene_symbols(n: int) -> list[str]:
    """Symbols GENE1, GENE2, ... matching :func:`gene_ids` one to one."""
    return [f"GENE{i}" for i in range(1, n + 1)]


def make_synthetic_adata(n_cells: int = 24, n_genes: int = 60, seed: int = 0, n_types: int = 3):
    """Raw integer counts with a few cell types (type-specific programmes), Ensembl ids as
    var_names, symbols in ``var['gene_symbols']``, type labels in ``obs['cell_type']``."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 2.0, size=n_genes)
    programmes = rng.gamma(0.5, 3.0, size=(n_types, n_genes)) * (rng.random((n_types, n_genes)) < 0.3)
    types = rng.integers(0, n_types, size=n_cells)
    size = rng.lognormal(0.0, 0.3, size=n_cells)[:, None]
    mu = (base[None, :] + programmes[types]) * size
    counts = rng.poisson(mu).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1.0  # no empty cells
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame({"gene_symbols": gene_symbols(n_genes)}, index=gene_ids(n_genes))
    return ad.AnnData(X=counts, obs=obs, var=var)
