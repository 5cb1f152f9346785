"""The bundled blood cells (thousands of genes, cell types) and the MSigDB-derived gene sets."""

from __future__ import annotations

import gzip
import json
import zipfile

import numpy as np
import pytest

from sccircuits import datasets
from sccircuits.datasets.blood import (PBMC3K_MARKERS, leave_one_out_accuracy, marker_cluster_labels,
                                       nearest_centroid_labels)
from sccircuits.datasets.msigdb import BuildMSigDBConfig, build_msigdb, readable_name, select_sets
from sccircuits.errors import ConfigError, InputError
from sccircuits.genesets import read_gmt


@pytest.fixture(scope="module")
def blood():
    return datasets.blood()


def test_blood_counts_labels_and_ids(blood):
    report = json.loads((datasets.assets_dir() / "blood_counts.json").read_text())
    assert blood.shape == (719, report["n_genes"]) and blood.n_vars > 8000
    x = blood.X.toarray()
    assert np.all(x >= 0) and np.all(x == np.round(x)) and x.sum(1).min() > 0
    np.testing.assert_array_equal(x.sum(1).astype(np.int64), report["cell_totals_in_file"])
    assert ((x > 0).sum(0) >= 3).all()  # the gene rule: detected in >= 3 cells
    assert blood.var_names.is_unique
    ens = blood.var["ensembl_id"][blood.var["ensembl_id"] != ""]
    assert ens.is_unique and ens.str.startswith("ENSG").all() and len(ens) > 8000
    assert set(blood.obs["cell_type"].unique()) == set(PBMC3K_MARKERS)
    assert (blood.obs["source"] == "pbmc3k").sum() == 160
    # the cluster named "Memory CD4 T" in decoupleR's object is monocytes: relabelled by markers
    assert report["pbmc3k_relabelled"] == {"CD14+ Mono": "Memory CD4 T", "Memory CD4 T": "CD14+ Mono"}


def test_blood_labels_agree_with_markers(blood):
    """Marker genes are detected far more often in the cell type they mark than elsewhere."""
    x = blood.X
    types = blood.obs["cell_type"].astype(str).to_numpy()
    for t, gene in [("B", "MS4A1"), ("NK", "GNLY"), ("CD14+ Mono", "LYZ"), ("FCGR3A+ Mono", "FCGR3A")]:
        det = np.asarray(x[:, blood.var_names.get_loc(gene)].toarray()).ravel() > 0
        assert det[types == t].mean() > det[types != t].mean() + 0.2, (t, gene)


def _clusters(rng, n_per=20):
    """Synthetic log expression: each cluster expresses its type's markers."""
    genes = sorted({g for m in PBMC3K_MARKERS.values() for g in m} | {"NOISE1", "NOISE2"})
    types = list(PBMC3K_MARKERS)
    X, clusters = [], []
    for k, t in enumerate(types):
        block = rng.gamma(1.0, 0.1, size=(n_per, len(genes)))
        for g in PBMC3K_MARKERS[t]:
            block[:, genes.index(g)] += 2.0
        X.append(block)
        clusters += [k] * n_per
    return np.vstack(X), np.array(clusters), genes, types


def test_marker_cluster_labels_recovers_types():
    X, clusters, genes, types = _clusters(np.random.default_rng(0))
    assert marker_cluster_labels(X, clusters, genes) == {k: t for k, t in enumerate(types)}


def test_nearest_centroid_labels_and_leave_one_out():
    rng = np.random.default_rng(1)
    X, clusters, genes, types = _clusters(rng)
    labels = np.array(types)[clusters]
    pred, corr, cols = nearest_centroid_labels(X, labels, X[::7], n_genes=12)
    assert (pred == labels[::7]).mean() > 0.75 and len(cols) == 12 and np.all(corr <= 1.0 + 1e-9)
    assert leave_one_out_accuracy(X, labels, n_genes=12) > 0.8
    shuffled = rng.permutation(labels)  # labels unrelated to expression: near chance (1/8)
    assert leave_one_out_accuracy(X, shuffled, n_genes=12) < 0.4


# ------------------------------------------------------------------------------ gene sets

def test_shipped_libraries_read_and_exclude_kegg_biocarta():
    paths = datasets.gene_set_paths()
    assert [p.name for p in paths] == ["go_bp.gmt.gz", "hallmark.gmt.gz", "reactome.gmt.gz", "wikipathways.gmt.gz"]
    sets = {p.name: read_gmt(p) for p in paths[1:]}
    assert len(sets["hallmark.gmt.gz"]) == 50 and len(sets["reactome.gmt.gz"]) > 1500
    assert sets["hallmark.gmt.gz"]["HALLMARK_APOPTOSIS"][0] == "Apoptosis"
    for lib in sets.values():
        assert not any(t.startswith(("KEGG_", "BIOCARTA_", "PID_")) for t in lib)
    meta = json.loads((datasets.assets_dir() / "genesets" / "msigdb.json").read_text())
    assert set(meta["libraries"]) == {"hallmark", "reactome", "wikipathways"}
    with pytest.raises(InputError, match="unknown gene-set library"):
        datasets.gene_set_paths(["kegg"])


def test_select_sets_prefix_update_and_size():
    lines = ["REACTOME_CELL_CYCLE\turl\tA\tB\tOLD\tD\tE",
             "KEGG_CELL_CYCLE\turl\tA\tB\tC\tD\tE",
             "REACTOME_TINY\turl\tA\tB"]
    sets, stats = select_sets(lines, "REACTOME_", lambda g: "C" if g == "OLD" else g, min_size=3)
    assert sets == {"REACTOME_CELL_CYCLE": ("Cell cycle", ["A", "B", "C", "D", "E"])}
    assert stats["n_symbols_updated"] == 1 and stats["n_terms_too_small"] == 1
    assert readable_name("WP_TNFALPHA_SIGNALING", "WP_") == "Tnfalpha signaling"


def test_build_msigdb_from_wheel(tmp_path):
    wheel = tmp_path / "pegasuspy-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pegasus/data_files/h.all.v7.5.1.symbols.gmt",
                   "HALLMARK_X\turl\t" + "\t".join(f"QQGENE{i}" for i in range(6)) + "\n")
        z.writestr("pegasus/data_files/c2.cp.v7.5.1.symbols.gmt",
                   "REACTOME_Y\turl\t" + "\t".join(f"QQGENE{i}" for i in range(8)) + "\n"
                   "KEGG_Z\turl\t" + "\t".join(f"QQGENE{i}" for i in range(8)) + "\n"
                   "WP_W\turl\t" + "\t".join(f"QQGENE{i}" for i in range(5)) + "\n")
    meta = build_msigdb(BuildMSigDBConfig(out=str(tmp_path / "out"), wheel=str(wheel)))
    assert {k: v["n_terms"] for k, v in meta["libraries"].items()} == {"hallmark": 1, "reactome": 1, "wikipathways": 1}
    assert list(read_gmt(tmp_path / "out" / "reactome.gmt.gz")) == ["REACTOME_Y"]
    with gzip.open(tmp_path / "out" / "hallmark.gmt.gz", "rt") as fh:
        assert fh.read().startswith("HALLMARK_X\tX\tQQGENE0\tQQGENE1")
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(InputError, match="not a pegasuspy wheel"):
        build_msigdb(BuildMSigDBConfig(out=str(tmp_path / "o2"), wheel=str(bad)))
    with pytest.raises(ConfigError):
        BuildMSigDBConfig(out="")
