"""Geneformer adapter: forward passes equal Hugging Face's, run_from resumes exactly, both
tokenizer modes match hand-computed token orders, and broken inputs give one-line errors."""

from __future__ import annotations

import json
import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from sccircuits.errors import InputError
from sccircuits.models import load_model, testing
from sccircuits.models.geneformer import GeneformerAdapter

G = testing.gene_ids(8)  # ENSG00000000001 ... ENSG00000000008
UNKNOWN = "ENSG00000099999"  # not in any vocabulary


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """An 8-gene V2 model whose own median dictionary we replace by hand-chosen medians."""
    path = tmp_path_factory.mktemp("gf8")
    testing.make_tiny_geneformer(path, n_genes=8, n_layers=2, d_model=16, n_heads=2)
    medians = {G[0]: 1.0, G[1]: 2.0, G[2]: 0.5, G[3]: 4.0}  # G[4] (gene 5) has no median
    (path / "hand_medians.pkl").write_bytes(pickle.dumps(medians))
    return path


@pytest.fixture(scope="module")
def small(small_dir):
    return GeneformerAdapter.from_pretrained(small_dir, median_dictionary=small_dir / "hand_medians.pkl")


def hand_adata():
    """Genes 1-5, gene 2 again (duplicate Ensembl id) and an unknown gene; four cells."""
    var = [G[0], G[1], G[2], G[3], G[4], G[1], UNKNOWN]
    X = np.array([[10, 4, 1, 20, 5, 4, 6],   # total 50
                  [0, 0, 3, 0, 0, 0, 7],     # only gene 3 maps
                  [0, 0, 0, 0, 2, 0, 5],     # only gene 5 (no median) maps
                  [0, 0, 0, 0, 0, 0, 9]],    # nothing maps: skipped
                 dtype=np.float32)
    symbols = ["GENE1", "GENE2", "GENE3", "GENE4", "GENE5", "GENE2", "NOTAGENE"]
    with warnings.catch_warnings():  # the duplicate var name is the point of this example
        warnings.simplefilter("ignore", UserWarning)
        return ad.AnnData(X=X, var=pd.DataFrame({"symbol": symbols}, index=pd.Index(var)))


# V2 token of gene i (1-based) is 3 + i; <cls> = 2, <eos> = 3.
CLS, EOS = 2, 3
T1, T2, T3, T4, T5 = 4, 5, 6, 7, 8


def test_official_tokenization_by_hand(small):
    # Cell 0, x/50*1e4/median: g1 2000/1=2000, g2 (4+4 summed) 1600/2=800, g3 200/0.5=400,
    # g4 4000/4=1000, g5 dropped (no median), unknown gene unmapped -> g1 g4 g2 g3.
    cells = small.tokenize(hand_adata(), mode="official")
    assert [list(x) for x in cells.input_ids] == [[CLS, T1, T4, T2, T3, EOS], [CLS, T3, EOS]]
    assert list(cells.cell_index) == [0, 1]
    assert cells.n_skipped == 2  # cell 2 (only a median-less gene) and cell 3
    assert [list(m) for m in cells.gene_mask][1] == [False, True, False]
    info = cells.info
    assert (info["genes_mapped"], info["genes_unmapped"], info["duplicate_genes_summed"]) == (5, 2, 1)


def test_reference_tokenization_by_hand(small):
    # Cell 0, log1p(x/50*1e4)/median: g1 log1p(2000)=7.601, g2 log1p(1600)/2=3.689,
    # g3 log1p(200)/0.5=10.607, g4 log1p(4000)/4=2.074, g5 log1p(1000)/1.0=6.909 (no median: 1.0)
    # -> g3 g1 g5 g2 g4.
    cells = small.tokenize(hand_adata(), mode="reference")
    assert [list(x) for x in cells.input_ids] == [[CLS, T3, T1, T5, T2, T4, EOS], [CLS, T3, EOS], [CLS, T5, EOS]]
    assert list(cells.cell_index) == [0, 1, 2]
    assert cells.n_skipped == 1
    assert cells.info["genes_without_median"] == 1
    assert (cells.info["genes_mapped"], cells.info["genes_unmapped"]) == (6, 1)


def test_truncation_keeps_top_ranked_genes(small):
    official = small.tokenize(hand_adata(), mode="official", max_length=4)
    reference = small.tokenize(hand_adata(), mode="reference", max_length=4)
    assert list(official.input_ids[0]) == [CLS, T1, T4, EOS]
    assert list(reference.input_ids[0]) == [CLS, T3, T1, EOS]
    assert official.info["cells_truncated"] == 1


def test_reference_truncates_at_2046_genes_official_at_positions(tmp_path):
    n = 2100
    path = testing.make_tiny_geneformer(tmp_path / "wide", n_genes=n, n_layers=1, d_model=8, n_heads=2)
    model = load_model(path)
    assert model.max_positions == n + 2
    X = np.arange(1, n + 1, dtype=np.float32)[None, :]  # one cell expressing every gene
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=testing.gene_ids(n)))
    assert len(model.tokenize(adata, mode="reference").input_ids[0]) == 2046 + 2
    assert len(model.tokenize(adata, mode="official").input_ids[0]) == n + 2


def test_symbols_map_through_the_name_dictionary(small):
    by_id = small.tokenize(hand_adata(), mode="reference")
    by_symbol = small.tokenize(hand_adata(), mode="reference", gene_column="symbol")
    assert [list(x) for x in by_symbol.input_ids] == [list(x) for x in by_id.input_ids]
    assert "symbol" in by_symbol.info["gene_ids_from"]


def test_ensembl_version_suffixes_are_dropped(small):
    adata = hand_adata()
    adata.var_names = [f"{g}.{i + 1}" for i, g in enumerate(adata.var_names)]
    cells = small.tokenize(adata, mode="official")
    assert list(cells.input_ids[0]) == [CLS, T1, T4, T2, T3, EOS]


def test_v1_has_no_special_tokens(tmp_path):
    path = testing.make_tiny_geneformer(tmp_path / "v1", n_genes=8, n_layers=1, d_model=16, version=1)
    (tmp_path / "med.pkl").write_bytes(pickle.dumps({G[0]: 1.0, G[1]: 2.0, G[2]: 0.5, G[3]: 4.0}))
    model = GeneformerAdapter.from_pretrained(path, median_dictionary=tmp_path / "med.pkl")
    assert model.version == 1 and "<cls>" not in model.special_tokens
    cells = model.tokenize(hand_adata(), mode="official")
    # V1 token of gene i is 1 + i (only <pad>=0, <mask>=1 before the genes); same order as V2.
    assert list(cells.input_ids[0]) == [2, 5, 3, 4]
    assert cells.gene_mask[0].all()


def test_non_counts_need_normalized(small):
    adata = hand_adata()
    adata.X = adata.X * 0.37
    with pytest.raises(InputError, match="not integer counts"):
        small.tokenize(adata, source="cells.h5ad")
    # Already-normalised values are ranked by value / median: same order as the counts here.
    cells = small.tokenize(adata, mode="official", normalized=True)
    assert list(cells.input_ids[0]) == [CLS, T1, T4, T2, T3, EOS]


def test_no_gene_overlap_is_an_error(small):
    adata = ad.AnnData(X=np.ones((2, 2), dtype=np.float32), var=pd.DataFrame(index=["ENSG77", "ENSG78"]))
    with pytest.raises(InputError, match="cells.h5ad: no gene overlaps"):
        small.tokenize(adata, source="cells.h5ad")


# -- forward passes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gf(tiny_geneformer):
    return load_model(tiny_geneformer)


@pytest.fixture(scope="module")
def padded_batch(gf):
    cells = gf.tokenize(testing.make_synthetic_adata(n_cells=6, seed=1))
    assert len(set(cells.lengths().tolist())) > 1  # really needs padding
    batch = gf.batch(cells, range(len(cells)))
    assert not bool(batch.attention_mask.all())
    return batch


def test_hidden_states_equal_hf_output_hidden_states(gf, padded_batch):
    ours = gf.hidden_states(padded_batch, [-1] + list(range(gf.n_layers)))
    with torch.no_grad():
        hf = gf.model(input_ids=padded_batch.input_ids, attention_mask=padded_batch.attention_mask.long(),
                      output_hidden_states=True).hidden_states
    assert len(hf) == gf.n_layers + 1
    for layer in range(-1, gf.n_layers):
        real = padded_batch.attention_mask
        torch.testing.assert_close(ours[layer][real], hf[layer + 1][real], atol=1e-6, rtol=0)


def test_run_from_patched_state_equals_hf_with_a_hook(gf, padded_batch):
    """A patched layer-s state resumed by run_from equals HF's own pass with that layer's
    output replaced by the same patch (independent path through the model)."""
    s = 1
    clean = gf.hidden_states(padded_batch, [s])[s]
    delta = torch.zeros_like(clean)
    delta[0, 3] = torch.linspace(-2, 2, gf.d_model)
    ours = gf.run_from(s, clean + delta, padded_batch)

    def patch(module, args, output):
        return output + delta

    handle = gf.bert.encoder.layer[s].register_forward_hook(patch)
    try:
        with torch.no_grad():
            hf = gf.model(input_ids=padded_batch.input_ids, attention_mask=padded_batch.attention_mask.long(),
                          output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    real = padded_batch.attention_mask
    for t in range(s + 1, gf.n_layers):
        assert (ours[t][real] - hf[t + 1][real]).abs().max().item() <= 1e-5
    unpatched = gf.hidden_states(padded_batch, [gf.n_layers - 1])[gf.n_layers - 1]
    assert (ours[gf.n_layers - 1][0] - unpatched[0]).abs().max().item() > 1e-3  # the patch mattered


def test_bfloat16_and_eager_attention(tiny_geneformer, gf, padded_batch):
    ref = gf.hidden_states(padded_batch, [gf.n_layers - 1])[gf.n_layers - 1]
    eager = GeneformerAdapter.from_pretrained(tiny_geneformer, attn_implementation="eager")
    out = eager.hidden_states(padded_batch, [gf.n_layers - 1])[gf.n_layers - 1]
    real = padded_batch.attention_mask
    assert (out[real] - ref[real]).abs().max().item() <= 1e-5
    bf = load_model(tiny_geneformer, dtype="bfloat16")
    hb = bf.hidden_states(padded_batch, [gf.n_layers - 1])[gf.n_layers - 1]
    assert hb.dtype == torch.bfloat16
    assert (hb.float()[real] - ref[real]).abs().mean().item() < 0.1


def test_vocabulary_maps(gf):
    syms, ids = gf.token_symbols(), gf.token_gene_ids()
    assert syms[4] == "GENE1" and ids[4] == testing.gene_ids(1)[0]
    assert syms[2] == "<cls>"
    facts = gf.describe()
    assert (facts["version"], facts["n_layers"], facts["d_model"], facts["n_heads"]) == ("V2", 4, 32, 4)
    assert facts["vocab_size"] == 64 and facts["special_tokens"]["<eos>"] == 3


def test_tiny_maker_is_deterministic(tmp_path):
    a = testing.make_tiny_geneformer(tmp_path / "a", n_genes=10, n_layers=1, d_model=8, n_heads=2, seed=3)
    b = testing.make_tiny_geneformer(tmp_path / "b", n_genes=10, n_layers=1, d_model=8, n_heads=2, seed=3)
    for f in ("model.safetensors", "config.json", "gene_median_dictionary_gc104M.pkl"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


# -- broken model directories ---------------------------------------------------------------------


@pytest.fixture
def copy_dir(small_dir, tmp_path):
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(small_dir, dst)
    return dst


def test_missing_token_dictionary(copy_dir):
    (copy_dir / "token_dictionary_gc104M.pkl").unlink()
    with pytest.raises(InputError, match="no token dictionary found"):
        load_model(copy_dir)


def test_missing_and_wrong_kind_dirs(tmp_path):
    with pytest.raises(InputError, match="nowhere: model directory not found"):
        GeneformerAdapter.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: not a Geneformer directory"):
        GeneformerAdapter.from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="config.json: model_type is 'gpt2'"):
        GeneformerAdapter.from_pretrained(tmp_path / "other")


def test_truncated_weights(copy_dir):
    w = copy_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-500])
    with pytest.raises(InputError, match="model.safetensors: cannot load weights"):
        load_model(copy_dir)


def test_config_weight_dimension_mismatch(copy_dir):
    cfg = json.loads((copy_dir / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (copy_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="model.safetensors: weights do not match config.json"):
        load_model(copy_dir)


def test_missing_encoder_weight(copy_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(copy_dir / "model.safetensors")
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, copy_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="model weights missing"):
        load_model(copy_dir)


def test_token_ids_beyond_vocab_and_malicious_dictionary(copy_dir, tmp_path):
    d = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, G[0]: 500}
    (copy_dir / "token_dictionary_gc104M.pkl").write_bytes(pickle.dumps(d))
    with pytest.raises(InputError, match="do not fit config.json vocab_size"):
        load_model(copy_dir)

    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (copy_dir / "token_dictionary_gc104M.pkl").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(InputError, match="token_dictionary_gc104M.pkl: unsafe or invalid pickle"):
        load_model(copy_dir)
    assert not (tmp_path / "ran").exists()
