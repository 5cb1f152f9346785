"""The tracer on real tiny models: exactness against a naive loop, invariances, shards, resume,
errors, CLI. Models come from conftest (4 layers, d_model 32); SAEs are random TopK SAEs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from naive_reference import assert_same_edges, naive_edges, naive_observations
from trace_helpers import random_saes, write_cells, write_saes
from sccircuits.errors import ConfigError, InputError
from sccircuits.models import load_model
from sccircuits.rundir import RunDir
from sccircuits.sae import load_saes
from sccircuits.trace import feature_frequencies, load_trace, merge, trace

KEY = ["source_layer", "source_feature", "target_layer", "target_feature"]
TOK = {"geneformer": {}, "scgpt": {"gene_column": "gene_symbols"}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace_inputs")
    saes = random_saes([0, 1, 2, 3], d_in=32, d_sae=64, k=8, seed=1)
    return {"root": root, "cells": write_cells(root / "cells.h5ad", n_cells=24),
            "ours": write_saes(saes, root / "saes_ours"), "bio": write_saes(saes, root / "saes_bio", layout="bio")}


def _frequent_features(model_dir, saes_dir, cells_path, layers, n, mode, tok) -> str:
    from sccircuits.data import read_cells

    adapter = load_model(model_dir)
    cells = adapter.tokenize(read_cells(cells_path)[:10].copy(), mode=mode, **tok)
    freq = feature_frequencies(adapter, load_saes(saes_dir), cells, layers, 8, progress=False)
    return ";".join(f"{l}:" + ",".join(str(int(f)) for f in np.argsort(-freq[l], kind="stable")[:n]) for l in layers)


# ------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("kind", ["geneformer", "scgpt"])
def test_compat_mode_matches_naive_published_loop(kind, inputs, tiny_geneformer, tiny_scgpt, tmp_path):
    """Reference tokenization + bio-sae SAEs: capped edges and d equal the naive loop's."""
    model_dir = tiny_geneformer if kind == "geneformer" else tiny_scgpt
    feats = _frequent_features(model_dir, inputs["bio"], inputs["cells"], [0, 1], 4, "reference", TOK[kind])
    res = trace(model=model_dir, data=inputs["cells"], saes=inputs["bio"], out=tmp_path / "run", compat="reference",
                features=feats, n_cells=10, batch_size=5, checkpoint_every=4, null_ablation=False, progress=False,
                **TOK[kind])
    ours = res.edges[res.edges.in_cap].reset_index(drop=True)

    from sccircuits.data import read_cells

    adapter = load_model(model_dir)
    cells = adapter.tokenize(read_cells(inputs["cells"])[:10].copy(), mode="reference", **TOK[kind])
    spec = {int(p.split(":")[0]): [int(x) for x in p.split(":")[1].split(",")] for p in feats.split(";")}
    obs = naive_observations(adapter, load_saes(inputs["bio"]), cells, spec)
    ref = naive_edges(obs, top_n=50, min_cells=2)
    assert len(ref) > 20
    assert_same_edges(ours, ref)
    # one full pass per (cell, active feature) there; here a clean pass per batch + batched ablations
    assert res.metrics["ablations"] == obs["forward_passes"] - 10
    assert res.metrics["ablation_forward_passes"] < res.metrics["ablations"]


def test_batch_size_and_feature_order_do_not_change_results(inputs, tiny_geneformer, tmp_path):
    common = dict(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], n_cells=12,
                  null_ablation=False, criterion="published", progress=False)
    a = trace(out=tmp_path / "a", features="0:2,5,12,28;2:19,25", batch_size=7, checkpoint_every=12, **common)
    b = trace(out=tmp_path / "b", features="2:25,19;0:28,12,5,2", batch_size=1, checkpoint_every=5, **common)
    assert len(a.edges) > 10
    pd.testing.assert_frame_equal(a.edges[KEY], b.edges[KEY])
    np.testing.assert_allclose(a.edges["cohens_d"], b.edges["cohens_d"], rtol=1e-5)
    assert a.edges["in_cap"].tolist() == b.edges["in_cap"].tolist()


# ------------------------------------------------------------------------ shards and resume
RUN_OPTS = dict(features="0:5,13,28;1:3,14", n_cells=16, batch_size=4, checkpoint_every=3, null_ablation=True)


@pytest.fixture(scope="module")
def single_run(inputs, tiny_geneformer, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], out=out, progress=False, **RUN_OPTS)
    return out


def _assert_same_trace(run_a, run_b):
    for ta, tb in zip(load_trace(run_a), load_trace(run_b)):
        pd.testing.assert_frame_equal(ta, tb, check_exact=True)
    with np.load(Path(run_a) / "trace" / "accumulators.npz") as za, np.load(Path(run_b) / "trace" / "accumulators.npz") as zb:
        for k in za.files:
            if not k.startswith("counter_compute"):
                assert np.array_equal(za[k], zb[k]), k


def test_shards_then_merge_equal_single_run_exactly(inputs, tiny_geneformer, single_run, tmp_path):
    for i in range(3):
        res = trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], out=tmp_path / f"s{i}",
                    shard=f"{i}/3", progress=False, **RUN_OPTS)
        assert res.edges is None
    with pytest.raises(InputError, match="missing"):
        merge([tmp_path / "s0", tmp_path / "s2"], out=tmp_path / "m")
    merged = merge([tmp_path / f"s{i}" for i in range(3)], out=tmp_path / "m")
    assert len(merged.edges) > 0 and merged.null["n_tests"].sum() > 0
    _assert_same_trace(single_run, tmp_path / "m")
    assert RunDir(tmp_path / "m").is_complete("trace")


def test_merge_of_shards_from_before_the_layernorm_option_says_live(inputs, tiny_geneformer, tmp_path):
    """Shards written before ``layernorm`` existed (no key in their metadata) were traced with
    live LayerNorms: the merged manifest must say so, not today's default."""
    import json

    for i in range(2):
        trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], out=tmp_path / f"s{i}",
              shard=f"{i}/2", progress=False, layernorm="live", **RUN_OPTS)
        for f in (tmp_path / f"s{i}" / "trace").glob("trace_meta*.json"):
            meta = json.loads(f.read_text())
            del meta["config"]["layernorm"]
            f.write_text(json.dumps(meta))
    merge([tmp_path / "s0", tmp_path / "s1"], out=tmp_path / "m")
    assert RunDir(tmp_path / "m").stage("trace")["config"]["layernorm"] == "live"


def test_sigkill_then_resume_gives_the_same_edges(inputs, tiny_geneformer, single_run, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import time
        from sccircuits.trace import engine, trace
        run_cells = engine.AblationEngine.run_cells
        def slow(self, *a, **k):
            time.sleep(1.5)
            return run_cells(self, *a, **k)
        engine.AblationEngine.run_cells = slow
        trace(model={str(tiny_geneformer)!r}, data={str(inputs['cells'])!r}, saes={str(inputs['ours'])!r},
              out={str(out)!r}, progress=False, **{RUN_OPTS!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    blocks = out / "trace" / "blocks"
    deadline = time.time() + 300
    while time.time() < deadline and not (blocks.is_dir() and list(blocks.glob("block_*.npz"))):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(blocks.glob("block_*.npz"))
    assert 1 <= len(done) < 6  # 16 cells / 3 per block = 6 blocks: killed part-way
    assert not (out / "trace" / "edges.parquet").exists()
    assert RunDir(out).stage("trace")["status"] == "running"
    trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], out=out, progress=False, **RUN_OPTS)
    _assert_same_trace(single_run, out)
    assert RunDir(out).stage("trace").get("resumed_from")


# ------------------------------------------------------------------------ run directory + labels
def test_run_directory_mode_uses_annotation_labels(inputs, tiny_geneformer, tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.begin_stage("extract", {"gene_column": None}, model_path=str(tiny_geneformer), data_path=str(inputs["cells"]))
    rd.complete_stage("extract")
    write_saes(random_saes([0, 2], d_in=32, seed=1), rd.path / "saes")
    outputs = []
    for layer in (0, 2):
        f = np.arange(64)
        cat = pd.DataFrame({"feature": f, "fire_count": np.full(64, 5), "activation_freq": np.full(64, 0.1),
                            "richness": (f % 7).astype(float), "label_id": [f"GO:{layer}{i:05d}" for i in f],
                            "label_name": [f"process {layer}-{i}" for i in f]})
        (rd.path / "annotation").mkdir(exist_ok=True)
        cat.to_parquet(rd.path / "annotation" / f"layer{layer:02d}_catalog.parquet")
        outputs.append(f"annotation/layer{layer:02d}_catalog.parquet")
    rd.begin_stage("annotate", {})
    rd.complete_stage("annotate", outputs)
    res = trace(tmp_path / "run", n_features=3, n_cells=8, null_ablation=False, criterion="published", progress=False)
    m = rd.stage("trace")
    assert m["status"] == "complete" and m["metrics"]["source_features"] == {"0": [6, 13, 20]}  # richness 6
    assert m["metrics"]["ablations"] > 0 and m["metrics"]["clean_forward_passes"] >= 1
    e = res.edges
    assert len(e) > 0 and set(e["source_layer"]) == {0} and set(e["target_layer"]) == {2}
    assert (e["source_label"] == [f"process 0-{f}" for f in e["source_feature"]]).all()
    assert (e["target_label_id"] == [f"GO:2{f:05d}" for f in e["target_feature"]]).all()
    assert set(res.features["distance"]) == {2}


# ------------------------------------------------------------------------ errors
def test_clear_errors(inputs, tiny_geneformer, tmp_path):
    common = dict(model=tiny_geneformer, data=inputs["cells"], n_cells=6, progress=False, null_ablation=False, criterion="published")
    small = write_saes(random_saes([0, 2], d_in=16), tmp_path / "small")
    with pytest.raises(InputError, match="d_in 16 but the model has d_model 32"):
        trace(saes=small, out=tmp_path / "r1", features="0:1", **common)
    gap = write_saes(random_saes([0, 2, 3], d_in=32), tmp_path / "gap")
    with pytest.raises(InputError, match=r"no SAE for source layer\(s\) \[1\]"):
        trace(saes=gap, out=tmp_path / "r2", source_layers=[1], **common)
    with pytest.raises(ConfigError, match=r"unknown feature id\(s\) \[64\]"):
        trace(saes=gap, out=tmp_path / "r3", features="0:3,64", **common)
    # features that can never fire: pre-activation pushed far below every other latent
    saes = random_saes([0, 2], d_in=32)
    with __import__("torch").no_grad():
        saes[0].b_enc[:2] = -1e6
    dead = write_saes(saes, tmp_path / "dead")
    with pytest.raises(InputError, match="none of the 2 source features fires"):
        trace(saes=dead, out=tmp_path / "r4", features="0:0,1", **common)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        trace(saes=dead, out=tmp_path / "r5", features="0:0,5,9", **common)
    assert any("layer 0: [0]" in str(x.message) for x in w)


def test_cli_trace_and_error_exit_code(inputs, tiny_geneformer, tmp_path):
    args = ["trace", "--model", str(tiny_geneformer), "--data", str(inputs["cells"]), "--saes", str(inputs["ours"]),
            "--out", str(tmp_path / "cli"), "--n-cells", "6", "--no-null-ablation", "--criterion", "published"]
    from typer.testing import CliRunner

    from sccircuits.cli import app

    ok = CliRunner().invoke(app, args + ["--features", "0:1,5;2:3", "--top-per-layer", "0"])
    assert ok.exit_code == 0, ok.output
    assert "edges" in ok.output and (tmp_path / "cli" / "trace" / "edges.parquet").is_file()
    bad = subprocess.run([sys.executable, "-m", "sccircuits.cli"] + args + ["--features", "0:999"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown feature id(s) [999]" in bad.stderr


def test_rerun_with_other_thresholds_reuses_statistics(inputs, tiny_geneformer, single_run, tmp_path, monkeypatch):
    import shutil

    from sccircuits.trace import engine

    run = tmp_path / "copy"
    shutil.copytree(single_run, run)
    before = load_trace(run)[0]
    monkeypatch.setattr(engine.AblationEngine, "run_cells", lambda *a, **k: pytest.fail("recomputed"))
    opts = {**RUN_OPTS}
    res = trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["ours"], out=run, progress=False,
                d_threshold=2.0, top_per_layer=0, **opts)
    strong = before[before.cohens_d.abs() > 2.0].reset_index(drop=True)
    pd.testing.assert_frame_equal(res.edges.drop(columns="in_cap"), strong.drop(columns="in_cap"), check_exact=True)
    assert res.edges["in_cap"].all()
