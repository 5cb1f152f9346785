"""Regenerate ``src/sccircuits/assets/blood_counts.h5ad`` (+ ``blood_counts.json``) from two
packages (see :mod:`sccircuits.datasets.blood` for what the file holds).

Usage::

    python scripts/make_blood.py          # apt-get download r-bioc-decoupler, pip download celltypist==1.7.1
    python scripts/make_blood.py --decoupler r-bioc-decoupler_2.4.0+dfsg-1_all.deb --celltypist celltypist-1.7.1-py3-none-any.whl

Needs anndata, pandas and ``rdata`` (+ xarray, its import dependency) at script time only: the
Seurat object is read by walking rdata's parse tree (rdata's converter does not handle S4
Seurat objects). Nothing here runs when sccircuits is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sccircuits.datasets.blood import (leave_one_out_accuracy, log_cp10k, marker_cluster_labels,  # noqa: E402
                                       nearest_centroid_labels)
from sccircuits.datasets.pbmc import map_symbols, read_gene_table  # noqa: E402

DECOUPLER_PACKAGE = "r-bioc-decoupler"
CELLTYPIST = "celltypist==1.7.1"
RDS_MEMBER = "usr/lib/R/site-library/decoupleR/extdata/sc_data.rds"
CSV_MEMBER = "celltypist/data/samples/sample_cell_by_gene.csv"
GENCODE_MEMBER = "celltypist/data/samples/GENCODEv44_Gene_id2name.csv"
MIN_CELLS = 3


# ------------------------------------------------------------------ fetching the two packages

def fetch_decoupler(arg: str | None, tmp: Path) -> Path:
    if arg is None:
        subprocess.run(["apt-get", "download", DECOUPLER_PACKAGE], cwd=tmp, check=True)
        arg = str(sorted(tmp.glob(f"{DECOUPLER_PACKAGE}_*.deb"))[-1])
    p = Path(arg)
    if p.suffix == ".deb":
        subprocess.run(["dpkg", "-x", str(p), str(tmp / "deb")], check=True)
        return tmp / "deb" / RDS_MEMBER
    return p


def fetch_celltypist(arg: str | None, tmp: Path) -> Path:
    if arg is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", CELLTYPIST, "-d", str(tmp)], check=True)
        arg = str(sorted(tmp.glob("celltypist-*.whl"))[-1])
    with zipfile.ZipFile(arg) as z:
        z.extract(CSV_MEMBER, tmp)
        z.extract(GENCODE_MEMBER, tmp)
    return Path(arg)


# ------------------------------------------------------------------ reading the Seurat object

def _rtree():
    import rdata.parser as rp

    return rp, rp.RObjectType


def _tag(o):
    _, T = _rtree()
    t = o.tag
    if t is None:
        return None
    if t.info.type == T.REF:
        t = t.referenced_object
    return t.value.value.decode()


def _attrs(o) -> dict:
    _, T = _rtree()
    out, a = {}, o.attributes
    while a is not None and a.info.type == T.LIST:
        out[_tag(a)] = a.value[0]
        a = a.value[1]
    return out


def _strings(o) -> list[str]:
    return [c.value.decode() for c in o.value]


def _named_list(o) -> dict:
    return dict(zip(_strings(_attrs(o)["names"]), o.value))


def read_seurat(path: Path):
    """(log-normalised cells x genes CSR, gene names, cell names, nCount_RNA, identities,
    Seurat cluster) from the decoupleR PBMC3k Seurat object."""
    import scipy.sparse as sp

    rp, _ = _rtree()
    obj = rp.parse_file(path).object
    top = _attrs(obj)
    rna = _attrs(_named_list(top["assays"])["RNA"])
    data = _attrs(rna["data"])
    nrow, ncol = (int(v) for v in data["Dim"].value)
    mat = sp.csc_matrix((data["x"].value, data["i"].value, data["p"].value), shape=(nrow, ncol))
    genes, cells = (_strings(d) for d in data["Dimnames"].value)
    meta = _named_list(top["meta.data"])
    n_count = np.asarray(meta["nCount_RNA"].value, dtype=np.float64)
    ident = top["active.ident"]
    levels = _strings(_attrs(ident)["levels"])
    labels = np.array([levels[int(c) - 1] for c in ident.value])
    assert _strings(_attrs(ident)["names"]) == cells, "identities not in cell order"
    clusters = np.asarray(meta["seurat_clusters"].value, dtype=np.int64)
    return mat.T.tocsr(), genes, cells, n_count, labels, clusters


# ------------------------------------------------------------------ building

def build(rds: Path, csv: Path, gencode: Path, gene_table: Path):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    logx, genes3k, cells3k, n_count, given3k, clusters3k = read_seurat(rds)
    by_cluster = marker_cluster_labels(logx.toarray(), clusters3k, genes3k)
    labels3k = np.array([by_cluster[c] for c in clusters3k])
    vals = np.expm1(logx.toarray()) * n_count[:, None] / 1e4
    counts3k = np.round(vals)
    max_frac = float(np.abs(vals - counts3k).max())
    assert max_frac < 0.05, f"PBMC3k counts not recoverable: max distance to an integer {max_frac}"

    ct = pd.read_csv(csv, index_col=0)
    ct_frac = float(np.abs(ct.to_numpy() - np.round(ct.to_numpy())).max())  # text parsing: ~1e-15
    assert ct_frac < 1e-6, f"CellTypist sample is not integer counts (max distance {ct_frac})"
    ct = ct.round()
    ct_totals = ct.to_numpy(np.float64).sum(1)

    shared = [g for g in genes3k if g in set(ct.columns)]
    pos3k = {g: i for i, g in enumerate(genes3k)}
    X = np.vstack([counts3k[:, [pos3k[g] for g in shared]], ct[shared].to_numpy(np.float64)])
    detected = (X > 0).sum(0) >= MIN_CELLS
    shared = [g for g, d in zip(shared, detected) if d]
    X = X[:, detected]

    # labels: PBMC3k identities; CellTypist cells by the nearest PBMC3k centroid
    ref = log_cp10k(counts3k, n_count)[:, [pos3k[g] for g in shared]]
    query = log_cp10k(X[len(cells3k):], ct_totals)
    ct_labels, ct_corr, _ = nearest_centroid_labels(ref, labels3k, query)
    loo = leave_one_out_accuracy(ref, labels3k)

    ids = map_symbols(shared, read_gene_table(gene_table))
    gencode_ids = pd.read_csv(gencode, header=None, names=["ensembl_id", "symbol"]).drop_duplicates("symbol", keep=False)
    gencode_of = dict(zip(gencode_ids["symbol"], gencode_ids["ensembl_id"].str.split(".").str[0]))
    missing = (ids["ensembl_id"] == "").to_numpy()
    filled = [gencode_of.get(s, "") for s in ids.loc[missing, "original_symbol"]]
    ids.loc[missing, "ensembl_id"] = filled
    ids.loc[missing & (ids["ensembl_id"] != "").to_numpy(), "id_source"] = "gencode"
    # one Ensembl id per gene: a later duplicate loses its id (keeps the symbol)
    dup = ids["ensembl_id"].ne("") & ids["ensembl_id"].duplicated()
    ids.loc[dup, "ensembl_id"] = ""
    keep = ~ids["symbol"].duplicated().to_numpy()
    ids, X = ids[keep].reset_index(drop=True), X[:, keep]

    var = pd.DataFrame({c: ids[c].to_numpy() for c in ("original_symbol", "ensembl_id", "entrez_id", "id_source")},
                       index=pd.Index(ids["symbol"].to_numpy(), name="symbol"))
    n3k = len(cells3k)
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(np.concatenate([labels3k, ct_labels]), categories=sorted(set(labels3k))),
        "label_source": pd.Categorical(["markers"] * n3k + ["nearest_centroid"] * len(ct)),
        "given_label": np.concatenate([given3k, np.full(len(ct), "")]).astype(str),
        "label_corr": np.concatenate([np.full(n3k, np.nan), ct_corr]).astype(np.float32),
        "source": pd.Categorical(["pbmc3k"] * n3k + ["celltypist"] * len(ct)),
        "n_counts": np.concatenate([n_count, ct_totals]).astype(np.float32),
    }, index=pd.Index([f"pbmc3k_{c}" for c in cells3k] + [f"celltypist_{c}" for c in ct.index]))
    out = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=var)
    out.uns["source"] = ("decoupleR sc_data.rds (10x PBMC3k subset) + CellTypist sample_cell_by_gene.csv; "
                         "see sccircuits.datasets.blood")
    report = {
        "rds_sha256": hashlib.sha256(rds.read_bytes()).hexdigest(),
        "csv_sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
        "n_cells": int(out.n_obs), "n_genes": int(out.n_vars),
        "n_cells_pbmc3k": n3k, "n_cells_celltypist": int(len(ct)),
        "n_genes_pbmc3k": len(genes3k), "n_genes_celltypist": int(ct.shape[1]),
        "min_cells_per_gene": MIN_CELLS,
        "pbmc3k_max_distance_to_integer_before_rounding": max_frac,
        "celltypist_max_distance_to_integer_before_rounding": ct_frac,
        "nearest_centroid_leave_one_out_accuracy": loo,
        "pbmc3k_relabelled": {g: l for g, l in sorted(set(zip(given3k.tolist(), labels3k.tolist()))) if g != l},
        "celltypist_label_counts": {k: int(v) for k, v in pd.Series(ct_labels).value_counts().items()},
        "celltypist_label_corr_quantiles": {q: float(np.quantile(ct_corr, float(q))) for q in ("0.05", "0.5", "0.95")},
        "cell_type_counts": {k: int(v) for k, v in obs["cell_type"].value_counts().items()},
        "id_source_counts": {k: int(v) for k, v in ids["id_source"].value_counts().items()},
        "n_genes_with_ensembl_id": int((var["ensembl_id"] != "").sum()),
        "total_counts": int(X.sum()), "nnz": int((X > 0).sum()),
        "cell_totals_in_file": [int(v) for v in X.sum(1)],
    }
    return out, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoupler", help="r-bioc-decoupler .deb or sc_data.rds (default: apt-get download)")
    ap.add_argument("--celltypist", help="celltypist wheel (default: pip download celltypist==1.7.1)")
    ap.add_argument("--gene-table", default=str(ROOT / "src/sccircuits/assets/genesets/gene_ids.tsv.gz"))
    ap.add_argument("--out", default=str(ROOT / "src/sccircuits/assets/blood_counts.h5ad"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rds = fetch_decoupler(args.decoupler, tmp)
        fetch_celltypist(args.celltypist, tmp)
        adata, report = build(rds, tmp / CSV_MEMBER, tmp / GENCODE_MEMBER, Path(args.gene_table))
    out = Path(args.out)
    adata.write_h5ad(out, compression="gzip")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {adata.n_obs} cells x {adata.n_vars} genes; "
          f"labels {report['cell_type_counts']}; leave-one-out accuracy of the label rule "
          f"{report['nearest_centroid_leave_one_out_accuracy']:.3f}")


if __name__ == "__main__":
    main()
