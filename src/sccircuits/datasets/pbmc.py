"""The bundled PBMC cells: 700 peripheral blood mononuclear cells x 765 genes with raw counts.

Derived from scanpy's ``10x_pbmc68k_reduced.h5ad`` (a subsample of 10x Genomics' Fresh 68k
PBMCs, Zheng et al. 2017, Nat. Commun. 8:14049) by ``scripts/make_pbmc.py``:

- counts: that file keeps ``raw.X = log1p(counts / n_counts * 1e4)`` (float32) and
  ``obs['n_counts']`` (the cell's total over all genes of the original matrix), so the counts
  are recovered exactly as ``round(expm1(raw.X) * n_counts / 1e4)`` (the largest distance to
  an integer before rounding is < 0.1, checked by the script);
- genes: the 765 genes of ``raw``; ``var_names`` are current NCBI gene symbols (org.Hs.eg.db,
  via the shipped ``gene_ids.tsv.gz``): the file's symbol when it is current, else the single
  gene it is an alias of (e.g. ATPIF1 -> ATP5IF1), else the file's symbol unchanged.
  ``var['original_symbol']`` keeps the file's symbol, ``var['ensembl_id']`` the Ensembl gene id
  (lowest ENSG number when NCBI lists several; empty string when unmapped),
  ``var['entrez_id']`` the NCBI gene id (empty when unmapped), ``var['id_source']`` one of
  ``symbol``, ``alias``, ``unmapped``;
- cells: ``obs['bulk_labels']`` (cell type, 10 categories) and ``obs['n_counts']``.

Nothing here needs scanpy: the derived file ships in ``sccircuits/assets``.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

ASSET_NAME = "pbmc68k_counts.h5ad"


def read_gene_table(path: str | Path):
    """The gene id table (``gene_ids.tsv.gz``) as a DataFrame of strings:
    symbol, entrez_id, ensembl_id ("" when none), aliases ("|"-joined)."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def map_symbols(symbols, table) -> "pd.DataFrame":
    """Map gene symbols to current NCBI symbols, Entrez and Ensembl ids.

    Rules: a current symbol maps to its gene; otherwise an alias that names exactly one gene
    maps to that gene, unless that gene is already claimed by another input symbol; otherwise
    unmapped. Several Ensembl ids for one gene: the lowest (sorted) id. Returns a DataFrame
    indexed like ``symbols`` with columns symbol (current, or the input when unmapped),
    original_symbol, entrez_id, ensembl_id, id_source.
    """
    import pandas as pd

    symbols = [str(s) for s in symbols]
    by_symbol = {}
    ens_of = collections.defaultdict(list)
    alias_of = collections.defaultdict(set)
    for sym, entrez, ens, aliases in table[["symbol", "entrez_id", "ensembl_id", "aliases"]].itertuples(index=False):
        by_symbol.setdefault(sym, entrez)
        if ens:
            ens_of[entrez].append(ens)
        for a in aliases.split("|"):
            if a:
                alias_of[a].add(entrez)
    current = {e: s for s, e in by_symbol.items()}
    claimed = {by_symbol[s] for s in symbols if s in by_symbol}
    rows = []
    for s in symbols:
        if s in by_symbol:
            entrez, source = by_symbol[s], "symbol"
        elif len(alias_of.get(s, ())) == 1 and next(iter(alias_of[s])) not in claimed:
            entrez, source = next(iter(alias_of[s])), "alias"
            claimed.add(entrez)
        else:
            entrez, source = "", "unmapped"
        ens = sorted(ens_of.get(entrez, [])) if entrez else []
        rows.append({"symbol": current.get(entrez, s) if entrez else s, "original_symbol": s,
                     "entrez_id": entrez, "ensembl_id": ens[0] if ens else "", "id_source": source})
    return pd.DataFrame(rows)


def counts_from_log_normalised(raw_x, n_counts, scale: float = 1e4) -> tuple[np.ndarray, float]:
    """Undo ``log1p(counts / n_counts * scale)``: returns (rounded counts as float32, the largest
    distance to the nearest integer before rounding, which says whether the inversion is exact)."""
    import scipy.sparse as sp

    dense = raw_x.toarray() if sp.issparse(raw_x) else np.asarray(raw_x)
    values = np.expm1(dense.astype(np.float64)) * np.asarray(n_counts, dtype=np.float64)[:, None] / scale
    counts = np.round(values)
    return counts.astype(np.float32), float(np.abs(values - counts).max())


def asset_path() -> Path:
    """Path of the shipped PBMC file."""
    from . import assets_dir

    return assets_dir() / ASSET_NAME


def pbmc():
    """The bundled 700 PBMCs x 765 genes as AnnData with raw integer counts in ``X`` (float32
    CSR), current gene symbols as ``var_names``, ``var['ensembl_id']`` (use
    ``gene_column='ensembl_id'`` for Geneformer), cell types in ``obs['bulk_labels']``.
    See the module docstring for the derivation and column meanings."""
    from ..data import read_cells

    return read_cells(asset_path())
