"""TopK SAE: encoding formula, storage layouts, the two training recipes, AuxK, train_saes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sccircuits.errors import InputError
from sccircuits.sae import TopKSAE, import_bio_sae, load_sae, load_saes, save_sae
from sccircuits.sae import train as tr


def random_sae(d_in=8, d_sae=32, k=4, seed=0) -> TopKSAE:
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k, activation_mean=torch.randn(d_in, generator=g))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


# ----------------------------------------------------------------------------- encoding
def test_encode_keeps_exactly_k_and_subtracts_mean():
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc += 100.0  # every pre-activation positive: ReLU removes nothing
    h = torch.randn(3, 5, 8)
    z = sae.encode(h)
    assert z.shape == (3, 5, 32)
    assert ((z != 0).sum(-1) == 4).all()
    vals, idx = sae.encode_topk(h)
    assert idx.shape == (3, 5, 4)
    # the mean is subtracted inside encode: shifting the mean by h gives the code of zero input
    pre = (h - sae.activation_mean) @ sae.W_enc + sae.b_enc
    assert torch.equal(torch.sort(idx, -1).values, torch.sort(torch.topk(pre, 4).indices, -1).values)
    # decode adds the mean back
    assert torch.allclose(sae.decode(torch.zeros(32)), sae.b_dec + sae.activation_mean)


def test_encode_relu_after_topk_can_zero_kept_values():
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc -= 100.0  # every pre-activation negative: TopK keeps k, ReLU zeroes them
    z = sae.encode(torch.randn(4, 8))
    assert (z == 0).all()
    assert sae.encode_topk(torch.randn(4, 8))[1].shape == (4, 4)


# ----------------------------------------------------------------------------- storage
def test_saelens_layout_round_trip(tmp_path):
    sae = random_sae()
    sae.metadata = {"layer": 3, "model_name": "tiny"}
    save_sae(sae, tmp_path / "layer03")
    cfg = json.loads((tmp_path / "layer03/cfg.json").read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (8, 32, 4)
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    w = load_file(str(tmp_path / "layer03/sae_weights.safetensors"))
    assert set(w) == {"W_enc", "b_enc", "W_dec", "b_dec"}  # SAELens' strict load sees exactly these
    back = load_sae(tmp_path / "layer03")
    h = torch.randn(50, 8) * 3
    assert torch.equal(back.encode(h), sae.encode(h))
    assert torch.equal(back.decode(sae.encode(h)), sae.decode(sae.encode(h)))
    assert back.metadata["layer"] == 3
    # SAELens semantics (apply_b_dec_to_input false): raw x @ W_enc + b_enc, TopK+ReLU, z @ W_dec + b_dec
    pre = h @ w["W_enc"] + w["b_enc"]
    top = torch.topk(pre, 4)
    z_lens = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.allclose(z_lens, sae.encode(h), atol=1e-4)
    assert torch.allclose(z_lens @ w["W_dec"] + w["b_dec"], sae.decode(sae.encode(h)), atol=1e-4)


def test_plain_saelens_topk_with_b_dec_applied_loads(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    w = {"W_enc": torch.randn(6, 12, generator=g), "b_enc": torch.randn(12, generator=g),
         "W_dec": torch.randn(12, 6, generator=g), "b_dec": torch.randn(6, generator=g)}
    d = tmp_path / "lens"
    d.mkdir()
    save_file(w, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 6, "d_sae": 12, "k": 3,
                                            "apply_b_dec_to_input": True}))
    sae = load_sae(d)
    x = torch.randn(7, 6, generator=g)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = torch.topk(pre, 3)
    z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.allclose(sae.encode(x), z, atol=1e-6)
    assert torch.allclose(sae.decode(z), z @ w["W_dec"] + w["b_dec"], atol=1e-6)


def test_load_rejects_other_architectures(tmp_path):
    save_sae(random_sae(), tmp_path / "layer00")
    cfg = json.loads((tmp_path / "layer00/cfg.json").read_text())
    cfg["architecture"] = "jumprelu"
    (tmp_path / "layer00/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="jumprelu"):
        load_sae(tmp_path / "layer00")


def write_bio_sae(root, layer=5, d=6, k=3, seed=0):
    """A checkpoint in the published layout: nn.Linear weights (4d, d) / (d, 4d) + mean .npy."""
    g = torch.Generator().manual_seed(seed)
    sd = {"W_enc.weight": torch.randn(4 * d, d, generator=g), "W_enc.bias": torch.randn(4 * d, generator=g),
          "W_dec.weight": torch.randn(d, 4 * d, generator=g), "W_dec.bias": torch.randn(d, generator=g)}
    ld = root / f"layer{layer:02d}_x4_k{k}"
    ld.mkdir(parents=True)
    torch.save({"model_state_dict": sd, "d_model": d, "n_features": 4 * d, "k": k}, ld / "sae_final.pt")
    mean = torch.randn(d, generator=g).numpy().astype(np.float32)
    np.save(ld / "activation_mean.npy", mean)
    return sd, torch.from_numpy(mean)


def published_encode(x, sd, mean, k):
    """The published formula, by hand: Linear on centred input -> topk -> ReLU on the kept values."""
    h = F.linear(x - mean, sd["W_enc.weight"], sd["W_enc.bias"])
    vals, idx = torch.topk(h, k, dim=-1)
    return torch.zeros_like(h).scatter(-1, idx, F.relu(vals))


def test_imported_bio_sae_encodes_as_published(tmp_path):
    sd, mean = write_bio_sae(tmp_path / "bio", layer=5)
    sd2, mean2 = write_bio_sae(tmp_path / "bio", layer=11, seed=1)
    paths = import_bio_sae(tmp_path / "bio", tmp_path / "ours")
    assert sorted(paths) == [5, 11]
    x = torch.randn(40, 6) * 2
    for saes in (load_saes(tmp_path / "ours"), load_saes(tmp_path / "bio")):  # converted and read directly
        assert sorted(saes) == [5, 11]
        for layer, (s, m) in {5: (sd, mean), 11: (sd2, mean2)}.items():
            z_pub = published_encode(x, s, m, 3)
            assert torch.equal(saes[layer].encode(x), z_pub)
            np.testing.assert_allclose(saes[layer].decode(z_pub).detach().numpy(),
                                       (F.linear(z_pub, s["W_dec.weight"], s["W_dec.bias"]) + m).numpy(),
                                       rtol=1e-5, atol=1e-5)
            assert torch.equal(saes[layer].W_dec, s["W_dec.weight"].T)  # feature f = W_dec[f]


def test_bio_sae_unsafe_checkpoint_is_refused(tmp_path):
    ld = tmp_path / "layer00_x4_k2"
    ld.mkdir()

    from fractions import Fraction  # an arbitrary class: weights_only=True must refuse to unpickle it

    torch.save({"model_state_dict": {}, "obj": Fraction(1, 3)}, ld / "sae_final.pt")
    np.save(ld / "activation_mean.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(InputError, match=r"refused, the checkpoint contains Python objects other than tensors \(fractions.Fraction\)") as e:
        load_saes(tmp_path)
    assert "weights_only" not in str(e.value)  # torch's advice to disable the safety is never repeated


def test_load_saes_finds_run_dir_and_reports_missing(tmp_path):
    save_sae(random_sae(), tmp_path / "run/saes/layer02")
    assert list(load_saes(tmp_path / "run")) == [2]
    with pytest.raises(InputError, match="layer"):
        load_saes(tmp_path / "run", layers=[7])
    with pytest.raises(InputError, match="no SAEs"):
        load_saes(tmp_path / "run" / "saes" / "layer02")


# ----------------------------------------------------------------------------- training steps
def test_geometric_median_of_an_obtuse_triangle_is_the_obtuse_vertex():
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]], dtype=torch.float64)
    assert torch.allclose(tr.geometric_median(X, iters=500), torch.zeros(2, dtype=torch.float64), atol=1e-3)


def test_parallel_gradient_component_is_removed():
    sae = random_sae()
    tr.normalize_features(sae)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    g_before = sae.W_dec.grad.clone()
    tr.remove_parallel_grad(sae)
    G, W = sae.W_dec.grad, sae.W_dec.detach()
    assert torch.allclose((G * W).sum(1), torch.zeros(32), atol=1e-5)
    # only the parallel part changed: G = g - (g.w) w
    assert torch.allclose(G, g_before - (g_before * W).sum(1, keepdim=True) * W, atol=1e-5)


def _trainer(recipe, sae, **kw):
    cfg = tr.SAETrainConfig(recipe=recipe, lr=1e-2, lr_decay=False, **kw)
    return tr.Trainer(sae, cfg, total_var=8.0, total_steps=100)


def test_ours_keeps_feature_norms_one_reference_does_not():
    torch.manual_seed(0)
    X = torch.randn(512, 8) * 2
    sae = tr.init_sae(8, 32, 4, np.zeros(8), "ours", X[:256], seed=0)
    t = _trainer("ours", sae, dead_after=64)
    for i in range(20):
        t.step(X[i * 16:(i + 1) * 16 + 64])
        assert torch.allclose(sae.feature_norms(), torch.ones(32), atol=1e-5)
    ref = tr.init_sae(8, 32, 4, np.zeros(8), "reference", X[:256], seed=0)
    t = _trainer("reference", ref)
    for i in range(5):
        t.step(X[i * 64:(i + 1) * 64])
    # the published step normalises each input dimension across features, not features
    assert torch.allclose(ref.W_dec.norm(dim=0), torch.ones(8), atol=1e-5)
    assert not torch.allclose(ref.feature_norms(), torch.ones(32), atol=1e-2)


def test_ours_init_encoder_is_decoder_transpose_and_b_dec_from_data():
    X = torch.randn(300, 8) + 5.0
    sae = tr.init_sae(8, 32, 4, np.zeros(8), "ours", X, seed=3)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.allclose(sae.b_dec, tr.geometric_median(X.double()).float(), atol=1e-5)


def _auxk_revived(aux_coef: float) -> int:
    """Latents 8..15 start unable to win the top-k (zero encoder, bias -4): count how many fire
    after training. Without AuxK they get no gradient at all."""
    torch.manual_seed(0)
    X = torch.randn(2048, 8) * torch.linspace(0.3, 2, 8)
    sae = TopKSAE(8, 16, 2)
    with torch.no_grad():
        W = torch.randn(16, 8)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.W_enc[:, 8:] = 0.0
        sae.b_enc[8:] = -4.0
    cfg = tr.SAETrainConfig(recipe="ours", aux_coef=aux_coef, dead_after=256, lr=1e-2, lr_decay=False, aux_k=4)
    t = tr.Trainer(sae, cfg, total_var=float(X.var(0).sum()), total_steps=300)
    for _ in range(300):
        t.step(X[torch.randint(0, len(X), (256,))])
    with torch.no_grad():
        return int((sae.encode(X) > 0).any(0)[8:].sum())


def test_auxk_revives_latents_plain_topk_leaves_dead():
    assert _auxk_revived(0.0) == 0
    assert _auxk_revived(1 / 32) >= 2


# ----------------------------------------------------------------------------- train_saes
@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    from sccircuits.activations import ExtractConfig, extract
    from sccircuits.models import testing

    d = tmp_path_factory.mktemp("saerun")
    testing.make_tiny_geneformer(d / "gf", n_genes=60, n_layers=3, d_model=16, seed=0)
    adata = testing.make_synthetic_adata(n_cells=40, n_genes=60, seed=1)
    extract(d / "run", d / "gf", adata, ExtractConfig(layers="0,2", batch_size=8, shard_mb=0.01), progress=False)
    return d / "run"


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


SMALL = dict(expansion=2, k=4, epochs=2, batch_size=128, lr=3e-3, dead_after=500, shuffle_shards=2)


def test_train_saes_end_to_end(store_run, tmp_path):
    from sccircuits.activations import ActivationStore
    from sccircuits.rundir import RunDir

    run = _copy_run(store_run, tmp_path / "run")
    saes = tr.train_saes(run, tr.SAETrainConfig(**SMALL), progress=False)
    assert sorted(saes) == [0, 2]
    m = RunDir(run).stage("train-sae")
    assert m["status"] == "complete"
    for name in ("layer00", "layer02"):
        lm = m["metrics"][name]
        assert 0.0 < lm["variance_explained"] <= 1.0 and lm["l0"] <= 4 and 0 <= lm["dead"] <= 32
        assert lm["n_eval_positions"] > 0
    loaded = load_saes(run)
    store = ActivationStore(run)
    X = next(store.iter_batches(2, 64))[0]
    assert torch.equal(loaded[2].encode(torch.from_numpy(X)), saes[2].encode(torch.from_numpy(X)))
    assert np.allclose(loaded[2].activation_mean.numpy(), store.mean(2).astype(np.float32))
    assert torch.allclose(loaded[2].feature_norms(), torch.ones(32), atol=1e-5)
    held = np.load(run / "saes" / "heldout_cells.npy")
    assert len(held) == 4  # 10% of 40 cells
    # rerunning with the same options reuses the finished layers
    called = []
    orig = tr.train_layer
    try:
        tr.train_layer = lambda *a, **k: called.append(1) or orig(*a, **k)
        tr.train_saes(run, tr.SAETrainConfig(**SMALL), progress=False)
    finally:
        tr.train_layer = orig
    assert called == []


def test_heldout_split_holds_out_whole_cells():
    cells = np.repeat(np.arange(20), 5)
    s = tr.heldout_split(cells, 0.2, seed=0)
    assert len(s.heldout_cells) == 4
    assert set(cells[s.eval_rows]) == set(s.heldout_cells.tolist())
    assert not set(cells[s.train_rows]) & set(s.heldout_cells.tolist())


def test_interrupted_training_resumes_from_epoch_checkpoint(store_run, tmp_path, monkeypatch):
    cfg = tr.SAETrainConfig(layers="2", **SMALL)
    ref = tr.train_saes(_copy_run(store_run, tmp_path / "a"), cfg, progress=False)[2]

    run = _copy_run(store_run, tmp_path / "b")
    orig = tr.shuffled_batches
    calls = []

    def stop_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from orig(*a, **k)

    monkeypatch.setattr(tr, "shuffled_batches", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tr.train_saes(run, cfg, progress=False)
    assert (run / "saes/.checkpoints/layer02.pt").is_file()
    monkeypatch.setattr(tr, "shuffled_batches", orig)
    resumed = tr.train_saes(run, cfg, progress=False)[2]
    assert torch.equal(resumed.W_dec, ref.W_dec) and torch.equal(resumed.b_enc, ref.b_enc)
    assert not (run / "saes/.checkpoints/layer02.pt").exists()


def test_cli_train_and_import(store_run, tmp_path):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    run = _copy_run(store_run, tmp_path / "run")
    res = CliRunner().invoke(app, ["train-sae", "--run", str(run), "--layers", "0", "--expansion", "2", "--k", "4",
                                   "--epochs", "1", "--batch-size", "256"])
    assert res.exit_code == 0, res.output
    assert "layer00: variance explained" in res.output
    write_bio_sae(tmp_path / "bio", layer=3)
    res = CliRunner().invoke(app, ["import-sae", "--format", "bio-sae", str(tmp_path / "bio"), "--out",
                                   str(tmp_path / "imported")])
    assert res.exit_code == 0, res.output
    assert list(load_saes(tmp_path / "imported")) == [3]
