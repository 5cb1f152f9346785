"""Planted circuits' generic units (sccircuits.models.planted, docs/planted-circuits.md): a channel
of non-edge effects that does not go through LayerNorm. Off by default (the planted parts are drawn
exactly as without it); on, every source moves every target a little (more for the sensitive
targets), the clean stream is unchanged on average, and the planted edges stay detectable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

SIZES = dict(n_cells=30, n_genes=60, d_model=96, n_source_dict=20, n_traced=10, n_planted=5, n_targets=12,
             strengths=(0.3, 1.0), seed=1)


def _ffn(pc, kind):
    from sccircuits.models.planted import _layer_names

    if kind == "geneformer":
        from transformers import BertForMaskedLM

        state = BertForMaskedLM.from_pretrained(pc.model).state_dict()
    else:
        state = torch.load(pc.model / "best_model.pt", map_location="cpu", weights_only=True)
    names = _layer_names(kind, pc.source_layer + 1)
    return {k: state[names[k]].numpy() for k in ("ff1_w", "ff1_b", "ff2_w", "ff2_b")}


def _block_outputs(pc, layer):
    from sccircuits.data import read_cells
    from sccircuits.models import load_model

    ad = load_model(pc.model)
    cells = ad.tokenize(read_cells(pc.data), **({"gene_column": pc.gene_column} if pc.gene_column else {}))
    with torch.inference_mode():
        b = ad.batch(cells, list(range(len(cells))))
        return ad.hidden_states(b, [layer])[layer][b.gene_mask].double().numpy()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same planted geneformer circuit without and with 32 generic units, both traced with live
    LayerNorms; and the one with generic units traced with frozen LayerNorms too ("32f")."""
    from sccircuits.models.planted import make_planted
    from sccircuits.trace import trace

    root = tmp_path_factory.mktemp("planted")
    out = {}
    for n in (0, 32):
        pc = make_planted(root / f"g{n}", "geneformer", generic_units=n, **SIZES)
        res = trace(model=pc.model, data=pc.data, saes=pc.saes, out=root / f"g{n}" / "run", n_cells=30,
                    features=pc.features_spec(), progress=False, layernorm="live")
        out[n] = (pc, res.edges)
    res = trace(model=pc.model, data=pc.data, saes=pc.saes, out=root / "g32" / "run_frozen", n_cells=30,
                features=pc.features_spec(), progress=False, layernorm="frozen")
    out["32f"] = (pc, res.edges)
    return out


def test_generic_units_off_by_default_and_planted_parts_unchanged(pair):
    (pc0, _), (pc32, _) = pair[0], pair[32]
    assert pc0.generic is None and pc32.generic is not None and len(pc32.generic.read) == 32
    assert pc0.truth.equals(pc32.truth)  # the generic units have their own generator
    a, b = _ffn(pc0, "geneformer"), _ffn(pc32, "geneformer")
    n = len(pc0.truth)
    np.testing.assert_array_equal(a["ff1_w"][:n], b["ff1_w"][:n])
    np.testing.assert_array_equal(a["ff2_w"][:, :n], b["ff2_w"][:, :n])
    assert not a["ff1_w"][n:].any() and not a["ff2_w"][:, n:].any()  # without: no other unit
    assert np.abs(b["ff2_w"][:, n:n + 32]).sum(0).min() > 0  # with: 32 live units writing
    for f in ("layer01", "layer03"):  # SAEs identical
        for p in (pc0.saes / f).iterdir():
            assert p.read_bytes() == (pc32.saes / f / p.name).read_bytes()
    g = pc32.generic  # read directions dense, mean-zero, unit; writes only onto target directions
    np.testing.assert_allclose(g.read.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(g.read, axis=1), 1)
    assert (np.abs(g.read) > 1e-3).mean() > 0.95
    assert g.sensitivity.max() / g.sensitivity.min() > 5  # some targets far more sensitive


def test_generic_units_leave_clean_stream_unchanged_on_average(pair):
    (pc0, _), (pc32, _) = pair[0], pair[32]
    h = _block_outputs(pc0, pc0.source_layer)  # the same in both models (blocks <= s untouched)
    np.testing.assert_allclose(_block_outputs(pc32, pc32.source_layer), h, atol=1e-5)
    x = (h - h.mean(1, keepdims=True)) / h.std(1, keepdims=True)  # block s + 1's plain LayerNorm

    def ffn(w):
        return np.maximum(x @ w["ff1_w"].T + w["ff1_b"], 0.0) @ w["ff2_w"].T + w["ff2_b"]

    diff = ffn(_ffn(pc32, "geneformer")) - ffn(_ffn(pc0, "geneformer"))
    per_position = np.linalg.norm(diff, axis=1).mean()
    assert per_position > 0.5  # the units are live at the clean positions
    # their mean output is removed (left in, its norm would be about that of the per-position change)
    assert np.linalg.norm(diff.mean(0)) < 1e-3 * per_position
    g = pc32.generic
    assert np.linalg.norm(g.mean_output @ g.write) > 0.5 * per_position
    # after block s + 1's output LayerNorm the mean moves a little (the LayerNorm is not linear)
    y = _block_outputs(pc32, pc32.source_layer + 1) - _block_outputs(pc0, pc0.source_layer + 1)
    assert np.linalg.norm(y.mean(0)) < 0.2 * np.linalg.norm(y, axis=1).mean()


def test_generic_units_move_every_target_but_planted_edges_survive(pair):
    from sccircuits.models.planted import score_edges

    (pc0, e0), (pc32, e32) = pair[0], pair[32]
    planted = set(pc0.truth["source_feature"])

    def no_path(e):
        return e[~e["source_feature"].isin(planted)]

    m0, m32 = no_path(e0)["mean_delta"].abs().mean(), no_path(e32)["mean_delta"].abs().mean()
    assert m32 > 4 * m0  # a no-path source moves targets several times more than LayerNorm alone
    # popularity: the sensitive targets move most under no-path ablations
    per_target = no_path(e32).groupby("target_feature")["mean_delta"].apply(lambda d: d.abs().mean())
    rho = np.corrcoef(np.argsort(np.argsort(per_target.to_numpy())),
                      np.argsort(np.argsort(pc32.generic.sensitivity[per_target.index])))[0, 1]
    assert rho > 0.5
    pub0 = score_edges(e0, pc0.truth, 10, 12, "passes_published")
    pub32 = score_edges(e32, pc32.truth, 10, 12, "passes_published")
    assert pub32["false_positives"] > 20 and pub32["recall"] >= 0.9 and pub0["recall"] >= 0.9
    ours = score_edges(e32, pc32.truth, 10, 12, "edge")
    assert ours["recall"] >= 0.6 and ours["sign_accuracy"] == 1.0


def test_generic_units_still_fool_the_published_rule_with_frozen_layernorms(pair):
    """Frozen LayerNorms remove the LayerNorm channel, not the generic units: the benchmark stays
    a test of the null (no-path sources still move targets, the published rule still passes
    them), and the default criterion still keeps the planted edges."""
    from sccircuits.models.planted import score_edges

    (pc, e), (_, e_live) = pair["32f"], pair[32]
    planted = set(pc.truth["source_feature"])
    no_path = e[~e["source_feature"].isin(planted)]
    assert no_path["mean_delta"].abs().mean() > 0.3 * e_live[~e_live["source_feature"].isin(planted)]["mean_delta"].abs().mean()
    assert score_edges(e, pc.truth, 10, 12, "passes_published")["false_positives"] > 20
    ours = score_edges(e, pc.truth, 10, 12, "edge")
    assert ours["recall"] >= 0.6 and ours["sign_accuracy"] == 1.0 and ours["false_positives"] <= 1


def test_generic_units_validated(tmp_path):
    from sccircuits.models.planted import make_planted

    with pytest.raises(ValueError, match="generic_units"):
        make_planted(tmp_path, "geneformer", generic_units=-1, **SIZES)
    with pytest.raises(ValueError, match="generic units need an FFN"):
        make_planted(tmp_path, "geneformer", generic_units=190, **SIZES)
