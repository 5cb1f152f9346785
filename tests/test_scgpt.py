"""scGPT: equality with the official package, exact resumption, both input modes, bad input."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from sccircuits.errors import InputError
from sccircuits.models import load_model, testing
from sccircuits.models.scgpt import ScGPTAdapter, bin_values

ATOL = 1e-5


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _official_dir() -> Path:
    """Folder of the installed scgpt package, found without importing it (its __init__ needs
    torchtext, scanpy, ... which we do not install)."""
    spec = importlib.util.find_spec("scgpt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scgpt is not installed (CI installs scgpt==0.2.4 with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def official_model_module():
    """scgpt/model/model.py imported as a submodule of a stand-in package, so that neither
    scgpt/__init__.py nor scgpt/model/__init__.py runs; its relative imports (.dsbn,
    .grad_reverse) resolve in the same folder. Removed from sys.modules afterwards."""
    name = "_official_scgpt_model"
    try:
        folder = _official_dir() / "model"
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(folder)]
        sys.modules[name] = pkg
        module = importlib.import_module(f"{name}.model")
    except Exception as e:  # ImportError, missing files, syntax of another version ...
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        pytest.skip(f"cannot import scgpt's model module: {type(e).__name__}: {e}")
    yield module
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _official_digitize():
    """``_digitize`` from scgpt/preprocess.py, compiled alone from its source (the module
    imports scanpy at the top)."""
    src = (_official_dir() / "preprocess.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "_digitize")
    namespace = {"np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "scgpt/preprocess.py", "exec"), namespace)
    return namespace["_digitize"]


def _one_cell(counts, symbols=None):
    """AnnData with one cell, symbols GENE1.. as var_names."""
    counts = np.asarray(counts, dtype=np.float32)[None, :]
    symbols = symbols or testing.gene_symbols(counts.shape[1])
    return ad.AnnData(X=counts, var=pd.DataFrame(index=symbols))


def _copy_with_args(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    args = json.loads((dst / "args.json").read_text())
    args.update(changes)
    (dst / "args.json").write_text(json.dumps(args))
    return dst


@pytest.fixture(scope="module")
def model(tiny_scgpt):
    return load_model(tiny_scgpt)


@pytest.fixture
def padded_batch(model, tiny_adata):
    """Four cells of different lengths (so the batch has padding)."""
    cells = model.tokenize(tiny_adata, gene_column="gene_symbols")
    idx = [int(i) for i in np.argsort(cells.lengths())[[0, 5, 12, 23]]]
    batch = model.batch(cells, idx)
    assert not bool(batch.attention_mask.all())
    return batch


# --------------------------------------------------------------------------------------------
# equality with the official implementation
# --------------------------------------------------------------------------------------------


def _official_transformer(module, model_dir: Path):
    args = json.loads((model_dir / "args.json").read_text())
    vocab = json.loads((model_dir / "vocab.json").read_text())
    off = module.TransformerModel(
        ntoken=len(vocab), d_model=args["embsize"], nhead=args["nheads"], d_hid=args["d_hid"],
        nlayers=args["nlayers"], nlayers_cls=args["n_layers_cls"], n_cls=1, vocab=vocab,
        dropout=args["dropout"], pad_token=args["pad_token"], pad_value=args["pad_value"],
        do_mvc=False, do_dab=False, use_batch_labels=False, domain_spec_batchnorm=False,
        explicit_zero_prob=False, use_fast_transformer=False, pre_norm=False)
    state = torch.load(model_dir / "best_model.pt", weights_only=True)
    state = {k.replace("Wqkv.", "in_proj_"): v for k, v in state.items()}  # as scgpt.utils.load_pretrained
    result = off.load_state_dict(state, strict=False)
    not_loaded = [k for k in result.missing_keys if k.startswith(("encoder.", "value_encoder.", "transformer_encoder."))]
    assert not not_loaded, f"official model did not get {not_loaded}"
    return off.eval()


@pytest.mark.parametrize("mode", ["official", "reference"])
def test_matches_official_transformer_model_layer_by_layer(official_model_module, tiny_scgpt, model,
                                                           tiny_adata, mode):
    cells = model.tokenize(tiny_adata, mode=mode, gene_column="gene_symbols")
    batch = model.batch(cells, list(range(6)))
    if mode == "reference":
        batch.values[0, 0] = 1000.0  # raw values above the encoder's clamp at 512
    ours = model.hidden_states(batch, range(model.n_layers))
    off = _official_transformer(official_model_module, tiny_scgpt)
    real = batch.attention_mask
    pad = ~real  # the official src_key_padding_mask (True at padding)
    with torch.no_grad():
        x = off.encoder(batch.input_ids) + off.value_encoder(batch.values)
        for layer, block in enumerate(off.transformer_encoder.layers):
            x = block(x, src_key_padding_mask=pad)
            torch.testing.assert_close(ours[layer][real], x[real], atol=ATOL, rtol=0)
        final = off._encode(batch.input_ids, batch.values, src_key_padding_mask=pad)
    torch.testing.assert_close(ours[model.n_layers - 1][real], final[real], atol=ATOL, rtol=0)


def test_official_binning_rule_agrees(tiny_adata):
    """Without ties the official _digitize is deterministic and must equal ours exactly; with
    ties ours is the middle of the range the official rule draws from."""
    try:
        digitize = _official_digitize()
    except (ImportError, OSError, StopIteration) as e:
        pytest.skip(f"cannot read scgpt's preprocess._digitize: {e}")
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=500)  # continuous: no ties
    edges = np.quantile(x, np.linspace(0, 1, 50))
    official = digitize(x, edges)
    assert np.array_equal(bin_values(x, 51), official)
    counts = rng.poisson(2.0, size=400).astype(float) + 1  # many ties
    edges = np.quantile(counts, np.linspace(0, 1, 50))
    lo, hi = np.digitize(counts, edges, right=True) + 1, np.digitize(counts, edges)
    ours = bin_values(counts, 51)
    assert np.all((ours >= np.minimum(lo, hi)) & (ours <= hi))
    draws = np.stack([digitize(counts, edges) for _ in range(20)])
    assert np.all((draws >= np.minimum(lo, hi)) & (draws <= hi))  # same range as the official draws
    assert ours.min() >= 1 and ours.max() == 50


# --------------------------------------------------------------------------------------------
# exact resumption and padding
# --------------------------------------------------------------------------------------------


def test_flash_attention_names_load_identically(tmp_path, tiny_scgpt, model, padded_batch):
    flash = testing.make_tiny_scgpt(tmp_path / "flash", n_genes=60, n_layers=4, d_model=32, seed=0,
                                    flash_names=True)
    keys = torch.load(flash / "best_model.pt", weights_only=True).keys()
    assert any(".self_attn.Wqkv.weight" in k for k in keys) and not any("in_proj" in k for k in keys)
    other = load_model(flash)
    a = model.hidden_states(padded_batch, [3])[3]
    b = other.hidden_states(padded_batch, [3])[3]
    assert torch.equal(a, b)


def test_tiny_maker_is_deterministic_and_seeded(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        testing.make_tiny_scgpt(tmp_path / name, n_genes=10, n_layers=2, d_model=16, seed=seed)
    a, b, c = (torch.load(tmp_path / n / "best_model.pt", weights_only=True) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.embedding.weight"], c["encoder.embedding.weight"])


def test_describe_lists_ignored_decoder_weights(model):
    facts = model.describe()
    assert (facts["kind"], facts["n_layers"], facts["d_model"], facts["n_heads"]) == ("scgpt", 4, 32, 4)
    assert facts["special_tokens"] == {"<pad>": 60, "<cls>": 61, "<eoc>": 62}
    assert facts["ignored_weights"] and all(k.startswith("decoder.") for k in facts["ignored_weights"])
    assert model.token_symbols()[0] == "GENE1"


# --------------------------------------------------------------------------------------------
# tokenization against hand-computed examples
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_bin_model(tiny_scgpt, tmp_path_factory):
    """The tiny model with n_bins = 5 (quantile edges at 0, 1/3, 2/3, 1), small enough to bin by hand."""
    return load_model(_copy_with_args(tiny_scgpt, tmp_path_factory.mktemp("bins") / "m", n_bins=5))


def test_official_binning_by_hand(five_bin_model):
    # nonzero counts (GENE2..GENE8): 5, 1, 1, 3, 10, 2 -> sorted 1 1 2 3 5 10
    # edges = quantiles at 0, 1/3, 2/3, 1 = 1, 1+2/3, 3+1/3*2, 10 = [1, 1.667, 3.667, 10]
    # 5 -> 3; 3 -> 2; 2 -> 2; 1 equals edge 0: range 1..1 -> 1; 10 equals the last edge: range 4..4 -> 4
    cells = five_bin_model.tokenize(_one_cell([0, 5, 1, 1, 3, 10, 0, 2]))
    cls = five_bin_model.cls_id
    assert cells.input_ids[0].tolist() == [cls, 1, 2, 3, 4, 5, 7]
    assert cells.values[0].tolist() == [-2, 3, 1, 1, 2, 4, 2]
    assert cells.gene_mask[0].tolist() == [False] + [True] * 6
    assert cells.values[0].dtype == np.float32 and cells.input_ids[0].dtype == np.int64


def test_official_binning_ties_take_the_middle(five_bin_model):
    # 1 1 1 1 2: edges [1, 1, 1, 2]; each 1 equals three edges -> bins 1..3, middle 2
    # (ceil(3 - 0.5 * 3) = 2); 2 equals the last edge -> 4.
    assert bin_values(np.array([1, 1, 1, 1, 2.0]), 5).tolist() == [2, 2, 2, 2, 4]
    cells = five_bin_model.tokenize(_one_cell([1, 1, 1, 1, 2]))
    assert cells.values[0].tolist() == [-2, 2, 2, 2, 2, 4]
    rnd = bin_values(np.ones(200), 5, ties="random", rng=np.random.default_rng(0))
    assert set(rnd.tolist()) == {1, 2, 3, 4}  # all edges equal 1: official range 1..4


def test_official_sampling_keeps_cls_and_full_cell_bins(model):
    counts = np.arange(1, 21, dtype=np.float32)  # 20 genes, values 1..20
    full = model.tokenize(_one_cell(counts))
    bins = dict(zip(full.input_ids[0][1:].tolist(), full.values[0][1:].tolist()))
    a = model.tokenize(_one_cell(counts), max_length=6, seed=0)
    b = model.tokenize(_one_cell(counts), max_length=6, seed=0)
    c = model.tokenize(_one_cell(counts), max_length=6, seed=5)
    ids = a.input_ids[0]
    assert len(ids) == 6 and ids[0] == model.cls_id and a.values[0][0] == -2
    assert np.all(np.diff(ids[1:]) > 0)  # sampled genes stay in the data's gene order
    assert [bins[g] for g in ids[1:].tolist()] == a.values[0][1:].tolist()  # binned before sampling
    assert np.array_equal(ids, b.input_ids[0]) and not np.array_equal(ids, c.input_ids[0])
    assert a.info["cells_sampled"] == 1


def test_reference_mode_sorts_and_truncates(model):
    counts = [0, 5, 1, 1, 3, 10, 0, 2]
    cells = model.tokenize(_one_cell(counts), mode="reference", max_length=3)
    assert cells.input_ids[0].tolist() == [5, 1, 4]  # GENE6 (10), GENE2 (5), GENE5 (3)
    assert cells.values[0].tolist() == [10, 5, 3]
    assert cells.gene_mask[0].tolist() == [True, True, True]
    full = model.tokenize(_one_cell(counts), mode="reference")
    assert full.input_ids[0].tolist() == [5, 1, 4, 7, 2, 3]  # ties (1, 1) keep the data's order
    assert full.values[0].tolist() == [10, 5, 3, 2, 1, 1]
    assert full.info["max_length"] == 1200


def test_reference_mode_default_keeps_1200_genes(tmp_path):
    big = testing.make_tiny_scgpt(tmp_path / "big", n_genes=1300, n_layers=1, d_model=8, n_heads=2)
    m = load_model(big)
    counts = np.arange(1, 1301, dtype=np.float32)
    cells = m.tokenize(_one_cell(counts), mode="reference")
    assert len(cells.input_ids[0]) == 1200
    assert cells.values[0][0] == 1300 and cells.values[0][-1] == 101  # raw values, unbinned
    official = m.tokenize(_one_cell(counts))
    assert len(official.input_ids[0]) == 1200  # max_seq_len from args.json, <cls> included


def test_gene_mapping_skips_and_counts(model):
    symbols = ["GENE1", "NOTAGENE", "GENE3", "GENE3", "<cls>"]
    X = np.array([[1, 4, 2, 3, 7], [0, 5, 0, 0, 1]], dtype=np.float32)
    data = ad.AnnData(X=X, var=pd.DataFrame({"sym": symbols}, index=[f"g{i}" for i in range(5)]))
    cells = model.tokenize(data, mode="reference", gene_column="sym")
    assert len(cells) == 1 and cells.n_skipped == 1 and cells.cell_index.tolist() == [0]
    assert cells.input_ids[0].tolist() == [2, 0]  # duplicated GENE3 summed: 2 + 3 = 5 > 1
    assert cells.values[0].tolist() == [5, 1]
    info = cells.info
    assert (info["genes_mapped"], info["genes_unmapped"], info["duplicate_genes_summed"]) == (3, 2, 1)


def test_no_gene_overlap_is_an_input_error(model, tiny_adata):
    with pytest.raises(InputError, match="none of the 60 genes.*gene_symbols"):
        model.tokenize(tiny_adata, source="cells.h5ad")  # Ensembl var_names, symbols in a column


def test_non_count_input_is_refused_unless_normalized(model):
    data = _one_cell([0.5, 1.5, 2.0])
    with pytest.raises(InputError, match="not integer counts"):
        model.tokenize(data, source="x.h5ad")
    # 50 edges: 0.5 + k/49 (k < 25), then 1.5 + (k-24.5)/49; 1.5 lies above 25 edges -> 25;
    # the minimum is edge 0 only (-> 1), the maximum the last edge only (-> 50)
    assert model.tokenize(data, normalized=True).values[0].tolist()[1:] == [1, 25, 50]


# --------------------------------------------------------------------------------------------
# bad model directories
# --------------------------------------------------------------------------------------------


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    state = torch.load(dst / "best_model.pt", weights_only=True)
    edit(state)
    torch.save(state, dst / "best_model.pt")
    return dst


def test_missing_encoder_weight(tiny_scgpt, tmp_path):
    key = "transformer_encoder.layers.2.norm2.bias"
    d = _edit_weights(tiny_scgpt, tmp_path / "m", lambda s: s.pop(key))
    with pytest.raises(InputError, match=f"best_model.pt.*missing encoder weight '{key}'"):
        load_model(d)


def test_wrong_shape(tiny_scgpt, tmp_path):
    key = "transformer_encoder.layers.0.linear1.weight"
    d = _edit_weights(tiny_scgpt, tmp_path / "m", lambda s: s.__setitem__(key, s[key].T.contiguous()))
    with pytest.raises(InputError, match=rf"best_model.pt.*'{key}' has shape \(32, 64\), expected \(64, 32\)"):
        load_model(d)


def test_args_json_disagreeing_with_checkpoint(tiny_scgpt, tmp_path):
    with pytest.raises(InputError, match="best_model.pt.*missing encoder weight 'transformer_encoder.layers.4"):
        load_model(_copy_with_args(tiny_scgpt, tmp_path / "more", nlayers=5))
    with pytest.raises(InputError, match="best_model.pt.*unexpected encoder weight 'transformer_encoder.layers.3"):
        load_model(_copy_with_args(tiny_scgpt, tmp_path / "fewer", nlayers=3))
    with pytest.raises(InputError, match="args.json.*missing 'nheads'"):
        d = _copy_with_args(tiny_scgpt, tmp_path / "nokey")
        args = json.loads((d / "args.json").read_text())
        del args["nheads"]
        (d / "args.json").write_text(json.dumps(args))
        load_model(d)


def test_corrupted_weights_file(tiny_scgpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_scgpt, d)
    (d / "best_model.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="best_model.pt.*cannot read weights"):
        load_model(d)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("unpickled!",))


def test_pickled_code_is_refused(tiny_scgpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_scgpt, d)
    torch.save({"x": _Payload()}, d / "best_model.pt")
    with pytest.raises(InputError, match=r"best_model.pt.*refused, the checkpoint contains Python objects other "
                                         r"than tensors \(.*print\)") as e:
        load_model(d)
    assert "weights_only" not in str(e.value)  # torch's advice to disable the safety is not repeated


def test_bad_vocab_and_wrong_directories(tiny_scgpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_scgpt, d)
    (d / "vocab.json").write_text("{not json")
    with pytest.raises(InputError, match="vocab.json.*cannot read as JSON"):
        load_model(d)
    (d / "vocab.json").unlink()
    with pytest.raises(InputError, match="lacks vocab.json"):
        load_model(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty.*not a model directory"):
        load_model(empty)
    with pytest.raises(InputError, match="empty: not an scGPT model directory: lacks args.json, vocab.json, best_model.pt"):
        ScGPTAdapter.from_pretrained(empty)
    with pytest.raises(InputError, match="nowhere.*not found"):
        ScGPTAdapter.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(InputError, match="got a file"):
        ScGPTAdapter.from_pretrained(tiny_scgpt / "args.json")
