"""Regenerate ``src/sccircuits/assets/pbmc68k_counts.h5ad`` from scanpy's bundled
``10x_pbmc68k_reduced.h5ad``.

Usage::

    python scripts/make_pbmc.py                       # the file of the installed scanpy
    python scripts/make_pbmc.py --source scanpy-1.10.4-py3-none-any.whl
    python scripts/make_pbmc.py --source path/to/10x_pbmc68k_reduced.h5ad

Needs anndata (not scanpy) unless ``--source`` is omitted (then scanpy only to find its file).
Writes the h5ad (gzip-compressed) and ``pbmc68k_counts.json`` beside it: checks and
raw.X-derived reference values (a fixed sample of raw.X entries and per-cell sums) that the
tests compare the shipped counts against, so the tests do not need scanpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sccircuits.datasets.pbmc import counts_from_log_normalised, map_symbols, read_gene_table  # noqa: E402

MEMBER = "scanpy/datasets/10x_pbmc68k_reduced.h5ad"
N_SAMPLE = 500


def source_file(source: str | None, tmp: Path) -> Path:
    """The h5ad: given directly, extracted from a scanpy wheel, or found in installed scanpy."""
    if source is None:
        import importlib.util

        spec = importlib.util.find_spec("scanpy")
        if spec is None or spec.origin is None:
            sys.exit("scanpy is not installed: pass --source (the .h5ad or a scanpy wheel)")
        return Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
    p = Path(source)
    if p.suffix == ".whl":
        with zipfile.ZipFile(p) as z:
            z.extract(MEMBER, tmp)
        return tmp / MEMBER
    return p


def build(src: Path, gene_table: Path):
    """(AnnData with counts, report dict)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    a = ad.read_h5ad(src)
    raw = a.raw.to_adata()
    n_counts = a.obs["n_counts"].to_numpy(np.float64)
    counts, max_frac = counts_from_log_normalised(raw.X, n_counts)
    assert max_frac < 0.25, f"counts not recoverable: max distance to an integer {max_frac}"
    raw_dense = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    assert np.array_equal(counts > 0, raw_dense > 0), "rounding changed which entries are nonzero"
    back = np.log1p(counts / n_counts[:, None] * 1e4)
    max_err = float(np.abs(back - raw_dense).max())
    assert max_err < 1e-3, f"log1p(counts/n_counts*1e4) differs from raw.X by {max_err}"

    ids = map_symbols(raw.var_names, read_gene_table(gene_table))
    assert ids["symbol"].is_unique, "symbol mapping produced duplicate var names"
    var = pd.DataFrame({c: ids[c].to_numpy() for c in ("original_symbol", "ensembl_id", "entrez_id", "id_source")},
                       index=pd.Index(ids["symbol"].to_numpy(), name="symbol"))
    obs = pd.DataFrame({"bulk_labels": a.obs["bulk_labels"].astype("category"),
                        "n_counts": a.obs["n_counts"].astype(np.float32)}, index=a.obs_names.copy())
    out = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=var)
    out.uns["source"] = ("scanpy 10x_pbmc68k_reduced.h5ad (10x Genomics Fresh 68k PBMCs, Zheng et al. 2017); "
                         "counts = round(expm1(raw.X) * n_counts / 1e4); see sccircuits.datasets.pbmc")

    rng = np.random.default_rng(0)
    rows = rng.integers(0, raw_dense.shape[0], N_SAMPLE)
    cols = rng.integers(0, raw_dense.shape[1], N_SAMPLE)
    report = {
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "n_cells": int(out.n_obs), "n_genes": int(out.n_vars),
        "max_distance_to_integer_before_rounding": max_frac,
        "max_abs_error_log1p_roundtrip": max_err,
        "total_counts": int(counts.sum()), "max_count": int(counts.max()),
        "nnz": int((counts > 0).sum()),
        "id_source_counts": {k: int(v) for k, v in ids["id_source"].value_counts().items()},
        "raw_x_sample": {"rows": rows.tolist(), "cols": cols.tolist(),
                         "values": [float(v) for v in raw_dense[rows, cols]]},
        "raw_x_row_sums": [float(v) for v in raw_dense.astype(np.float64).sum(1)],
    }
    return out, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", help="10x_pbmc68k_reduced.h5ad or a scanpy wheel (default: installed scanpy)")
    ap.add_argument("--gene-table", default=str(ROOT / "src/sccircuits/assets/genesets/gene_ids.tsv.gz"))
    ap.add_argument("--out", default=str(ROOT / "src/sccircuits/assets/pbmc68k_counts.h5ad"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = source_file(args.source, Path(tmp))
        adata, report = build(src, Path(args.gene_table))
    out = Path(args.out)
    adata.write_h5ad(out, compression="gzip")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {adata.n_obs} cells x {adata.n_vars} genes, "
          f"max distance to integer {report['max_distance_to_integer_before_rounding']:.4f}, "
          f"round-trip error {report['max_abs_error_log1p_roundtrip']:.2e}, ids {report['id_source_counts']}")


if __name__ == "__main__":
    main()
