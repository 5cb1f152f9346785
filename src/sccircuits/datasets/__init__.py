"""Data shipped inside the package: real cells, GO gene sets and two small demo models.

Everything lives in ``sccircuits/assets`` (see its README.md for sources and licences), so the
whole pipeline runs with nothing downloaded:

- :func:`blood` -- 719 immune cells x 8,455 genes, raw counts, 8 cell types (10x PBMC3k subset
  of decoupleR + CellTypist's sample cells); the demo's data;
- :func:`pbmc` -- 700 PBMCs x 765 genes, raw counts, cell types (scanpy's pbmc68k_reduced); fast tests;
- :func:`go_bp_gmt_path` -- GO biological-process gene sets, 5-500 genes, as a gzip GMT;
- :func:`gene_set_paths` -- GO BP plus MSigDB Hallmark, Reactome and WikiPathways (gzip GMTs);
- :func:`gene_ids_path` -- NCBI symbol / Entrez / Ensembl id table (gzip TSV);
- :func:`demo_model_path` -- small Geneformer- and scGPT-architecture models trained by
  sccircuits on the PBMC cells (not Geneformer or scGPT; see docs/demo-models.md).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .blood import blood
from .pbmc import pbmc

__all__ = ["blood", "pbmc", "go_bp_gmt_path", "gene_set_paths", "GENE_SET_LIBRARIES", "gene_ids_path", "go_bp_metadata", "demo_model_path", "assets_dir",
           "DEMO_KINDS"]

DEMO_KINDS = ("geneformer", "scgpt")


def assets_dir() -> Path:
    """The package's ``assets`` directory."""
    return Path(__file__).resolve().parent.parent / "assets"


def _asset(rel: str) -> Path:
    p = assets_dir() / rel
    if not p.exists():
        raise InputError(p, "shipped asset missing (broken install? reinstall sccircuits)")
    return p


def go_bp_gmt_path() -> Path:
    """Path of the shipped GO BP gene sets (``genesets/go_bp.gmt.gz``); read with
    :func:`sccircuits.genesets.read_gmt`."""
    return _asset("genesets/go_bp.gmt.gz")


#: shipped gene-set libraries (file genesets/<name>.gmt.gz); GO BP labels features
GENE_SET_LIBRARIES = ("go_bp", "hallmark", "reactome", "wikipathways")


def gene_set_paths(names=GENE_SET_LIBRARIES) -> list[Path]:
    """Paths of shipped gene-set libraries (gzip GMT): GO BP (:func:`go_bp_gmt_path`) and the
    MSigDB Hallmark, Reactome and WikiPathways sets (``sccircuits genesets build-msigdb``)."""
    bad = [n for n in names if n not in GENE_SET_LIBRARIES]
    if bad:
        raise InputError(None, f"unknown gene-set library {bad[0]!r} (choose from {', '.join(GENE_SET_LIBRARIES)})")
    return [_asset(f"genesets/{n}.gmt.gz") for n in names]


def gene_ids_path() -> Path:
    """Path of the shipped gene id table (``genesets/gene_ids.tsv.gz``: symbol, entrez_id,
    ensembl_id, aliases)."""
    return _asset("genesets/gene_ids.tsv.gz")


def go_bp_metadata() -> dict:
    """Facts about the shipped GO sets (release date, options, number of terms, ...)."""
    import json

    return json.loads(_asset("genesets/go_bp.json").read_text())


def demo_model_path(kind: str) -> Path:
    """Directory of the shipped demo model ``kind`` ("geneformer" or "scgpt"), loadable with
    :func:`sccircuits.models.load_model`."""
    if kind not in DEMO_KINDS:
        raise InputError(None, f"unknown demo model kind {kind!r} (choose from {', '.join(DEMO_KINDS)})")
    return _asset(f"models/demo-{kind}")
