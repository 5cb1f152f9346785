"""Adapter conformance: one set of checks run against both model adapters.

What the tracer and the extractor rely on from any model (``models/base.py``): layer
numbering (-1 = embedding output, 0..n-1 = block outputs), the same range checks, a pass
resumed with ``run_from`` equal to a clean pass, hidden states of a cell independent of the
padding its batch needs, the last block computed at query positions only equal to the full
block there, and the adapter's dtype and device on every output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sccircuits.models import load_model, testing
from sccircuits.models.base import BlockRunner, ModelAdapter

ATOL = 1e-5


@pytest.fixture(scope="module", params=["geneformer", "scgpt"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(kind, tiny_geneformer, tiny_scgpt):
    return tiny_geneformer if kind == "geneformer" else tiny_scgpt


@pytest.fixture(scope="module")
def adapter(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def cells(adapter, kind):
    adata = testing.make_synthetic_adata(n_cells=6, seed=1)
    return adapter.tokenize(adata, gene_column="gene_symbols" if kind == "scgpt" else None)


@pytest.fixture(scope="module")
def padded(adapter, cells):
    assert len(set(cells.lengths().tolist())) > 1  # the batch really needs padding
    batch = adapter.batch(cells, range(len(cells)))
    assert not bool(batch.attention_mask.all())
    return batch


def test_interface(adapter, kind):
    assert isinstance(adapter, ModelAdapter) and isinstance(adapter, BlockRunner)
    assert adapter.kind == kind and adapter.n_layers == 4 and adapter.d_model == 32


def test_layer_convention_and_range_checks(adapter, padded):
    n = adapter.n_layers
    hs = adapter.hidden_states(padded, [n - 1, -1, 0, 0])
    assert sorted(hs) == [-1, 0, n - 1]
    B, L = padded.input_ids.shape
    assert all(h.shape == (B, L, adapter.d_model) for h in hs.values())
    torch.testing.assert_close(hs[-1], adapter.embed(padded), atol=0, rtol=0)
    torch.testing.assert_close(hs[0], adapter.run_from(-1, hs[-1], padded, until=0)[0], atol=ATOL, rtol=0)
    assert adapter.hidden_states(padded, []) == {}
    for bad in ([n], [-2]):
        with pytest.raises(ValueError, match="out of range"):
            adapter.hidden_states(padded, bad)
    with pytest.raises(ValueError, match="need -1 <= layer"):
        adapter.run_from(n - 1, hs[n - 1], padded, until=n - 2)
    with pytest.raises(ValueError, match="need -1 <= layer"):
        adapter.run_from(-2, hs[-1], padded)
    with pytest.raises(ValueError, match="out of range"):  # not computed: before the start ...
        adapter.run_from(1, hs[0], padded, layers=[1])
    with pytest.raises(ValueError, match="out of range"):  # ... or after ``until``
        adapter.run_from(0, hs[0], padded, until=1, layers=[2])


def test_run_from_equals_the_clean_pass(adapter, padded):
    n = adapter.n_layers
    clean = adapter.hidden_states(padded, range(-1, n))
    for s in range(-1, n - 1):
        resumed = adapter.run_from(s, clean[s], padded)
        assert sorted(resumed) == list(range(s + 1, n))
        for layer, h in resumed.items():
            torch.testing.assert_close(h, clean[layer], atol=ATOL, rtol=0)
    part = adapter.run_from(0, clean[0], padded, until=2, layers=[2])
    assert list(part) == [2]
    torch.testing.assert_close(part[2], clean[2], atol=ATOL, rtol=0)


def test_last_block_at_query_positions_equals_the_full_block(adapter, padded):
    """The tracer computes its last needed block only at the averaged positions (queries);
    keys and values still come from every position, so those rows equal the full pass."""
    n = adapter.n_layers
    clean = adapter.hidden_states(padded, range(n))
    lengths = padded.attention_mask.sum(1)
    g = torch.Generator().manual_seed(0)
    queries = torch.stack([torch.randint(0, int(l), (5,), generator=g) for l in lengths])  # (B, 5), repeats allowed
    for s, until in ((0, n - 1), (1, 2), (n - 2, n - 1)):
        out = adapter.run_from(s, clean[s], padded, until=until, queries=queries)
        assert out[until].shape == (len(queries), 5, adapter.d_model)
        want = torch.gather(clean[until], 1, queries[..., None].expand(-1, -1, adapter.d_model))
        torch.testing.assert_close(out[until], want, atol=ATOL, rtol=0)
        for layer in range(s + 1, until):  # earlier blocks stay full
            torch.testing.assert_close(out[layer], clean[layer], atol=ATOL, rtol=0)


def test_blocks_are_bit_equal_across_thread_counts(adapter, padded):
    """A Ray worker and a local run use different torch thread counts and must give bit-equal
    statistics: full blocks and blocks at a few query positions (torch's CPU attention kernel
    changes its reduction with the thread count below 32 queries) do not depend on it."""
    n = adapter.n_layers
    queries = torch.zeros(len(padded.attention_mask), 3, dtype=torch.long)
    queries[:, 1], queries[:, 2] = 1, 2
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            h = adapter.hidden_states(padded, [0])[0]
            outs.append((adapter.run_from(0, h, padded, until=n - 1), adapter.run_from(0, h, padded, until=n - 1,
                                                                                      queries=queries)))
    finally:
        torch.set_num_threads(threads)
    for full, few in outs[1:]:
        for layer in full:
            assert torch.equal(full[layer], outs[0][0][layer]), layer
            assert torch.equal(few[layer], outs[0][1][layer]), layer


def test_patch_changes_only_its_cell_and_later_layers(adapter, padded):
    clean = adapter.hidden_states(padded, range(adapter.n_layers))
    patched = clean[1].clone()
    pos = int(torch.nonzero(padded.gene_mask[0])[0])
    patched[0, pos] += 1.0
    out = adapter.run_from(1, patched, padded)
    assert set(out) == {2, 3}
    assert (out[3][0] - clean[3][0]).abs().max().item() > 1e-3
    torch.testing.assert_close(out[3][1:], clean[3][1:], atol=ATOL, rtol=0)  # other cells untouched


def test_padding_invariance(adapter, cells):
    last = adapter.n_layers - 1
    short, long_ = int(np.argmin(cells.lengths())), int(np.argmax(cells.lengths()))
    n = len(cells.input_ids[short])
    alone = adapter.hidden_states(adapter.batch(cells, [short]), [1, last])
    both_batch = adapter.batch(cells, [long_, short])
    both = adapter.hidden_states(both_batch, [1, last])
    assert both_batch.input_ids.shape[1] > n
    for layer in (1, last):
        torch.testing.assert_close(both[layer][1, :n], alone[layer][0], atol=ATOL, rtol=0)
    resumed = adapter.run_from(1, both[1], both_batch, layers=[last])[last]
    torch.testing.assert_close(resumed[1, :n], alone[last][0], atol=ATOL, rtol=0)


def test_dtype_and_device(model_dir, adapter, padded):
    low = load_model(model_dir, dtype="bfloat16")
    assert low.dtype == torch.bfloat16 and low.device == torch.device("cpu")
    clean = low.hidden_states(padded, [-1, 1, 3])
    assert all(h.dtype == torch.bfloat16 and h.device == low.device for h in clean.values())
    assert torch.isfinite(clean[3].float()).all()
    # a float32 state is cast to the adapter's dtype before the blocks run
    from_fp32 = low.run_from(1, clean[1].float(), padded)[3]
    assert from_fp32.dtype == torch.bfloat16
    assert torch.equal(from_fp32, clean[3])  # bf16 values round-trip through fp32 exactly
    ref = adapter.hidden_states(padded, [3])[3]
    real = padded.attention_mask
    corr = torch.corrcoef(torch.stack([clean[3][real].float().flatten(), ref[real].flatten()]))[0, 1]
    assert corr > 0.99
