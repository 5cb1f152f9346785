"""Options of ``sccircuits atlas`` (one dataclass; importing it is cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check, option


@dataclass
class AtlasConfig:
    """Options of ``sccircuits atlas``."""

    max_edges: int = option(250_000, "most edges embedded; beyond it the strongest |d| are kept and the page "
                                      "says how many were left out")
    max_features: int = option(50_000, "most features embedded: those of the kept edges first, then labelled "
                                        "features, then the most frequent ones")
    top_genes: int = option(20, "top genes shown per feature")
    max_terms: int = option(10, "enriched terms shown per feature (lowest q first)")
    capped: bool = option(False, "embed only the published top-N-capped edges (in_cap) instead of the trace's "
                                 "edge set")
    cell_type_column: str | None = option(None, "obs column of the run's .h5ad with cell types (default: the "
                                                "first of cell_type, celltype, cell_types, bulk_labels, "
                                                "cell_ontology_class, annotation; '' turns it off)")
    cell_type_cells: int = option(300, "cells (a seeded random sample of the extracted cells) whose SAE codes "
                                       "give the activity per cell type")
    seed: int = option(0, "seed of the cell sample")

    def __post_init__(self) -> None:
        check(self.max_edges >= 0, "max_edges must be >= 0")
        check(self.max_features >= 1, "max_features must be >= 1")
        check(self.top_genes >= 1 and self.max_terms >= 0, "top_genes must be >= 1 and max_terms >= 0")
        check(self.cell_type_cells >= 1, "cell_type_cells must be >= 1")
