"""Demo-model pretraining: helpers, a tiny end-to-end run, and the shipped demo models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sccircuits import datasets
from sccircuits.errors import ConfigError
from sccircuits.models import load_model
from sccircuits.pretrain import (PretrainConfig, choose_masked, evaluate_geneformer,
                                 evaluate_scgpt, load_scgpt_decoder, lr_at, mask_geneformer, nonzero_medians,
                                 pretrain_demo, split_cells)


# ------------------------------------------------------------------------------------------ helpers

def test_split_cells_is_seeded_disjoint_and_complete():
    tr, te = split_cells(100, 0.1, seed=3)
    assert len(te) == 10 and len(tr) == 90
    assert sorted(np.r_[tr, te].tolist()) == list(range(100))
    tr2, te2 = split_cells(100, 0.1, seed=3)
    assert np.array_equal(te, te2) and not np.array_equal(te, split_cells(100, 0.1, seed=4)[1])


def test_choose_masked_counts():
    rng = np.random.default_rng(0)
    pos = choose_masked(np.arange(1, 21), 0.15, rng)
    assert len(pos) == 3 and len(set(pos.tolist())) == 3 and pos.min() >= 1
    assert len(choose_masked(np.arange(2), 0.15, rng)) == 1  # at least one


def test_mask_geneformer_eval_style_masks_only_genes():
    ids = np.array([2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3])
    gm = np.r_[False, np.ones(10, bool), False]
    inp, lab = mask_geneformer(ids, gm, 0.3, np.random.default_rng(0), 1, np.arange(4, 30), bert_style=False)
    where = lab != -100
    assert where.sum() == 3 and not where[0] and not where[-1]
    assert np.all(inp[where] == 1) and np.array_equal(lab[where], ids[where])
    assert np.array_equal(inp[~where], ids[~where])


def test_nonzero_medians_hand_computed():
    import scipy.sparse as sp

    X = sp.csr_matrix(np.array([[1.0, 0.0, 0.0], [3.0, 2.0, 0.0], [0.0, 6.0, 0.0]]))
    totals = np.array([2.0, 5.0, 6.0])
    # gene 0: 1/2*1e4=5000, 3/5*1e4=6000 -> 5500 ; gene 1: 4000, 10000 -> 7000 ; gene 2 never: 1.0
    np.testing.assert_allclose(nonzero_medians(X, totals), [5500.0, 7000.0, 1.0])


def test_coexpression_embedding_puts_co_expressed_genes_together():
    """Planted programs: genes 0-4 rise together in half the cells, genes 5-9 in the other half,
    genes 10-19 are independent noise, gene 20 never varies. Vectors of one program point the
    same way, the two programs point apart, and the constant gene gets a zero row."""
    from sccircuits.pretrain import coexpression_embedding

    rng = np.random.default_rng(0)
    n = 200
    state = np.arange(n) % 2 == 0
    X = rng.poisson(2.0, size=(n, 21)).astype(float)
    X[np.ix_(state, np.arange(5))] += rng.poisson(20.0, size=(state.sum(), 5))
    X[np.ix_(~state, np.arange(5, 10))] += rng.poisson(20.0, size=((~state).sum(), 5))
    X[:, 20] = 0.0
    E = coexpression_embedding(X, 8)
    assert E.shape == (21, 8) and np.all(E[20] == 0)
    U = E[:20] / np.linalg.norm(E[:20], axis=1, keepdims=True)
    cos = U @ U.T
    within = np.mean([cos[i, j] for blk in (range(5), range(5, 10)) for i in blk for j in blk if i != j])
    across = np.mean(cos[:5, 5:10])
    noise = np.abs(cos[10:20, :10]).mean()
    assert within > 0.9 and across < -0.9 and noise < 0.5
    np.testing.assert_array_equal(E, coexpression_embedding(X, 8))  # deterministic
    assert np.linalg.norm(E[:20], axis=1).mean() == pytest.approx(1.0)


def test_embedding_init_option_changes_only_the_gene_rows(tmp_path):
    """'random' keeps the architecture's initialisation; 'coexpression' replaces the gene rows
    (scaled to embedding_scale x the random rows' mean norm) and leaves the special tokens."""
    from sccircuits.pretrain import write_scgpt_dir

    adata = datasets.blood()[:60].copy()
    dirs = {}
    for init in ("random", "coexpression"):
        cfg = PretrainConfig(out="x", embedding_init=init, embedding_scale=4.0, **{k: v for k, v in TINY.items() if k != "max_cells"})
        write_scgpt_dir(tmp_path / init, adata, cfg, np.arange(50))
        dirs[init] = torch.load(tmp_path / init / "best_model.pt", weights_only=True)["encoder.embedding.weight"]
    r, c = dirs["random"], dirs["coexpression"]
    n_genes = adata.n_vars
    assert torch.equal(r[n_genes:], c[n_genes:])  # specials untouched
    changed = (r[:n_genes] != c[:n_genes]).any(dim=1)
    assert changed.float().mean() > 0.5
    ratio = c[:n_genes][changed].norm(dim=1).mean() / r.norm(dim=1).mean()
    assert 3.0 < float(ratio) < 5.0
    with pytest.raises(ConfigError):
        PretrainConfig(out="x", embedding_init="pca")


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(99, 100, 1.0, 0.1) > 0


def test_config_validation():
    with pytest.raises(ConfigError):
        PretrainConfig(out="x", kind="bert")
    with pytest.raises(ConfigError):
        PretrainConfig(out="x", d_model=30, n_heads=4)
    with pytest.raises(ConfigError):
        PretrainConfig(out="")


# ------------------------------------------------------------------------------------------ tiny run

TINY = dict(n_layers=2, d_model=16, n_heads=2, d_ff=32, max_length=32, epochs=1, batch_size=8, max_cells=40)


def _weights(path):
    from safetensors.torch import load_file

    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    return torch.load(path / "best_model.pt", map_location="cpu", weights_only=True)


def test_tiny_pretrain_writes_loadable_dirs_deterministically(tmp_path):
    r1 = pretrain_demo(PretrainConfig(out=str(tmp_path / "a"), **TINY))
    r2 = pretrain_demo(PretrainConfig(out=str(tmp_path / "b"), **TINY))
    for kind in ("geneformer", "scgpt"):
        a, b = tmp_path / "a" / f"demo-{kind}", tmp_path / "b" / f"demo-{kind}"
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), kind
        assert r1[kind]["loss_per_epoch"] == r2[kind]["loss_per_epoch"]
        m = load_model(a)
        assert m.kind == kind and m.n_layers == 2 and m.d_model == 16
        info = json.loads((a / "training.json").read_text())
        assert len(info["held_out_cells"]) == 4 and info["n_train_cells"] + info["n_test_cells"] == 40
    assert not list((tmp_path / "a").glob(".demo-*"))  # no partial directories left
    sc = torch.load(tmp_path / "a" / "demo-scgpt" / "best_model.pt", weights_only=True)
    assert {"decoder.fc.0.weight", "decoder.fc.4.bias"} <= set(sc)


def test_freeze_embeddings_keeps_the_initial_gene_embeddings(tmp_path):
    """--freeze-embeddings: both models end training with exactly the gene embeddings they
    started with (the untrained directory of the same options), while the rest of the network
    trains; without it the embeddings move."""
    from sccircuits.pretrain import write_geneformer_dir, write_scgpt_dir

    adata = datasets.blood()[:TINY["max_cells"]].copy()
    train_idx, _ = split_cells(adata.n_obs, 0.1, 0)
    base = {k: v for k, v in TINY.items() if k != "max_cells"}
    init_cfg = PretrainConfig(out="x", **base)
    write_geneformer_dir(tmp_path / "init-gf", adata, train_idx, init_cfg)
    write_scgpt_dir(tmp_path / "init-sc", adata, init_cfg, train_idx)
    init = {"geneformer": _weights(tmp_path / "init-gf"), "scgpt": _weights(tmp_path / "init-sc")}
    emb = {"geneformer": "bert.embeddings.word_embeddings.weight", "scgpt": "encoder.embedding.weight"}
    other = {"geneformer": "bert.encoder.layer.0.attention.self.query.weight",
             "scgpt": "transformer_encoder.layers.0.self_attn.out_proj.weight"}
    for freeze in (True, False):
        pretrain_demo(PretrainConfig(out=str(tmp_path / str(freeze)), freeze_embeddings=freeze, **TINY),
                      adata=adata)
        for kind in ("geneformer", "scgpt"):
            w = _weights(tmp_path / str(freeze) / f"demo-{kind}")
            assert torch.equal(w[emb[kind]], init[kind][emb[kind]]) == freeze, (kind, freeze)
            assert not torch.equal(w[other[kind]], init[kind][other[kind]]), kind


def test_one_kind_only_and_cli_rejects_bad_kind(tmp_path):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    report = pretrain_demo(PretrainConfig(out=str(tmp_path), kind="scgpt", **TINY))
    assert set(report) == {"scgpt"} and not (tmp_path / "demo-geneformer").exists()
    res = CliRunner().invoke(app, ["pretrain-demo", "--kind", "bert", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)


# ------------------------------------------------------------------------------------------ shipped models

def _blood_split(kind):
    adata = datasets.blood()
    info = json.loads((datasets.demo_model_path(kind) / "training.json").read_text())
    held = set(info["held_out_cells"])
    is_test = np.array([c in held for c in adata.obs_names])
    return adata, info, np.flatnonzero(~is_test), np.flatnonzero(is_test)


def test_shipped_geneformer_beats_frequency_baseline_on_held_out_cells():
    adata, info, tr, te = _blood_split("geneformer")
    m = load_model(datasets.demo_model_path("geneformer"))
    train = m.tokenize(adata[tr], gene_column="ensembl_id")
    test = m.tokenize(adata[te], gene_column="ensembl_id")  # all 72 held-out cells
    ev = evaluate_geneformer(m.model, train, test, frac=0.15, seed=123)
    assert ev["n_masked"] > 300
    assert ev["trained"] > ev["frequency_baseline"] and ev["trained"] > ev["position_frequency_baseline"]


def test_shipped_geneformer_keeps_its_coexpression_gene_embeddings(tmp_path):
    """The shipped Geneformer-arch. model was trained with frozen co-expression gene embeddings
    (docs/demo-models.md): its gene rows are exactly those of an untrained model built with the
    options in its training.json."""
    from sccircuits.pretrain import write_geneformer_dir

    adata, info, tr, _ = _blood_split("geneformer")
    opts = info["options"]
    assert opts["freeze_embeddings"] and opts["embedding_init"] == "coexpression"
    write_geneformer_dir(tmp_path, adata, tr, PretrainConfig(**opts))
    name = "bert.embeddings.word_embeddings.weight"
    shipped, rebuilt = _weights(datasets.demo_model_path("geneformer"))[name], _weights(tmp_path)[name]
    # equal up to the last bits of the linear algebra (numpy/LAPACK builds differ in them);
    # a trained (unfrozen) row moves by orders of magnitude more
    torch.testing.assert_close(shipped, rebuilt, rtol=1e-4, atol=1e-5)


def test_shipped_scgpt_beats_frequency_baseline_on_held_out_cells():
    adata, info, tr, te = _blood_split("scgpt")
    path = datasets.demo_model_path("scgpt")
    m = load_model(path)
    train = m.tokenize(adata[tr])
    test = m.tokenize(adata[te[:30]])
    dec = load_scgpt_decoder(path, m.d_model)
    ev = evaluate_scgpt(m.model, dec, train, test, m.pad_id, frac=0.4, seed=123)
    assert ev["n_masked"] > 500
    # the metric is the mean squared error of the masked bins: lower is better
    assert ev["trained"] < ev["frequency_baseline"]
    assert ev["pearson_r"] > 0.3


def test_shipped_demo_models_map_blood_cells():
    from sccircuits.inspect import inspect_data, inspect_model

    for kind in datasets.DEMO_KINDS:
        path = datasets.demo_model_path(kind)
        facts = inspect_model(path)
        assert facts["kind"] == kind
        assert sum(f.stat().st_size for f in path.iterdir()) < 10e6
    adata = datasets.blood()
    n_ens = int((adata.var["ensembl_id"] != "").sum())
    g = load_model(datasets.demo_model_path("geneformer")).tokenize(adata)  # symbols via the name dict
    assert len(g) == 719 and g.info["genes_mapped"] >= n_ens
    s = load_model(datasets.demo_model_path("scgpt")).tokenize(adata)
    assert len(s) == 719 and s.info["genes_mapped"] == adata.n_vars
    from sccircuits.datasets.blood import asset_path

    for kind, column in (("geneformer", "ensembl_id"), ("scgpt", None)):
        facts = inspect_data(datasets.demo_model_path(kind), asset_path(), gene_column=column)
        assert facts["cells_kept"] == 719 and facts["genes_mapped"] >= n_ens
