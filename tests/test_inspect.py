"""inspect_model / inspect_data and their CLI commands, including bad input (exit code 2)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from sccircuits.cli import app, main
from sccircuits.errors import InputError
from sccircuits.inspect import inspect_data, inspect_model
from sccircuits.models import testing


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the real entry point (with its error handling) in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sccircuits", *map(str, args)])
    with pytest.raises(SystemExit) as ex:
        main()
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err


@pytest.fixture
def cells_h5ad(tmp_path, tiny_adata):
    path = tmp_path / "cells.h5ad"
    tiny_adata.write_h5ad(path)
    return path


def test_inspect_model_facts(tiny_geneformer):
    facts = inspect_model(tiny_geneformer)
    assert facts["kind"] == "geneformer" and facts["version"] == "V2"
    assert (facts["n_layers"], facts["d_model"], facts["n_heads"], facts["vocab_size"]) == (4, 32, 4, 64)
    assert facts["special_tokens"] == {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    assert facts["files"]["token"] == "token_dictionary_gc104M.pkl"
    assert facts["n_parameters"] > 0


def test_cli_inspect_model_table_and_json(tiny_geneformer):
    runner = CliRunner()
    res = runner.invoke(app, ["inspect-model", str(tiny_geneformer)])
    assert res.exit_code == 0, res.output
    assert "geneformer" in res.output and "<cls>=2" in res.output and "token_dictionary_gc104M.pkl" in res.output
    res = runner.invoke(app, ["inspect-model", str(tiny_geneformer), "--json"])
    assert json.loads(res.output)["n_layers"] == 4


def test_cli_inspect_model_scgpt(tmp_path):
    if not hasattr(testing, "make_tiny_scgpt"):
        pytest.skip("make_tiny_scgpt not available")
    path = testing.make_tiny_scgpt(tmp_path / "scgpt", n_genes=20, n_layers=2, d_model=16, seed=0)
    res = CliRunner().invoke(app, ["inspect-model", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kind"] == "scgpt"


def test_inspect_data_counts(tiny_geneformer, cells_h5ad, tiny_adata):
    rep = inspect_data(tiny_geneformer, cells_h5ad)
    assert (rep["cells"], rep["cells_kept"], rep["cells_skipped"]) == (24, 24, 0)
    assert (rep["genes_mapped"], rep["genes_unmapped"]) == (60, 0)
    nonzero = (tiny_adata.X > 0).sum(axis=1)
    assert rep["genes_per_cell"]["max"] == int(nonzero.max())
    assert rep["sequence_length"]["min"] == int(nonzero.min()) + 2  # <cls> ... <eos>


def test_cli_inspect_data_json_reference_mode(tiny_geneformer, cells_h5ad):
    res = CliRunner().invoke(app, ["inspect-data", "--model", str(tiny_geneformer), "--data", str(cells_h5ad),
                                   "--mode", "reference", "--gene-column", "gene_symbols", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["mode"] == "reference" and rep["cells_kept"] == 24 and "symbols" in rep["gene_ids_from"]


def test_cli_missing_model_dir_exit_code_2_subprocess(tmp_path):
    """The installed console script: one red line naming the directory, exit code 2."""
    exe = shutil.which("sccircuits")
    cmd = [exe] if exe else [sys.executable, "-c", "from sccircuits.cli import main; main()"]
    res = subprocess.run([*cmd, "inspect-model", str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{tmp_path / 'nope'}: model directory not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_non_count_data_exit_code_2(monkeypatch, capsys, tiny_geneformer, tmp_path, tiny_adata):
    adata = tiny_adata.copy()
    adata.X = np.log1p(adata.X)
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    code, _, err = run_main(monkeypatch, capsys, "inspect-data", "--model", tiny_geneformer, "--data", path)
    assert code == 2 and f"{path}: expression matrix is not integer counts" in err
    code, out, _ = run_main(monkeypatch, capsys, "inspect-data", "--model", tiny_geneformer, "--data", path,
                            "--normalized", "--json")
    assert code == 0 and json.loads(out)["cells_kept"] == 24


def test_cli_no_gene_overlap_exit_code_2(monkeypatch, capsys, tiny_geneformer, tmp_path, tiny_adata):
    adata = tiny_adata.copy()
    adata.var_names = [f"ENSG9{i:010d}" for i in range(adata.n_vars)]
    path = tmp_path / "other_genes.h5ad"
    adata.write_h5ad(path)
    code, _, err = run_main(monkeypatch, capsys, "inspect-data", "--model", tiny_geneformer, "--data", path)
    assert code == 2 and f"{path}: no gene overlaps the model vocabulary" in err


def test_cli_missing_data_and_broken_h5ad(monkeypatch, capsys, tiny_geneformer, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "inspect-data", "--model", tiny_geneformer,
                            "--data", tmp_path / "none.h5ad")
    assert code == 2 and "none.h5ad: file not found" in err
    (tmp_path / "junk.h5ad").write_bytes(b"not an hdf5 file")
    code, _, err = run_main(monkeypatch, capsys, "inspect-data", "--model", tiny_geneformer,
                            "--data", tmp_path / "junk.h5ad")
    assert code == 2 and "junk.h5ad: cannot read as .h5ad" in err


def test_cli_corrupt_model_files_exit_code_2(monkeypatch, capsys, tiny_geneformer, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_geneformer, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_main(monkeypatch, capsys, "inspect-model", model)
    assert code == 2 and f"{weights}: cannot load weights" in err

    shutil.rmtree(model)
    shutil.copytree(tiny_geneformer, model)

    class Evil:
        def __reduce__(self):
            return (print, ("payload ran",))

    bad = model / "gene_median_dictionary_gc104M.pkl"
    bad.write_bytes(pickle.dumps({"ENSG00000000001": Evil()}))
    code, out, err = run_main(monkeypatch, capsys, "inspect-model", model)
    assert code == 2 and f"{bad}: unsafe or invalid pickle" in err and "payload ran" not in out + err


def test_wrong_directory_kind(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a model directory"):
        inspect_model(tmp_path)
    with pytest.raises(InputError, match="expected a model directory, got a file"):
        inspect_model(tmp_path / "notes.txt")
