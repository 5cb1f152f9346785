"""Planner: pass counts equal the tracer's manifest, memory/batch sizing, dtype agreement."""

from __future__ import annotations

import numpy as np
import pytest
from trace_helpers import random_saes, write_cells, write_saes

from sccircuits.errors import ConfigError
from sccircuits.trace.plan import (compare_accumulators, count_passes, dtype_agreement, engine_batches, memory_estimate,
                             plan_trace, suggest_batch_size)
from sccircuits.rundir import RunDir
from sccircuits.trace import trace
from sccircuits.trace.edges import Thresholds

OPTS = dict(n_cells=8, n_features=3, selection="frequency", checkpoint_every=3, batch_size=4)


@pytest.fixture(scope="module")
def inputs(tiny_geneformer, tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return dict(model=tiny_geneformer, data=write_cells(root / "cells.h5ad", n_cells=12),
                saes=write_saes(random_saes([0, 1, 3], 32, 64, 8), root / "saes"))


def test_engine_batches_sort_by_length_then_cut():
    assert engine_batches(np.array([5, 3, 4, 9]), [0, 1, 2], 2) == [[0, 2], [1]]


def test_count_passes_by_hand():
    # cells 0,1,2 with lengths 5,3,4; layer 0 fires 2, 0, 1 traced features; real jobs, and as many null jobs
    c = count_passes(np.array([5, 3, 4]), {0: np.array([2, 0, 1])}, 3, 3, 2, {0: np.array([2, 0, 1])})
    # batches [0, 2] and [1]; batch 1 jobs lengths [5, 5, 4] x 2 kinds -> chunks [5,5] [4,5] [5,4]
    assert c.clean_forward_passes == 2 and c.clean_tokens == 2 * 5 + 1 * 3
    assert c.ablations == {0: 3} and c.ablation_forward_passes == {0: 3}
    assert c.ablated_sequences == {0: 6} and c.ablated_tokens == {0: 30}
    # blocks of one cell: three batches, ablation passes ceil(4/2) + 0 + ceil(2/2)
    c = count_passes(np.array([5, 3, 4]), {0: np.array([2, 0, 1])}, 3, 1, 2, {0: np.array([2, 0, 1])})
    assert c.clean_forward_passes == 3 and c.ablation_forward_passes == {0: 3}


@pytest.mark.parametrize("clean_batch_size", [None, 2])
def test_plan_counts_equal_trace_manifest(inputs, tmp_path, clean_batch_size):
    opts = {**OPTS, "clean_batch_size": clean_batch_size}
    report = plan_trace(**inputs, calibrate_cells=2, progress=False, **opts)
    trace(**inputs, out=tmp_path / "run", progress=False, **opts)
    metrics = RunDir(tmp_path / "run", create=False).stage("trace")["metrics"]
    for key, value in report.passes.totals().items():
        assert value == metrics[key], key
    assert report.passes.exact and report.estimated_seconds > 0
    # the manifest records the memory bound, its formula and the shape it was evaluated at
    mem, shape = metrics["memory_estimate_mib"], metrics["memory_estimate_shape"]
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"), abs=0.5) and mem["total"] > 0
    assert shape["B"] == OPTS["batch_size"] and shape["C"] == (clean_batch_size or OPTS["batch_size"]) and shape["K"] == 2
    assert "B = batch_size" in metrics["memory_estimate_formula"]
    assert report.calibration["ablated_s_per_token"] > 0
    text = str(report)
    assert f"clean: {metrics['clean_forward_passes']}" in text and "peak memory" in text
    # the upper bound (no firing pass) is never below the real counts
    bound = plan_trace(**inputs, firing=False, calibrate_cells=0, progress=False, **opts)
    assert not bound.passes.exact and "UPPER BOUND" in str(bound)
    for key, value in bound.passes.totals().items():
        assert value >= metrics[key], key
    assert bound.passes.ablations == {s: 8 * 3 for s in (0, 1)}


def test_plan_counts_the_null_matching_pass(inputs, tmp_path):
    """Explicit features, no annotation, feature null: the trace runs a clean pass over the first
    null_match_cells cells to find the frequencies to match; the plan's total counts it."""
    opts = {k: v for k, v in OPTS.items() if k not in ("n_features", "selection")}
    opts.update(features="0:2,5,9,12;1:3,7,20", null_match_cells=6)  # ceil(6 / batch_size 4) = 2 passes
    report = plan_trace(**inputs, calibrate_cells=0, progress=False, **opts)
    trace(**inputs, out=tmp_path / "run", progress=False, **opts)
    metrics = RunDir(tmp_path / "run", create=False).stage("trace")["metrics"]
    assert metrics["null_match_forward_passes"] == 2
    for key, value in report.passes.totals().items():
        assert value == metrics[key], key
    assert report.passes.totals()["forward_passes"] == metrics["forward_passes"]
    assert "null matching" in str(report) and f"total: {metrics['forward_passes']} forward passes" in str(report)
    # only then: with the mixed null nothing is matched, and the plan counts no such pass
    mixed = plan_trace(**inputs, calibrate_cells=0, progress=False, **{**opts, "null_directions": "mixed"})
    assert mixed.passes.null_match_forward_passes == 0 and "null matching" not in str(mixed)


def test_plan_and_manifest_count_the_selection_pass(inputs, tmp_path):
    """--selection frequency without an annotation: prepare_trace runs a clean pass over all
    traced cells to find the frequencies to select by; the manifest's forward_passes and the
    plan's total both count it (and forward_passes_null_free, which the null does not change)."""
    opts = {**OPTS, "null_match_cells": 6}
    report = plan_trace(**inputs, calibrate_cells=0, progress=False, **opts)
    trace(**inputs, out=tmp_path / "run", progress=False, **opts)
    metrics = RunDir(tmp_path / "run", create=False).stage("trace")["metrics"]
    # ceil(8 cells / batch_size 4) = 2 selection passes; its frequencies serve the null too
    assert metrics["selection_forward_passes"] == 2 and metrics["null_match_forward_passes"] == 0
    assert metrics["forward_passes"] == (metrics["clean_forward_passes"] + metrics["ablation_forward_passes"]
                                         + metrics["null_match_forward_passes"] + metrics["selection_forward_passes"])
    for key, value in report.passes.totals().items():
        assert value == metrics[key], key
    assert report.passes.selection_forward_passes == 2
    assert "feature selection" in str(report) and f"total: {metrics['forward_passes']} forward passes" in str(report)
    # the selection pass is paid with or without the null: counted in the null-free total as well
    off = tmp_path / "nonull"
    trace(**inputs, out=off, progress=False, **{**opts, "null_ablation": False, "criterion": "published"})
    m_off = RunDir(off, create=False).stage("trace")["metrics"]
    assert m_off["selection_forward_passes"] == 2
    assert metrics["forward_passes_null_free"] == m_off["forward_passes"]
    # explicit features select nothing: no such pass
    explicit = plan_trace(**inputs, calibrate_cells=0, progress=False,
                          **{k: v for k, v in opts.items() if k not in ("n_features", "selection")}, features="0:2,5;1:3")
    assert explicit.passes.selection_forward_passes == 0 and "feature selection" not in str(explicit)


def test_memory_estimate_components():
    kw = dict(n_params=1000, d_model=8, d_ff=32, batch_size=4, max_length=10, n_layers_kept=3,
              n_targets_max=2, sae_sizes={0: 16, 1: 16, 3: 16}, n_features={0: 5, 1: 5},
              targets={0: [1, 3], 1: [3]}, n_kinds=2, encode_chunk=100)
    m32, m16 = memory_estimate(dtype="float32", **kw), memory_estimate(dtype="bfloat16", **kw)
    assert m32["model"] == 4000 and m16["model"] == 2000
    assert m32["accumulators"] == 3 * 2 * 5 * 16 * 36  # 3 (s, t) pairs x 2 kinds x F x T x 36 bytes
    assert m32["saes"] == 3 * (2 * 8 * 16 + 16 + 24) * 4
    assert m32["encode"] == 100 * 16 * 8  # float32 pre-activations + top-k scratch; codes stay sparse
    assert m32["job_sums"] == 4 * 5 * 16 * 8 * (3 * 2 * 2 + 4)  # C F D x float64 x (3 K T + 4)
    # the null's decoder rows (per source layer), its stepped direction choice and its random rankings
    assert m32["null"] == 2 * 8 * 16 * 4 + max(1, 100 // 16) * 16 * 48 + 4 * 16 * 8
    assert memory_estimate(dtype="float32", **{**kw, "n_kinds": 1})["null"] == 0
    bigger = memory_estimate(dtype="float32", **{**kw, "batch_size": 8})
    assert bigger["clean_batch"] > m32["clean_batch"] and bigger["ablation_pass"] > m32["ablation_pass"]
    # the two knobs are separate: more cells per clean pass leave the ablation pass alone
    more_cells = memory_estimate(dtype="float32", **{**kw, "clean_batch_size": 16})
    assert more_cells["clean_batch"] > m32["clean_batch"] and more_cells["ablation_pass"] == m32["ablation_pass"]
    # frozen LayerNorms: the recorded denominators (2 float32 per position and block) and one scratch
    frozen = memory_estimate(dtype="float32", **{**kw, "ln_blocks": 4})
    assert frozen["clean_batch"] - m32["clean_batch"] == 4 * 10 * (8 * 4 + 8 * 4)
    assert frozen["ablation_pass"] - m32["ablation_pass"] == 4 * 10 * 8 * 4
    # bf16/fp16: the LayerNorms compute in float32 (a float32 copy and its square or output)
    m16, frozen16 = (memory_estimate(dtype="bfloat16", **{**kw, "ln_blocks": n}) for n in (0, 4))
    assert frozen16["clean_batch"] - m16["clean_batch"] == 4 * 10 * (8 * 2 + 8 * 4 + 8 * 8)
    assert frozen16["ablation_pass"] - m16["ablation_pass"] == 4 * 10 * (8 * 4 + 8 * 8)


def test_suggest_batch_size():
    est = lambda B: {"fixed": 100, "per_row": 10 * B}  # noqa: E731
    assert suggest_batch_size(est, 1000, fraction=1.0) == 90
    assert suggest_batch_size(est, 1000, fraction=0.5) == 40
    assert suggest_batch_size(est, 50) == 1  # nothing fits: smallest batch


def test_compare_accumulators_identical_and_changed(inputs):
    from sccircuits.trace.plan import prepare_trace
    from sccircuits.trace.engine import AblationEngine, TracePlan

    setup = prepare_trace(**inputs, out=".", progress=False, **OPTS)
    plan = TracePlan(setup.features, setup.targets, True, 0, 4, 8192)
    acc = AblationEngine(setup.adapter, setup.saes, plan).run_cells(setup.cells, range(len(setup.cells)))
    th = Thresholds(min_cells=2)
    same = compare_accumulators(acc, acc, th)
    assert same["n_tests"] > 0 and same["max_abs_delta_d"] == 0 and same["edges_flipped"] == 0
    moved = acc.merge(acc.empty(acc.features, acc.targets, acc.target_sizes, ("real", "null"), acc.null_features))
    key = sorted(k for k in moved.pairs if k[0] == "real")[0]
    moved.pairs[key].mean[:] = -moved.pairs[key].mean  # every d of one (s, t) changes sign
    diff = compare_accumulators(acc, moved, th)
    assert diff["max_abs_delta_d"] > 0 and diff["edges_flipped"] > 0


def test_dtype_agreement_bfloat16_on_cpu(inputs):
    res = dtype_agreement(**inputs, dtype="bfloat16", n_cells=6, progress=False,
                          **{k: v for k, v in OPTS.items() if k != "n_cells"})
    assert res.n_cells == 6 and res.n_tests > 0
    assert res.max_abs_delta_d > 0  # bf16 rounding moves d
    assert 0 <= res.frac_edges_flipped <= 1 and res.edges_fp32 > 0
    assert "bfloat16 vs float32" in str(res)
    with pytest.raises(ConfigError):
        dtype_agreement(**inputs, dtype="float32", progress=False)
