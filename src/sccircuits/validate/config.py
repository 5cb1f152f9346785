"""Options of ``predict`` and ``validate`` (dataclasses saved in the run manifest; importing them
is cheap)."""

from __future__ import annotations

import dataclasses

from ..config import check, option


@dataclasses.dataclass
class PredictConfig:
    """Options of gene-level prediction (``sccircuits predict``)."""

    top_genes: int = option(10, "top genes per feature used on each side of an edge")
    edges: str = option("capped", "which edges: 'capped' (in_cap, the published top-N set) or 'uncapped' (all)")
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

    def __post_init__(self) -> None:
        check(self.top_genes >= 1, "top_genes must be >= 1")
        check(self.edges in ("capped", "uncapped"), "edges must be 'capped' or 'uncapped'")
        check(self.min_edges >= 1, "min_edges must be >= 1")
        check(self.edge_chunk >= 1, "edge_chunk must be >= 1")


# ---------------------------------------------------------------------------------------------
# reading a run


@dataclasses.dataclass
class ValidateConfig:
    """Options of ``sccircuits validate``."""

    target_column: str = option("gene", "obs column with the knocked-down gene symbol")
    control_label: str = option("non-targeting", "label of control cells in the target column")
    cell_line_column: str | None = option(None, "obs column with the cell line (default: 'cell_line' "
                                                "if present, else one line)")
    gene_column: str | None = option(None, "var column with gene symbols (default: gene_name etc. when "
                                           "var_names are Ensembl ids)")
    min_cells: int = option(20, "minimum cells per knockdown (and per control group) in a cell line")
    normalize: bool = option(True, "library-size normalise each cell (scale / full row total)")
    scale: float = option(1e4, "normalised counts per cell (1e4 = CP10k)")
    pseudocount: float = option(0.1, "pseudocount added to both means before log2 (normalised units)")
    efficacy_filter: bool = option(False, "use only knockdowns whose own gene drops by min_knockdown")
    min_knockdown: float = option(0.3, "required fractional drop of the knocked-down gene (0.3 = 30%)")
    min_abs_lfc: float = option(0.01, "pairs with |LFC| below this are not scored for direction")
    responsive_lfc: float = option(0.5, "|LFC| above this makes a gene responsive (Fisher test)")
    background: str = option("screen", "Fisher background: 'screen' (all measured genes) or "
                                       "'predicted' (measured genes predicted as a target of any source)")
    fdr: float = option(0.05, "BH q threshold for counting enriched knockdowns")
    n_boot: int = option(1000, "cluster-bootstrap draws (clusters = knocked-down genes)")
    seed: int = option(0, "bootstrap seed")
    chunk_size: int = option(5000, "cells per read chunk (dense X also capped at ~64 MB per chunk)")
    predict: PredictConfig = option(factory=PredictConfig, help="gene-level prediction options")

    def __post_init__(self) -> None:
        if isinstance(self.predict, dict):
            self.predict = PredictConfig(**self.predict)
        check(self.min_cells >= 1, "min_cells must be >= 1")
        check(self.scale > 0, "scale must be > 0")
        check(self.pseudocount > 0, "pseudocount must be > 0 (log of zero means otherwise)")
        check(0 < self.min_knockdown < 1, "min_knockdown must be in (0, 1)")
        check(self.min_abs_lfc >= 0 and self.responsive_lfc >= 0, "LFC thresholds must be >= 0")
        check(self.background in ("screen", "predicted"), "background must be 'screen' or 'predicted'")
        check(0 < self.fdr < 1, "fdr must be in (0, 1)")
        check(self.n_boot >= 1, "n_boot must be >= 1")
        check(self.chunk_size >= 1, "chunk_size must be >= 1")
