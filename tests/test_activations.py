"""Activation extraction and the ActivationStore reader."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sccircuits.rundir import RunDir
from sccircuits.activations import ActivationStore, ExtractConfig, extract, plan_shards, select_cells
from sccircuits.config import parse_layers
from sccircuits.errors import ConfigError, InputError
from sccircuits.models import load_model


@pytest.fixture
def h5ad(tmp_path, tiny_adata):
    path = tmp_path / "cells.h5ad"
    tiny_adata.write_h5ad(path)
    return path


def small_cfg(**kw) -> ExtractConfig:
    """Tiny shards (~80 rows) so a 24-cell extraction spans several shards."""
    base = dict(batch_size=3, shard_mb=0.005, dtype="float32")
    base.update(kw)
    return ExtractConfig(**base)


def test_select_cells_first_n_random_and_stratified():
    assert select_cells(10, 4).tolist() == [0, 1, 2, 3]
    assert select_cells(10, None).tolist() == list(range(10))
    a, b = select_cells(100, 10, seed=1), select_cells(100, 10, seed=1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    groups = np.array(["x"] * 80 + ["y"] * 20)
    s = select_cells(100, 10, seed=0, groups=groups)
    assert (s < 80).sum() == 8 and (s >= 80).sum() == 2


def test_parse_layers_and_config_errors():
    assert parse_layers("all", n_layers=4, allow_all=True) == [0, 1, 2, 3]
    assert parse_layers("3, 0,3", n_layers=4) == [0, 3]
    with pytest.raises(ConfigError):
        parse_layers("0,9", n_layers=4)
    with pytest.raises(ConfigError):
        parse_layers("a,b", n_layers=4)
    with pytest.raises(ConfigError):
        ExtractConfig(dtype="int8")


def test_plan_shards_groups_whole_batches():
    n = np.array([5, 5, 5, 5, 5])
    shards = plan_shards(n, [[0, 1], [2, 3], [4]], rows_per_shard=12)
    assert [s["rows"] for s in shards] == [20, 5]
    assert shards[0]["batches"] == [[0, 1], [2, 3]]


def test_extract_matches_direct_forward_pass(tmp_path, h5ad, tiny_geneformer):
    store = extract(tmp_path / "run", tiny_geneformer, h5ad, small_cfg(layers="1,3", n_cells=10), progress=False)
    assert store.layers == [1, 3] and store.d_model == 32 and store.n_shards > 1
    assert store.cells().tolist() == list(range(10))

    # recompute layer 3 cell by cell and compare position by position
    model = load_model(tiny_geneformer)
    import anndata as ad

    tok = model.tokenize(ad.read_h5ad(h5ad)[:10].copy())
    expected = {}
    for i in range(len(tok)):
        b = model.batch(tok, [i])
        hs = model.hidden_states(b, [3])[3][0][b.gene_mask[0]]
        expected[int(tok.cell_index[i])] = (hs.numpy(), b.input_ids[0][b.gene_mask[0]].numpy())
    X = np.concatenate([x for x, _, _ in store.iter_batches(3, 64)])
    cells = store.cell_index()
    toks = store.token_ids()
    assert X.shape == (store.n_positions, 32) and store.n_positions == sum(len(v[1]) for v in expected.values())
    for c, (acts, tids) in expected.items():
        rows = cells == c
        np.testing.assert_allclose(X[rows], acts, rtol=1e-5, atol=1e-5)
        assert toks[rows].tolist() == tids.tolist()
    np.testing.assert_allclose(store.mean(3), X.astype(np.float64).mean(0), rtol=1e-10, atol=1e-10)
    assert store.mean(3).dtype == np.float64
    g = store.genes()
    assert set(g.token_id) == set(np.unique(toks).tolist())
    assert g.symbol.str.startswith("GENE").all()
    m = store.run.stage("extract")
    assert m["status"] == "complete" and m["metrics"]["n_positions"] == store.n_positions


def test_iter_batches_with_rows_and_sizes(tmp_path, h5ad, tiny_geneformer):
    store = extract(tmp_path / "run", tiny_geneformer, h5ad, small_cfg(layers="0"), progress=False)
    full = np.concatenate([x for x, _, _ in store.iter_batches(0, 1000)])
    sizes = [len(c) for _, c, _ in store.iter_batches(0, 37)]
    assert all(s == 37 for s in sizes[:-1]) and sum(sizes) == store.n_positions
    rows = np.array([store.n_positions - 1, 0, 5, 100])
    got = np.concatenate([x for x, _, _ in store.iter_batches(0, 2, rows=rows)])
    np.testing.assert_array_equal(got, full[np.sort(rows)])


def _tree(path: Path) -> dict[str, Path]:
    return {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}


def test_interrupted_extraction_resumes_to_identical_store(tmp_path, h5ad, tiny_geneformer):
    cfg = small_cfg(dtype="float16")
    ref = extract(tmp_path / "ref", tiny_geneformer, h5ad, cfg, progress=False)
    assert ref.n_shards >= 3

    class Stop(Exception):
        pass

    def interrupt(i):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        extract(tmp_path / "res", tiny_geneformer, h5ad, cfg, on_shard_done=interrupt, progress=False)
    with pytest.raises(InputError):  # an unfinished store cannot be read
        ActivationStore(tmp_path / "res")
    done_before = sorted(os.listdir(tmp_path / "res/activations/done"))
    assert done_before == ["shard00000.json", "shard00001.json"]

    seen = []
    extract(tmp_path / "res", tiny_geneformer, h5ad, cfg, on_shard_done=seen.append, progress=False)
    assert seen and 0 not in seen and 1 not in seen  # finished shards were skipped
    a, b = _tree(tmp_path / "ref/activations"), _tree(tmp_path / "res/activations")
    assert a.keys() == b.keys()
    for k in a:
        if k != "plan.json":  # plan holds the absolute run-independent paths only, compare anyway below
            assert filecmp.cmp(a[k], b[k], shallow=False), k
    assert (tmp_path / "ref/activations/plan.json").read_bytes() == (tmp_path / "res/activations/plan.json").read_bytes()


def test_changed_options_need_overwrite(tmp_path, h5ad, tiny_geneformer):
    extract(tmp_path / "run", tiny_geneformer, h5ad, small_cfg(n_cells=5), progress=False)
    with pytest.raises(InputError, match="overwrite"):
        extract(tmp_path / "run", tiny_geneformer, h5ad, small_cfg(n_cells=6), progress=False)
    store = extract(tmp_path / "run", tiny_geneformer, h5ad, small_cfg(n_cells=6), overwrite=True, progress=False)
    assert len(store.cells()) == 6


def test_extract_scgpt_reference_tokenization(tmp_path, h5ad, tiny_scgpt):
    store = extract(tmp_path / "run", tiny_scgpt, h5ad, small_cfg(layers="2", tokenization="reference", n_cells=4,
                                                                       gene_column="gene_symbols"),
                    progress=False)
    assert store.layers == [2] and store.n_positions > 0
    assert store.info["tokenization"] == "reference" and store.info["model_kind"] == "scgpt"


def test_bad_inputs_are_one_line_errors(tmp_path, h5ad, tiny_geneformer):
    with pytest.raises(InputError, match="only 24 cells"):
        extract(tmp_path / "r1", tiny_geneformer, h5ad, small_cfg(n_cells=100), progress=False)
    with pytest.raises(InputError, match="no obs column"):
        extract(tmp_path / "r2", tiny_geneformer, h5ad, small_cfg(n_cells=4, stratify_by="nope"), progress=False)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()  # a failed command leaves no empty run
    with pytest.raises(InputError, match="no manifest.json"):
        ActivationStore(tmp_path / "r1")
    RunDir(tmp_path / "r3").begin_stage("extract", small_cfg())
    with pytest.raises(InputError, match="has not completed"):
        ActivationStore(tmp_path / "r3")


def test_cli_extract(tmp_path, h5ad, tiny_geneformer):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    res = CliRunner().invoke(app, ["extract", "--model", str(tiny_geneformer), "--data", str(h5ad), "--layers",
                                   "0,2", "--n-cells", "6", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    store = ActivationStore(tmp_path / "run")
    assert store.layers == [0, 2] and len(store.cells()) == 6
    assert store.dtype == np.float16 and torch.is_tensor(torch.from_numpy(store.mean(0)))
