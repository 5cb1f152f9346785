"""Frozen LayerNorms (``--layernorm frozen``): ablated passes divide by the clean pass's
LayerNorm denominators, so an observation leaves out the whole-stream rescaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sccircuits.errors import ConfigError
from sccircuits.models.planted import calibration, make_planted
from sccircuits.trace import Accumulators, Thresholds, TraceConfig, trace


@pytest.fixture(scope="module", params=["geneformer", "scgpt"])
def planted(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"frozen_{request.param}")
    return make_planted(path, request.param, n_cells=30, n_genes=60, d_model=96, n_source_dict=24, n_traced=12,
                        n_planted=6, n_targets=12, strengths=(0.3, 1.0), seed=0)


def _adapter_and_batch(pc):
    from sccircuits.data import read_cells
    from sccircuits.models import load_model

    adapter = load_model(pc.model)
    cells = adapter.tokenize(read_cells(pc.data), **({"gene_column": pc.gene_column} if pc.gene_column else {}))
    return adapter, adapter.batch(cells, list(range(6)))


def test_recorded_denominators_reproduce_the_clean_pass(planted):
    """Recording the denominators gives the model's own clean pass, and continuing from a clean
    state with them frozen gives that pass again (nothing perturbed, nothing changes)."""
    adapter, batch = _adapter_and_batch(planted)
    s, t = planted.source_layer, planted.target_layer
    with torch.inference_mode():
        plain = adapter.hidden_states(batch, [s, t])
        den: dict = {}
        rec = adapter.hidden_states(batch, [s, t], ln_record=den)
        again = adapter.run_from(s, rec[s], batch, until=t, layers=[t], ln_denoms=den)[t]
    assert sorted(den) == list(range(t + 1)) and den[t].shape == (*batch.input_ids.shape, 2)
    torch.testing.assert_close(rec[t], plain[t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, rec[t], rtol=0, atol=0)


def test_frozen_continuation_is_linear_where_the_model_is(planted):
    """After the source layer the planted blocks are linear except for their LayerNorms (zeroed
    attention, FFN units kept in their linear range): with the denominators frozen the change of
    the output is exactly linear in the perturbation; with live LayerNorms it is not."""
    adapter, batch = _adapter_and_batch(planted)
    s, t = planted.source_layer, planted.target_layer
    with torch.inference_mode():
        den: dict = {}
        clean = adapter.hidden_states(batch, [s, t], ln_record=den)
        delta = torch.randn(clean[s].shape, generator=torch.Generator().manual_seed(0)) * 0.01
        delta -= delta.mean(-1, keepdim=True)
        gm = batch.gene_mask
        delta *= gm[..., None]  # the planted units' linear range is set on gene positions
        change = {}
        for mode, kw in (("frozen", {"ln_denoms": den}), ("live", {})):
            base = adapter.run_from(s, clean[s], batch, until=t, layers=[t], **kw)[t][gm]
            one = adapter.run_from(s, clean[s] + delta, batch, until=t, layers=[t], **kw)[t][gm] - base
            two = adapter.run_from(s, clean[s] + 2 * delta, batch, until=t, layers=[t], **kw)[t][gm] - base
            change[mode] = float((two - 2 * one).norm() / one.norm())
    assert change["frozen"] < 2e-4, change
    assert change["live"] > 20 * change["frozen"], change


def test_frozen_layernorm_removes_the_off_target_false_edges(planted, tmp_path):
    """With no magnitude floor the live trace passes planted sources' off-target effects (their
    units change the stream's norm, the LayerNorms rescale every target; no null draw has them,
    so the estimate misses them); frozen, those effects are gone and the planted edges stay."""
    pc = planted
    out = {}
    for ln in ("live", "frozen"):
        trace(model=pc.model, data=pc.data, saes=pc.saes, out=tmp_path / ln, n_cells=30, features=pc.features_spec(),
              progress=False, layernorm=ln, **({"gene_column": pc.gene_column} if pc.gene_column else {}))
        acc, _ = Accumulators.load(tmp_path / ln / "trace" / "accumulators.npz")
        out[ln] = calibration(acc, pc.truth, Thresholds.from_config(TraceConfig()),
                              settings=((0.05, 0.05), (0.05, 0.0))).set_index("min_rel_change")
    live, frozen = out["live"], out["frozen"]
    assert live.loc[0.0, "fp_off_target"] >= 3
    assert live.loc[0.0, "estimated_fdr"] < 0.5 * live.loc[0.0, "actual_fdr"]
    assert frozen.loc[0.05, "false_positives"] == 0 and frozen.loc[0.05, "recall"] >= live.loc[0.05, "recall"]
    assert frozen.loc[0.0, "fp_off_target"] < live.loc[0.0, "fp_off_target"] / 3


def test_layernorm_option_validated_and_compat_keeps_live():
    assert TraceConfig().layernorm == "frozen"
    assert TraceConfig(compat="reference").layernorm == "live"
    with pytest.raises(ConfigError, match="layernorm"):
        TraceConfig(compat="reference", layernorm="frozen")
    with pytest.raises(ConfigError, match="layernorm must be one of"):
        TraceConfig(layernorm="fixed")


def test_frozen_and_live_traces_never_share_checkpoints():
    from sccircuits.models.base import TokenizedCells
    from sccircuits.trace.stage import _fingerprint

    cells = TokenizedCells([np.arange(5)], None, [np.ones(5, bool)], np.arange(1))
    feats, targets = {0: np.arange(3)}, {0: [1]}
    fp = {ln: _fingerprint(TraceConfig(layernorm=ln), feats, targets, cells, {}) for ln in ("live", "frozen")}
    assert fp["live"] != fp["frozen"]


def _random_block(dtype, d=64, d_ff=128, heads=4):
    from sccircuits.models.base import PostLNBlock

    g = torch.Generator().manual_seed(0)
    lin = lambda o, i: (torch.randn(o, i, generator=g).div(i ** 0.5).to(dtype),  # noqa: E731
                        (0.1 * torch.randn(o, generator=g)).to(dtype))
    ln = lambda: ((1 + 0.1 * torch.randn(d, generator=g)).to(dtype), (0.1 * torch.randn(d, generator=g)).to(dtype), 1e-12)  # noqa: E731
    return PostLNBlock(q=lin(d, d), k=lin(d, d), v=lin(d, d), out=lin(d, d), norm1=ln(), ffn_in=lin(d_ff, d),
                       ffn_out=lin(d, d_ff), norm2=ln(), n_heads=heads, activation=torch.nn.functional.gelu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_recording_layernorm_in_low_precision_matches_the_models_own(dtype, scale):
    """bf16/fp16 models: the recording (and frozen) LayerNorm computes its statistics in float32
    as F.layer_norm does, so it neither overflows (fp16: a residual entry above 256 squares past
    65504) nor loses more precision than the model's own LayerNorm; the denominators are float32."""
    from sccircuits.models.base import run_post_ln_block

    block = _random_block(dtype)
    ref_block = _random_block(torch.float32)
    x = (scale * torch.randn(3, 10, 64, generator=torch.Generator().manual_seed(1))).to(dtype)
    with torch.inference_mode():
        ref = run_post_ln_block(ref_block, x.float(), None)
        live = run_post_ln_block(block, x, None)
        rec: list = []
        recorded = run_post_ln_block(block, x, None, record=rec)
        frozen = run_post_ln_block(block, x, None, ln_denoms=rec[0])
    assert rec[0].dtype == torch.float32 and bool(torch.isfinite(rec[0]).all())
    assert recorded.dtype == dtype
    err_live = float((live.float() - ref).abs().max())
    err_rec = float((recorded.float() - ref).abs().max())
    assert err_rec <= 1.5 * err_live + 1e-3, (err_rec, err_live)
    torch.testing.assert_close(frozen, recorded, rtol=0, atol=0)
