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

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    'CatalogAccumulator': '.catalog',
    'CatalogCounts': '.catalog',
    'catalog_table': '.catalog',
    'top_genes': '.catalog',
    'UNANNOTATED': '.labels',
    'annotation_summary': '.labels',
    'find_label_library': '.labels',
    'label_features': '.labels',
    'select_from_catalog': '.labels',
    'AnnotateConfig': '.config',
    'annotate': '.stage',
    'annotate_layer': '.stage',
    'layer_counts': '.stage',
    'load_annotation': '.stage',
    'load_libraries': '.stage',
    'select_features': '.stage',
}

__all__ = ["AnnotateConfig", "annotate", "annotate_layer", "load_annotation", "select_features",
           "CatalogAccumulator", "CatalogCounts", "catalog_table", "top_genes", "label_features",
           "annotation_summary", "find_label_library", "select_from_catalog", "layer_counts",
           "load_libraries", "UNANNOTATED"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
