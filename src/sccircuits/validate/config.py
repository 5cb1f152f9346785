"""Options of ``predict`` and ``validate`` (dataclasses saved in the run manifest; importing them
is cheap)."""

from __future__ import annotations

import dataclasses

from ..artifacts import EDGE_SETS
from ..config import apply_compat, check, compat_option, option


@dataclasses.dataclass
class PredictConfig:
    """Options of gene-level prediction (``sccircuits predict``)."""

    top_genes: int = option(10, "top genes per feature used on each side of an edge")
    edges: str = option("edges", "which edges: 'edges' (the trace's edge set, column 'edge'), 'capped' (in_cap, "
                                 "the published top-N set) or 'uncapped' (the published rule without the cap)")
    min_edges: int = option(2, "keep pairs seen in at least this many edges ...")
    min_max_abs_d: float = option(2.0, "... or whose largest |d| exceeds this")
    drop_self_pairs: bool = option(True, "drop pairs whose source and target gene are the same")
    string_pairs: str | None = option(None, "TSV of STRING gene pairs (symbols; undirected) for status")
    trrust: str | None = option(None, "TSV of TRRUST edges (TF, target, ...; directed) for status")
    go_gmt: str | None = option(None, "GO GMT file: pairs sharing a term are 'plausible'")
    consensus_pairs: str | None = option(None, "table (parquet/csv/tsv) of consensus domain pairs: "
                                               "source_label(_id), target_label(_id)")
    novel_pairs: str | None = option(None, "table of novel domain pairs (same columns; rows with novel "
                                           "False are ignored)")
    auto_novel: bool = option(True, "without novel_pairs, use each run's analysis/novel_pairs.parquet "
                                    "when its analyze stage is complete")
    edge_chunk: int = option(20000, "edges per processing chunk (memory bound)")
    min_shared_go: int | None = compat_option(1, 2, "'plausible' needs at least this many shared GO terms")
    compat: str = option("none", "'reference': published sign sum(w*d)/n_edges, ranking, gene lists and plausible "
                                 "rule (docs/compat.md)")

    def __post_init__(self) -> None:
        apply_compat(self)
        check(self.min_shared_go >= 1, "min_shared_go must be >= 1")
        check(self.top_genes >= 1, "top_genes must be >= 1")
        check(self.edges in EDGE_SETS, f"edges must be one of {', '.join(EDGE_SETS)}, got {self.edges!r}")
        check(self.min_edges >= 1, "min_edges must be >= 1")
        check(self.edge_chunk >= 1, "edge_chunk must be >= 1")


@dataclasses.dataclass
class ValidateConfig:
    """Options of ``sccircuits validate``."""

    target_column: str = option("gene", "obs column with the knocked-down gene symbol")
    control_label: str = option("non-targeting", "label of control cells in the target column")
    cell_line_column: str | None = option(None, "obs column with the cell line (default: 'cell_line' "
                                                "if present, else one line)")
    gene_column: str | None = option(None, "var column with gene symbols (default: gene_name etc. when "
                                           "var_names are Ensembl ids)")
    min_cells: int | None = compat_option(20, 5, "minimum cells per knockdown (and per control group) in a cell line")
    normalize: bool | None = compat_option(True, False, "library-size normalise each cell (scale / full row total)")
    scale: float = option(1e4, "normalised counts per cell (1e4 = CP10k)")
    pseudocount: float | None = compat_option(0.1, 1.0, "pseudocount added to both means before log2 (normalised units)")
    efficacy_filter: bool | None = compat_option(False, False, "use only knockdowns whose own gene drops by min_knockdown")
    min_knockdown: float = option(0.3, "required fractional drop of the knocked-down gene (0.3 = 30%)")
    min_abs_lfc: float | None = compat_option(0.01, 0.01, "pairs with |LFC| below this are not scored for direction")
    responsive_lfc: float | None = compat_option(0.5, 0.5, "|LFC| above this makes a gene responsive (Fisher test)")
    background: str | None = compat_option("screen", "screen", "Fisher background: 'screen' (all measured genes) or "
                                                               "'predicted' (measured genes predicted as a target of any source)")
    fdr: float = option(0.05, "BH q threshold for counting enriched knockdowns")
    expression_bins: int | None = compat_option(10, 1, "Fisher test stratified by control expression in this many "
                                                       "quantile bins of the background genes (1: unstratified Fisher)")
    n_perm: int = option(1000, "draws of the within-knockdown and within-target permutation baselines")
    n_boot: int = option(1000, "two-way bootstrap draws (knocked-down genes x target genes resampled)")
    seed: int = option(0, "bootstrap seed")
    chunk_size: int = option(5000, "cells per read chunk (dense X also capped at ~64 MB per chunk)")
    predict: PredictConfig = option(factory=PredictConfig, help="gene-level prediction options")
    compat: str = option("none", "'reference': the published LFC, filters, predictions and per-knockdown Fisher "
                                 "counting (docs/compat.md)")

    def __post_init__(self) -> None:
        if isinstance(self.predict, dict):
            self.predict = PredictConfig(**self.predict)
        apply_compat(self)  # published L362-397 (LFC), L386 (>= 5 cells), L446, L503
        if self.compat == "reference" and self.predict.compat != "reference":  # one compat per stage
            self.predict = _with_compat(self.predict)
        check(self.predict.compat == self.compat, f"predict compat {self.predict.compat!r} differs from the "
                                                  f"validate compat {self.compat!r}: set compat on ValidateConfig")
        check(self.min_cells >= 1, "min_cells must be >= 1")
        check(self.scale > 0, "scale must be > 0")
        check(self.pseudocount > 0, "pseudocount must be > 0 (log of zero means otherwise)")
        check(0 < self.min_knockdown < 1, "min_knockdown must be in (0, 1)")
        check(self.min_abs_lfc >= 0 and self.responsive_lfc >= 0, "LFC thresholds must be >= 0")
        check(self.background in ("screen", "predicted"), "background must be 'screen' or 'predicted'")
        check(0 < self.fdr < 1, "fdr must be in (0, 1)")
        check(self.expression_bins >= 1, "expression_bins must be >= 1")
        check(self.n_perm >= 1, "n_perm must be >= 1")
        check(self.n_boot >= 1, "n_boot must be >= 1")
        check(self.chunk_size >= 1, "chunk_size must be >= 1")


def _with_compat(cfg: PredictConfig) -> PredictConfig:
    """``cfg`` under ``compat="reference"``: compat-dependent fields still at their own default
    are left to the published value (a value the user changed still contradicts it)."""
    data = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if "compat" in f.metadata and data[f.name] == f.metadata["compat"][0]:
            data[f.name] = None
    return PredictConfig(**{**data, "compat": "reference"})
