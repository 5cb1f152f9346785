"""``--compat reference`` tracer: "active" is membership of the SAE's top-k support, as published.

Published: bio-sae-circuits ``src/13_causal_circuit_tracing.py`` L646 encodes the source layer,
L655 ``active_mask = (topk_indices == fi).any(dim=1)``, and ``src/sae_model.py`` L64-65 takes
the top-k *before* the ReLU, so a feature whose top-k value is negative (code 0) is still
"active": the cell is observed (L659 counts it) and the position enters the mean (L688-707).
"""

from __future__ import annotations

import pytest
import torch

from naive_reference import assert_same_edges, naive_edges, naive_observations
from trace_helpers import random_saes, write_cells, write_saes
from sccircuits.models import load_model
from sccircuits.sae import load_saes
from sccircuits.trace import trace

DEAD = 5  # a source feature whose code is always 0 but which is always in the top-k support


@pytest.fixture(scope="module")
def support_inputs(tmp_path_factory):
    """Layer-0 SAE with k = d_sae (every feature is in the support at every position) and feature
    DEAD pushed to a pre-activation of about -100 (its ReLU'd code is 0 everywhere)."""
    root = tmp_path_factory.mktemp("support_inputs")
    saes = random_saes([0, 1, 2, 3], d_in=32, d_sae=64, k=8, seed=3)
    full = random_saes([0], d_in=32, d_sae=64, k=64, seed=3)[0]
    with torch.no_grad():
        full.b_enc[DEAD] = -100.0
    saes[0] = full
    return {"cells": write_cells(root / "cells.h5ad", n_cells=12), "saes": write_saes(saes, root / "saes", layout="bio")}


def test_support_only_feature_is_active_in_every_cell_under_compat(support_inputs, tiny_geneformer, tmp_path):
    """Hand-computed: feature DEAD has code 0 at every position, yet with k = d_sae it is in the
    top-k support everywhere. Published (L655-659): active in all 6 cells, one observation per
    cell, each exactly 0 (ablating a zero code changes nothing), so d = 0 / max(0, 1e-10) = 0
    and no edge (L228, L756). Default (z > 0): active in no cell."""
    common = dict(model=tiny_geneformer, data=support_inputs["cells"], saes=support_inputs["saes"],
                  features=f"0:{DEAD},1", n_cells=6, batch_size=4, null_ablation=False, progress=False)
    ref = trace(out=tmp_path / "ref", compat="reference", **common)
    ours = trace(out=tmp_path / "ours", **common)
    f_ref = ref.features[ref.features.source_feature == DEAD]
    f_our = ours.features[ours.features.source_feature == DEAD]
    assert set(f_ref["cells_active"]) == {6}
    assert set(f_our["cells_active"]) == {0}
    assert not (ref.edges.source_feature == DEAD).any()
    # feature 1 fires (z > 0) at some positions only, but is in the support at all of them: the
    # published mean runs over every gene position, so every test of it has all 6 cells
    e1 = ref.edges[ref.edges.source_feature == 1]
    assert len(e1) > 0 and set(e1["n_cells"]) == {6}


def test_compat_support_rule_matches_naive_published_loop(support_inputs, tiny_geneformer, tmp_path):
    """With positions in the support at code 0 (k = d_sae at layer 0), the tracer's compat edges
    equal the naive published loop's (tests/naive_reference.py, which follows L646-708)."""
    from sccircuits.data import read_cells

    res = trace(model=tiny_geneformer, data=support_inputs["cells"], saes=support_inputs["saes"], out=tmp_path / "run",
                compat="reference", features=f"0:1,2,{DEAD}", n_cells=6, batch_size=5, null_ablation=False,
                progress=False)
    adapter = load_model(tiny_geneformer)
    cells = adapter.tokenize(read_cells(support_inputs["cells"])[:6].copy(), mode="reference")
    obs = naive_observations(adapter, load_saes(support_inputs["saes"]), cells, {0: [1, 2, DEAD]})
    ref = naive_edges(obs, top_n=50, min_cells=2)
    ours = res.edges[res.edges.in_cap].reset_index(drop=True)
    assert len(ref) > 10
    assert_same_edges(ours, ref)
