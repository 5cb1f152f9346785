"""Feature catalog and gene-set annotation of SAE features (issue 5; docs/method.md §4).

Public API::

    from sccircuits.annotate import AnnotateConfig, annotate, load_annotation, select_features
    annotate("runs/k562", ["go_bp.gmt.gz", "kegg.gmt"], AnnotateConfig(min_count=5))
    catalogs, enrichment = load_annotation("runs/k562")   # dicts layer -> DataFrame
    sources = select_features("runs/k562", layer=5, method="richness", n=30)

Modules: :mod:`.catalog` (streaming fire counts and top genes), :mod:`.enrich` (sparse
overlaps, hypergeometric tests, BH), :mod:`.network` (STRING/TRRUST edges, degree-preserving
null), :mod:`.labels` (label rule, richness, selection), :mod:`.stage` (the stage itself).
"""

from .catalog import CatalogAccumulator, CatalogCounts, catalog_table, top_genes
from .labels import UNANNOTATED, annotation_summary, find_label_library, label_features, select_from_catalog
from .stage import (AnnotateConfig, annotate, annotate_layer, layer_counts, load_annotation, load_libraries,
                    select_features)

__all__ = ["AnnotateConfig", "annotate", "annotate_layer", "load_annotation", "select_features",
           "CatalogAccumulator", "CatalogCounts", "catalog_table", "top_genes", "label_features",
           "annotation_summary", "find_label_library", "select_from_catalog", "layer_counts",
           "load_libraries", "UNANNOTATED"]
