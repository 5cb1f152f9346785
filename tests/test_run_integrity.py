"""Runs that cannot lie: the run lock, the manifest written last, content fingerprints of inputs,
honest messages, outputs others can read and share. Tiny models from conftest; random SAEs."""

from __future__ import annotations

import os
import platform
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trace_helpers import random_saes, write_cells, write_saes
from sccircuits.activations import ActivationStore, ExtractConfig, extract
from sccircuits.errors import ConfigError, InputError
from sccircuits.rundir import (RunDir, RunLockedError, atomic_write_json, atomic_write_parquet, content_fingerprint,
                               file_fingerprint, read_json)
from sccircuits.trace import load_trace, trace

OPTS = dict(features="0:5,13,28;1:3,14", n_cells=8, batch_size=4, checkpoint_every=2, null_ablation=False, criterion="published")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    return {"root": root, "cells": write_cells(root / "cells.h5ad", n_cells=12),
            "saes": write_saes(random_saes([0, 1, 2, 3], d_in=32, seed=1), root / "saes")}


def _python(script: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(cond, proc, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"subprocess ended before {what}: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------ fingerprints
def test_fingerprints_follow_content_not_path(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 1000)
    b = tmp_path / "sub" / "b.bin"
    b.parent.mkdir()
    b.write_bytes(b"x" * 1000)
    assert file_fingerprint(a) == file_fingerprint(b)  # copied / moved: same inputs
    a.write_bytes(b"x" * 999 + b"y")  # overwritten in place, same size
    assert file_fingerprint(a) != file_fingerprint(b)
    # large files: sampled, but every sampled region and the size count
    big = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    data = bytearray(rng.integers(0, 256, 70 * 2**20, dtype=np.uint8).tobytes())
    big.write_bytes(data)
    fp = file_fingerprint(big)
    data[-1] ^= 1
    big.write_bytes(data)
    assert file_fingerprint(big) != fp
    d = tmp_path / "dir"
    d.mkdir()
    (d / "w.bin").write_bytes(b"1")
    (d / ".lock").write_text("ignored")
    before = content_fingerprint(d)
    (d / ".lock").write_text("changed")
    assert content_fingerprint(d) == before
    (d / "w.bin").write_bytes(b"2")
    assert content_fingerprint(d) != before


def test_sae_weights_overwritten_in_place_force_a_new_trace(inputs, tiny_geneformer, tmp_path):
    saes = write_saes(random_saes([0, 1, 2, 3], d_in=32, seed=1), tmp_path / "saes")
    out = tmp_path / "run"
    first = trace(model=tiny_geneformer, data=inputs["cells"], saes=saes, out=out, progress=False, **OPTS)
    write_saes(random_saes([0, 1, 2, 3], d_in=32, seed=7), saes)  # same folder, new weights
    again = trace(model=tiny_geneformer, data=inputs["cells"], saes=saes, out=out, progress=False, **OPTS)
    fresh = trace(model=tiny_geneformer, data=inputs["cells"], saes=saes, out=tmp_path / "fresh", progress=False,
                  **OPTS)
    pd.testing.assert_frame_equal(again.edges, fresh.edges, check_exact=True)
    assert not first.edges.equals(again.edges)
    fps = RunDir(out).stage("trace")["input_fingerprints"]
    assert set(fps) == {"model", "data", "saes"} and set(fps["saes"]) == {"0", "1", "2", "3"}


def test_checkpoint_blocks_of_changed_inputs_are_refused(inputs, tiny_geneformer, tmp_path):
    cells = tmp_path / "cells.h5ad"
    cells.write_bytes(Path(inputs["cells"]).read_bytes())
    out = tmp_path / "run"
    common = dict(model=tiny_geneformer, saes=inputs["saes"], out=out, shard="0/2", progress=False, **OPTS)
    trace(data=cells, **common)
    write_cells(cells, n_cells=12, seed=5)  # the cells file rewritten in place: same name, other counts
    with pytest.raises(InputError, match="checkpoint of a different trace"):
        trace(data=cells, **common)


def test_extract_refuses_inputs_changed_in_place(tmp_path, tiny_adata, tiny_geneformer):
    data = tmp_path / "cells.h5ad"
    tiny_adata.write_h5ad(data)
    cfg = ExtractConfig(layers="0", n_cells=6, dtype="float32")
    extract(tmp_path / "run", tiny_geneformer, data, cfg, progress=False)
    extract(tmp_path / "run", tiny_geneformer, data, cfg, progress=False)  # unchanged: reused
    changed = tiny_adata.copy()
    changed.X = changed.X * 2
    changed.write_h5ad(data)
    with pytest.raises(InputError, match="the data file changed since"):
        extract(tmp_path / "run", tiny_geneformer, data, cfg, progress=False)
    store = extract(tmp_path / "run", tiny_geneformer, data, cfg, overwrite=True, progress=False)
    assert len(store.cells()) == 6
    assert RunDir(tmp_path / "run").stage("extract")["fingerprints"]["data"] == content_fingerprint(data)


def test_retrained_upstream_makes_downstream_stale(tmp_path):
    rd = RunDir(tmp_path / "run")
    for name in ("extract", "train-sae"):
        with rd.hold(name):
            rd.begin_stage(name, {"x": 1}, upstream=rd.stamps("extract") if name == "train-sae" else {})
            rd.complete_stage(name)
    assert rd.is_current("train-sae", {"x": 1}) and not rd.is_current("train-sae", {"x": 2})
    with rd.hold("extract"):
        rd.begin_stage("extract", {"x": 1})
        rd.complete_stage("extract")
    assert not rd.is_current("train-sae", {"x": 1})  # trained on activations that no longer exist


# ------------------------------------------------------------------------ lock + manifest
def test_run_lock_names_its_holder_and_lets_shards_share(tmp_path):
    rd = RunDir(tmp_path / "run")
    proc = _python(f"""
        import sys, time
        from sccircuits.rundir import RunDir
        with RunDir({str(rd.path)!r}).hold("trace", shard="trace-shard-0of2"):
            print("held", flush=True)
            time.sleep(120)
    """)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by pid {proc.pid} on .*trace.*started 20"):
            with rd.hold("train-sae"):
                pass
        with pytest.raises(RunLockedError, match="trace-shard-0of2 is already running"):
            with rd.hold("trace", shard="trace-shard-0of2"):
                pass
        with rd.hold("trace", shard="trace-shard-1of2"):  # another shard of the same trace may run beside it
            pass
    finally:
        proc.kill()
        proc.wait()
    with rd.hold("train-sae"):  # released when its holder dies
        pass
    assert (rd.path / ".run.lock").read_text() == ""  # no holder details (user paths) left behind


def test_manifest_entry_is_what_this_command_began(tmp_path):
    a, b = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")  # two commands (the lock is bypassed here)
    a.begin_stage("trace", {"d_threshold": 0.5}, fingerprint="A")
    b.begin_stage("trace", {"d_threshold": 2.0}, fingerprint="B")
    a.complete_stage("trace", ["trace/edges.parquet"])
    st = RunDir(tmp_path / "run").stage("trace")
    assert st["status"] == "complete" and st["config"] == {"d_threshold": 0.5} and st["fingerprint"] == "A"


def test_concurrent_trace_is_refused_and_ctrl_c_says_how_to_resume(inputs, tiny_geneformer, tmp_path):
    out = tmp_path / "run"
    args = ["trace", "--model", str(tiny_geneformer), "--data", str(inputs["cells"]), "--saes", str(inputs["saes"]),
            "--out", str(out), "--features", OPTS["features"], "--n-cells", "8", "--batch-size", "4",
            "--checkpoint-every", "2", "--no-null-ablation", "--criterion", "published"]
    proc = _python(f"""
        import sys, time
        from sccircuits.trace import engine
        run_cells = engine.AblationEngine.run_cells
        def slow(self, *a, **k):
            time.sleep(1.0)
            return run_cells(self, *a, **k)
        engine.AblationEngine.run_cells = slow
        from sccircuits.cli import main
        sys.argv = ["sccircuits"] + {args!r}
        main()
    """)
    blocks = out / "trace" / "blocks"
    try:
        _wait_for(lambda: blocks.is_dir() and any(blocks.glob("block_*.npz")), proc, "a first block")
        with pytest.raises(RunLockedError, match=rf"in use by pid {proc.pid} on .*trace.*command 'sccircuits trace"):
            trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["saes"], out=out, progress=False,
                  **{**OPTS, "d_threshold": 1.0})
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err
    assert "Traceback" not in err
    st = RunDir(out).stage("trace")
    assert st["status"] == "interrupted" and st["config"]["d_threshold"] == 0.5  # the refused run changed nothing
    res = trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["saes"], out=out, progress=False, **OPTS)
    assert RunDir(out).stage("trace")["resumed_from"] and len(res.edges) > 0


def test_failed_second_trace_leaves_the_manifest_true(inputs, tiny_geneformer, tmp_path, monkeypatch):
    from sccircuits.trace import engine

    out = tmp_path / "run"
    first = trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["saes"], out=out, progress=False, **OPTS)
    assert RunDir(out).is_complete("trace")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(engine.AblationEngine, "run_cells", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["saes"], out=out, progress=False,
              **{**OPTS, "features": "0:5,13"})
    st = RunDir(out).stage("trace")
    assert st["status"] == "failed" and st["error"] == "disk full" and st["config"]["features"] == "0:5,13"
    with pytest.raises(InputError, match="has not completed"):
        load_trace(out)  # the first run's tables are no longer vouched for: nobody reads them as the second's
    monkeypatch.undo()
    again = trace(model=tiny_geneformer, data=inputs["cells"], saes=inputs["saes"], out=out, progress=False, **OPTS)
    pd.testing.assert_frame_equal(first.edges, again.edges, check_exact=True)


# ------------------------------------------------------------------------ messages
def test_sae_folder_without_cfg_json_is_named_at_source_and_target_layers(inputs, tiny_geneformer, tmp_path):
    common = dict(model=tiny_geneformer, data=inputs["cells"], n_cells=4, null_ablation=False, criterion="published", progress=False)
    for layer in (2, 0):  # a target layer (was silently dropped) and a source layer
        saes = write_saes(random_saes([0, 2, 3], d_in=32, seed=1), tmp_path / f"saes{layer}")
        (saes / f"layer{layer:02d}" / "cfg.json").unlink()
        with pytest.raises(InputError, match=rf"saes{layer}/layer{layer:02d}: SAE folder has no cfg.json"):
            trace(saes=saes, out=tmp_path / f"r{layer}", features="0:1", **common)
        assert not (tmp_path / f"r{layer}").exists()


def test_gene_sets_matching_no_gene_fail_and_low_overlap_warns():
    from sccircuits.annotate.stage import library_overlap

    run_genes = [f"GENE{i}" for i in range(100)]
    ensembl = {"T1": ("term", frozenset({"ENSG0001", "ENSG0002"}))}
    with pytest.raises(InputError, match=r"ids.gmt: none of its 2 genes is among the run's 100 genes"):
        library_overlap({"ids": ensembl}, {"ids": "ids.gmt"}, run_genes)
    few = {"T1": ("term", frozenset({"GENE1", "GENE2", "OTHER"}))}
    with pytest.warns(UserWarning, match=r"few.gmt: only 2 of the run's 100 genes"):
        got = library_overlap({"few": few}, {"few": "few.gmt"}, run_genes)
    assert got["few"] == {"run_genes": 100, "library_genes": 3, "shared": 2}


def test_duplicated_gene_names_are_counted_in_a_warning(tiny_adata, tiny_geneformer):
    from sccircuits.models import load_model

    adata = tiny_adata.copy()
    names = list(adata.var_names)
    names[10:15] = names[:5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.var_names = names
    with pytest.warns(UserWarning, match=r"cells.h5ad: 5 of 60 gene columns repeat a gene already present"):
        load_model(tiny_geneformer).tokenize(adata, source="cells.h5ad")


def test_normalised_input_message_names_no_missing_option(tmp_path, tiny_adata, tiny_geneformer):
    adata = tiny_adata.copy()
    adata.X = np.log1p(adata.X.astype(np.float32))
    adata.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(InputError, match="lognorm.h5ad: expression matrix is not integer counts") as e:
        extract(tmp_path / "run", tiny_geneformer, tmp_path / "lognorm.h5ad", progress=False)
    assert "--normalized" not in str(e.value) and "--counts-layer" in str(e.value)
    assert not (tmp_path / "run").exists()  # a failed command leaves no empty run directory


def test_cli_source_layers_typo_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sccircuits.cli", "trace", "--model", "m", "--data", "d.h5ad",
                           "--saes", "s", "--out", str(tmp_path / "o"), "--source-layers", "a,b"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "source_layers must be comma-separated integers, got 'a,b'" in proc.stderr


# ------------------------------------------------------------------------ shareable outputs
def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_parquet(tmp_path / "t.parquet", pd.DataFrame({"x": [1]}))
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / "t.parquet").st_mode) == 0o644
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
    finally:
        os.umask(old)


def test_run_files_are_readable_and_name_no_absolute_path(inputs, tiny_geneformer, tmp_path, monkeypatch):
    from sccircuits.sae import SAETrainConfig, train_saes

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        model = os.path.relpath(tiny_geneformer)
        cells = os.path.relpath(inputs["cells"])
        extract("run", model, cells, ExtractConfig(layers="0,1", dtype="float32", shard_mb=0.005), progress=False)
        train_saes("run", SAETrainConfig(layers="0,1", expansion=2, k=4, epochs=1, batch_size=256), progress=False)
        trace("run", features="0:1,2", n_cells=4, null_ablation=False, criterion="published", progress=False)
    finally:
        os.umask(old)
    files = [p for p in Path("run").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(files) > 20
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items() if v != 0o644}
    for p in files:
        raw = p.read_bytes()
        assert str(tmp_path).encode() not in raw and str(Path(tiny_geneformer).parent).encode() not in raw, p
        assert platform.platform().encode() not in raw, p
    assert read_json("run/saes/layer00/cfg.json")["model_name"] == Path(tiny_geneformer).name
    assert ActivationStore("run").n_shards > 1
    monkeypatch.chdir(tmp_path.parent)  # the recorded relative paths resolve from the run, not the cwd
    res = trace(tmp_path / "run", features="0:1,2", n_cells=4, null_ablation=False, criterion="published", d_threshold=0.1,
                progress=False)
    assert res.metrics["n_cells"] == 4


def test_cli_extract_shard_size(tmp_path, inputs, tiny_geneformer):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    args = ["extract", "--model", str(tiny_geneformer), "--data", str(inputs["cells"]), "--layers", "0",
            "--dtype", "float32", "--batch-size", "2", "--out"]
    for name, mb in (("one", "256"), ("many", "0.002")):
        res = CliRunner().invoke(app, args + [str(tmp_path / name), "--shard-mb", mb])
        assert res.exit_code == 0, res.output
    assert ActivationStore(tmp_path / "one").n_shards == 1 and ActivationStore(tmp_path / "many").n_shards > 3
    with pytest.raises(ConfigError, match="shard_mb must be positive"):
        ExtractConfig(shard_mb=0)
