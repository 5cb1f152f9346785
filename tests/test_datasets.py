"""Bundled data: PBMC counts, GO gene sets, the GO builder, and the wheel's assets."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sccircuits import datasets
from sccircuits.datasets.go import BuildGOConfig, build_go
from sccircuits.datasets.pbmc import counts_from_log_normalised, map_symbols
from sccircuits.errors import ConfigError, InputError
from sccircuits.genesets import read_gmt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pbmc():
    return datasets.pbmc()


@pytest.fixture(scope="module")
def pbmc_report():
    return json.loads((datasets.assets_dir() / "pbmc68k_counts.json").read_text())


# ------------------------------------------------------------------------------------------ PBMC

def test_pbmc_shape_and_integer_counts(pbmc):
    assert pbmc.shape == (700, 765)
    x = pbmc.X.toarray()
    assert np.all(x >= 0) and np.all(x == np.round(x))
    assert x.sum(1).min() > 0  # no empty cells
    assert pbmc.var_names.is_unique
    assert pbmc.obs["bulk_labels"].nunique() == 10
    assert (pbmc.obs["n_counts"].to_numpy() >= x.sum(1)).all()  # n_counts is the total over all genes


def test_pbmc_counts_reproduce_raw_x_sample(pbmc, pbmc_report):
    """log1p(counts / n_counts * 1e4) equals raw.X of scanpy's file at the entries (and per-cell
    sums) that scripts/make_pbmc.py read from that file."""
    x = pbmc.X.toarray().astype(np.float64)
    back = np.log1p(x / pbmc.obs["n_counts"].to_numpy(np.float64)[:, None] * 1e4)
    s = pbmc_report["raw_x_sample"]
    np.testing.assert_allclose(back[s["rows"], s["cols"]], s["values"], atol=2e-3)
    # raw.X holds values to ~5e-4 (float32 of rounded numbers): allow that much per nonzero entry
    err = np.abs(back.sum(1) - np.asarray(pbmc_report["raw_x_row_sums"]))
    assert np.all(err <= 6e-4 * (x > 0).sum(1))
    assert int(x.sum()) == pbmc_report["total_counts"]


@pytest.mark.skipif(importlib.util.find_spec("scanpy") is None, reason="scanpy's original file not available")
def test_pbmc_counts_match_scanpy_file(pbmc):
    import anndata as ad

    src = Path(importlib.util.find_spec("scanpy").origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
    orig = ad.read_h5ad(src)
    raw = orig.raw.X.toarray()
    back = np.log1p(pbmc.X.toarray() / orig.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(back, raw, atol=2e-3)
    assert list(pbmc.var["original_symbol"]) == list(orig.raw.var_names)
    assert list(pbmc.obs_names) == list(orig.obs_names)


def test_pbmc_gene_ids(pbmc):
    var = pbmc.var
    ens = var.loc[var["ensembl_id"] != "", "ensembl_id"]
    assert ens.str.match(r"^ENSG\d{11}$").all() and ens.is_unique
    assert len(ens) >= 740  # 748 of 765 at the time of writing; the rest are unmapped clone names
    assert var.loc["CD3E", "ensembl_id"] == "ENSG00000198851"
    assert var.loc["ATP5IF1", "original_symbol"] == "ATPIF1"  # outdated symbol updated via alias
    assert set(var["id_source"]) <= {"symbol", "alias", "unmapped"}


def test_counts_from_log_normalised_inverts_exactly():
    counts = np.array([[0, 3, 10], [1, 0, 250]], dtype=np.float64)
    n = np.array([2000.0, 5000.0])
    raw = np.log1p(counts / n[:, None] * 1e4).astype(np.float32)
    back, max_frac = counts_from_log_normalised(raw, n)
    np.testing.assert_array_equal(back, counts)
    assert back.dtype == np.float32 and max_frac < 0.05


def test_map_symbols_rules():
    table = pd.DataFrame([
        ("AAA", "1", "ENSG00000000009", ""),
        ("AAA", "1", "ENSG00000000002", ""),  # two Ensembl ids: the lowest is chosen
        ("BBB", "2", "", "OLDB"),  # current symbol without Ensembl id
        ("CCC", "3", "ENSG00000000003", "OLDC|AMB"),
        ("DDD", "4", "ENSG00000000004", "AMB|OLDA"),  # OLDA -> DDD, but AMB is ambiguous
    ], columns=["symbol", "entrez_id", "ensembl_id", "aliases"])
    m = map_symbols(["AAA", "OLDB", "OLDC", "AMB", "XYZ", "OLDA", "DDD"], table).set_index("original_symbol")
    assert m.loc["AAA", "ensembl_id"] == "ENSG00000000002"
    assert (m.loc["OLDB", "symbol"], m.loc["OLDB", "ensembl_id"], m.loc["OLDB", "id_source"]) == ("BBB", "", "alias")
    assert m.loc["OLDC", "symbol"] == "CCC"
    assert m.loc["AMB", "id_source"] == "unmapped" and m.loc["XYZ", "symbol"] == "XYZ"
    # OLDA names DDD, which the input already has under its current symbol: not claimed twice
    assert m.loc["OLDA", "id_source"] == "unmapped" and m.loc["DDD", "id_source"] == "symbol"


# ------------------------------------------------------------------------------------------ GO

def test_shipped_gmt_parses_with_stated_term_count():
    meta = datasets.go_bp_metadata()
    sets = read_gmt(datasets.go_bp_gmt_path())
    assert len(sets) == meta["n_terms"]
    readme = (datasets.assets_dir() / "README.md").read_text()
    assert f"{meta['n_terms']:,} terms" in readme and meta["sources"]["go_release_date"] in readme
    sizes = [len(g) for _, g in sets.values()]
    assert min(sizes) >= 5 and max(sizes) <= 500
    assert all(t.startswith("GO:") and name for t, (name, _) in sets.items())
    name, genes = sets["GO:0050852"]
    assert name == "T cell receptor signaling pathway" and {"CD3E", "ZAP70", "LCK"} <= genes


def test_shipped_gene_table_covers_pbmc(pbmc):
    table = pd.read_csv(datasets.gene_ids_path(), sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["symbol", "entrez_id", "ensembl_id", "aliases"]
    ens = set(pbmc.var["ensembl_id"]) - {""}
    assert ens <= set(table["ensembl_id"])


def _tiny_bioc(tmp: Path) -> tuple[Path, Path]:
    """Minimal org.Hs.eg.sqlite / GO.sqlite with the tables and columns the builder reads.

    GO graph: A (root GO:0008150) <-isa- B <-part of- C ; B <-regulates- R ; B <-isa- D.
    Genes g1..g6 annotated directly: C: g1 g2 ; D: g3 ; R: g4 g5 ; B: g6.
    """
    go = tmp / "GO.sqlite"
    con = sqlite3.connect(go)
    con.executescript("""
        create table metadata (name text, value text);
        insert into metadata values ('GOSOURCEDATE', '2099-01-01'), ('GOSOURCEURL', 'test');
        create table go_term (_id integer, go_id text, term text, ontology text, definition text);
        insert into go_term values (1,'GO:0008150','biological_process','BP',''),
            (2,'GO:0000002','bee','BP',''), (3,'GO:0000003','sea','BP',''),
            (4,'GO:0000004','dee','BP',''), (5,'GO:0000005','are','BP',''),
            (6,'all','all','universal','');
        create table go_bp_parents (_id integer, _parent_id integer, relationship_type text);
        insert into go_bp_parents values (2,1,'isa'), (3,2,'part of'), (4,2,'isa'),
            (5,2,'regulates'), (5,1,'isa'), (1,6,'isa');
    """)
    con.commit()
    con.close()
    org = tmp / "org.Hs.eg.sqlite"
    con = sqlite3.connect(org)
    con.executescript("""
        create table metadata (name text, value text);
        insert into metadata values ('EGSOURCEDATE', '2099-Jan01');
        create table genes (_id integer, gene_id text);
        create table gene_info (_id integer, gene_name text, symbol text);
        create table ensembl (_id integer, ensembl_id text);
        create table alias (_id integer, alias_symbol text);
        create table go_bp (_id integer, go_id text, evidence text);
    """)
    for i in range(1, 7):
        con.execute("insert into genes values (?, ?)", (i, str(100 + i)))
        con.execute("insert into gene_info values (?, ?, ?)", (i, f"gene {i}", f"G{i}"))
        con.execute("insert into alias values (?, ?)", (i, f"OLD{i}"))
    con.execute("insert into ensembl values (1, 'ENSG00000000001')")
    ann = [(1, "GO:0000003", "IDA"), (2, "GO:0000003", "IEA"), (3, "GO:0000004", "IMP"),
           (4, "GO:0000005", "TAS"), (5, "GO:0000005", "IEA"), (6, "GO:0000002", "ND")]
    con.executemany("insert into go_bp values (?, ?, ?)", ann)
    con.commit()
    con.close()
    return org, go


def test_build_go_propagates_isa_part_of_and_filters(tmp_path):
    org, go = _tiny_bioc(tmp_path)
    meta = build_go(BuildGOConfig(out=str(tmp_path / "out"), orgdb=str(org), godb=str(go), min_size=2, max_size=4))
    sets = read_gmt(tmp_path / "out" / "go_bp.gmt.gz")
    # B gets C's and D's genes (part of / is_a) and its own, not R's (regulates): 4 genes
    assert sets["GO:0000002"] == ("bee", frozenset({"G1", "G2", "G3", "G6"}))
    assert sets["GO:0000003"][1] == {"G1", "G2"} and sets["GO:0000005"][1] == {"G4", "G5"}
    assert "GO:0000004" not in sets  # 1 gene < min_size
    assert "GO:0008150" not in sets  # root never written
    assert meta["n_terms"] == 3 and meta["sources"]["go_release_date"] == "2099-01-01"
    assert meta["evidence_counts"]["IEA"] == 2
    table = pd.read_csv(tmp_path / "out" / "gene_ids.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    assert table.iloc[0].tolist() == ["G1", "101", "ENSG00000000001", "OLD1"]
    assert (table["ensembl_id"] == "").sum() == 5


def test_build_go_follow_regulates_and_max_size(tmp_path):
    org, go = _tiny_bioc(tmp_path)
    build_go(BuildGOConfig(out=str(tmp_path / "o"), orgdb=str(org), godb=str(go), min_size=1, max_size=6,
                           follow_regulates=True))
    sets = read_gmt(tmp_path / "o" / "go_bp.gmt.gz")
    assert sets["GO:0000002"][1] == {f"G{i}" for i in range(1, 7)}
    build_go(BuildGOConfig(out=str(tmp_path / "p"), orgdb=str(org), godb=str(go), min_size=1, max_size=3))
    assert "GO:0000002" not in read_gmt(tmp_path / "p" / "go_bp.gmt.gz")


def test_build_go_errors(tmp_path):
    with pytest.raises(ConfigError):
        BuildGOConfig(out=str(tmp_path), min_size=10, max_size=5)
    bogus = tmp_path / "x.sqlite"
    bogus.write_text("hello")
    with pytest.raises(InputError, match="not an SQLite database"):
        build_go(BuildGOConfig(out=str(tmp_path / "o"), orgdb=str(bogus), godb=str(bogus)))
    org, go = _tiny_bioc(tmp_path)
    with pytest.raises(InputError, match="missing table"):
        build_go(BuildGOConfig(out=str(tmp_path / "o"), orgdb=str(go), godb=str(go)))


def test_cli_build_go(tmp_path):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    org, go = _tiny_bioc(tmp_path)
    res = CliRunner().invoke(app, ["genesets", "build-go", "--out", str(tmp_path / "cli"), "--orgdb", str(org),
                                   "--godb", str(go), "--min-size", "2"])
    assert res.exit_code == 0, res.output
    assert "3 GO BP terms" in res.output
    assert (tmp_path / "cli" / "go_bp.gmt.gz").is_file()


# ------------------------------------------------------------------------------------------ packaging

ASSETS_IN_WHEEL = [
    "sccircuits/assets/README.md",
    "sccircuits/assets/pbmc68k_counts.h5ad",
    "sccircuits/assets/genesets/go_bp.gmt.gz",
    "sccircuits/assets/genesets/gene_ids.tsv.gz",
    "sccircuits/assets/genesets/go_bp.json",
    "sccircuits/assets/models/demo-geneformer/config.json",
    "sccircuits/assets/models/demo-geneformer/model.safetensors",
    "sccircuits/assets/models/demo-geneformer/token_dictionary_gc104M.pkl",
    "sccircuits/assets/models/demo-scgpt/args.json",
    "sccircuits/assets/models/demo-scgpt/vocab.json",
    "sccircuits/assets/models/demo-scgpt/best_model.pt",
]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / "pyproject.toml").is_file(),
                    reason="needs the source tree")
def test_wheel_contains_assets(tmp_path):
    """Build the wheel from a copy of the tracked + asset files (no network, no build isolation)."""
    src = tmp_path / "src_tree"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for f in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (REPO / f).is_file():
            shutil.copy(REPO / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sccircuits-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = [a for a in ASSETS_IN_WHEEL if a not in names]
        assert not missing, f"assets missing from the wheel: {missing}"
        with z.open("sccircuits/assets/genesets/go_bp.gmt.gz") as fh:
            assert gzip.decompress(fh.read()).startswith(b"GO:")
