"""Options of ``sccircuits analyze`` and ``sccircuits compare`` (saved in the manifest)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import COMPAT_MODES, check, option, parse_names

EDGE_SETS = ("all", "capped")


@dataclass
class AnalyzeConfig:
    """Options of ``sccircuits analyze`` (one condition)."""

    n_perm: int = option(1000, "permutations of the coherence null")
    seed: int = option(0, "seed of the coherence null")
    libraries: list[str] = option(factory=lambda: ["go", "kegg", "reactome"],
                                  help="library name prefixes whose terms count for coherence (STRING/TRRUST never count)")
    q_max: float = option(0.05, "a term is significant for a feature when its q < this")
    persistence_min_overlap: float = option(0.5, "coherence control: an edge whose ends share at least this share "
                                                 "of top genes (overlap coefficient) is a persistent feature, tested apart")
    n_layers: int | None = option(None, "model layers for relative depth (default: inferred from SAEs, catalogs and edges)")
    gene_sets: str | None = option(None, "GMT with each domain term's genes for novel relations (default: union of top genes)")
    min_shared_genes: int = option(3, "compat novel rule: fewer than this many shared genes")
    pagerank_alpha: float = option(0.85, "PageRank damping of the domain meta-graph")
    top_hubs: int = option(20, "hubs listed in summary.json (hubs.parquet has every node)")
    graphml: bool = option(True, "write the circuit graph as GraphML")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        check(self.n_perm >= 0, "n_perm must be >= 0")
        check(0 < self.q_max <= 1, "q_max must be in (0, 1]")
        check(0 < self.persistence_min_overlap <= 1, "persistence_min_overlap must be in (0, 1]")
        check(self.n_layers is None or self.n_layers >= 2, "n_layers must be >= 2")
        check(0 < self.pagerank_alpha < 1, "pagerank_alpha must be in (0, 1)")
        check(self.min_shared_genes >= 1, "min_shared_genes must be >= 1")
        check(self.top_hubs >= 0, "top_hubs must be >= 0")
        self.libraries = parse_names(self.libraries, "libraries")
        check(len(self.libraries) > 0, "libraries must not be empty")


@dataclass
class CompareConfig:
    """Options of ``sccircuits compare`` (several conditions)."""

    n_perm: int = option(1000, "draws of the label-permutation null (published: 1,000)")
    n_rewire: int = option(1000, "draws of the degree-preserving rewiring null")
    n_edge_perm: int = option(1000, "draws of the edge-permutation null (headline: keeps domain popularity and self pairs)")
    rewire_swaps_per_draw: float = option(1.0, "swap attempts between rewiring draws, in units of the number of pairs")
    seed: int = option(42, "seed of the consensus and disease nulls (published: 42)")
    high_conf_abs_d: float = option(1.0, "high-confidence consensus pair: mean |d| above this in every group")
    edge_sets: list[str] = option(factory=lambda: ["all", "capped"], help="edge sets to compare: all (uncapped) and/or capped")
    contrasts: list[str] = option(factory=list, help="tissue contrasts 'FOCUS:BASELINE' (run names or paths), e.g. same model+SAE, other cells")
    gene_sets: str | None = option(None, "GMT with each domain term's genes (novel relations; default: union of top genes)")
    disease_gmt: str | None = option(None, "independent disease gene sets (GMT); default: keyword categories from GO names")
    q_max: float = option(0.05, "FDR level for novel relations and disease membership")
    disease_n_perm: int = option(1000, "draws of the degree-conditioned disease null (0: Fisher only)")
    disease_min_stratum: int = option(5, "degree-conditioned disease null: fewest domains per degree stratum")
    min_shared_genes: int = option(3, "compat novel rule: fewer than this many shared genes")
    analyze: AnalyzeConfig = option(factory=AnalyzeConfig, help="options of the per-run summaries when a run has no analysis yet")
    progress: bool = option(True, "show progress bars")
    compat: str = option("none", "'reference': also report the published consensus p, novel, disease and tissue "
                                 "rules (compare.json 'reference', reference_*.parquet; docs/compat.md)")
    compat_gene_sets: list[str] = option(factory=list, help="compat: GO BP, KEGG, Reactome GMTs in this order "
                                                            "(default: the annotate stage's --gene-sets)")
    compat_trrust: str | None = option(None, "compat: TRRUST TSV for the published trrust_TFs disease category "
                                             "(default: the annotate stage's --trrust)")
    compat_contrasts: list[str] = option(factory=list, help="compat: published tissue contrasts FOCUS:BASELINE, runs "
                                                            "joined by '+' (published: tissue GF+tissue scGPT:K562 GF); "
                                                            "default: contrasts")

    def __post_init__(self) -> None:
        if isinstance(self.analyze, dict):
            self.analyze = AnalyzeConfig(**self.analyze)
        check(self.compat in COMPAT_MODES, f"compat must be 'none' or 'reference', got {self.compat!r}")
        self.compat_gene_sets = parse_names(self.compat_gene_sets, "compat_gene_sets")
        self.compat_contrasts = parse_names(self.compat_contrasts, "compat_contrasts")
        for c in self.compat_contrasts:
            check(c.count(":") == 1 and all(x for part in c.split(":") for x in part.split("+")),
                  f"compat contrast must look like FOCUS[+FOCUS2]:BASELINE, got {c!r}")
        check(self.n_perm >= 0 and self.n_rewire >= 0 and self.n_edge_perm >= 0,
              "n_perm, n_rewire and n_edge_perm must be >= 0")
        check(self.disease_n_perm >= 0, "disease_n_perm must be >= 0")
        check(self.disease_min_stratum >= 1, "disease_min_stratum must be >= 1")
        check(self.rewire_swaps_per_draw > 0, "rewire_swaps_per_draw must be > 0")
        self.edge_sets = parse_names(self.edge_sets, "edge_sets")
        self.contrasts = parse_names(self.contrasts, "contrasts")
        check(len(self.edge_sets) > 0 and all(x in EDGE_SETS for x in self.edge_sets),
              f"edge_sets must be a non-empty subset of {EDGE_SETS}")
        check(0 < self.q_max <= 1, "q_max must be in (0, 1]")
        for c in self.contrasts:
            check(c.count(":") == 1 and all(c.split(":")), f"contrast must look like FOCUS:BASELINE, got {c!r}")
