"""Options of the annotate stage (one dataclass, saved in the run manifest; importing it is cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import apply_compat, check, compat_option, option, parse_layers


@dataclass
class AnnotateConfig:
    """Options of ``sccircuits annotate``."""

    top_genes: int = option(20, "top genes per feature (by mean activation where it fires)")
    min_count: int | None = compat_option(5, 1, "a top gene must be seen at least this many times where the "
                                                "feature fires")
    layers: list[int] | None = option(None, "layers to annotate (default: every layer with an SAE)")
    compat: str = option("none", "none, or 'reference' to reproduce the published annotation, flaws included")
    alpha: float = option(0.05, "FDR level for significant terms and labels")
    min_term_size: int = option(5, "smallest term tested (after intersecting with the background)")
    max_term_size: int = option(500, "largest term tested (after intersecting with the background)")
    min_set_size: int = option(3, "features with fewer top genes (in the background) are not tested")
    label_library: str = option("", "library whose terms label features (default: the GO BP one, "
                                     "found by name: go_bp, GO_Biological_Process...)")
    string_pairs: str | None = option(None, "STRING pairs TSV (gene1, gene2 symbols)")
    trrust: str | None = option(None, "TRRUST TSV (TF, target, ...)")
    network_permutations: int = option(1000, "degree-preserving rewirings for the STRING/TRRUST null")
    seed: int = option(0, "random seed (network null)")
    store_max_q: float = option(0.05, "enrichment rows kept in the table: q <= this (1.0 keeps every "
                                      "test with overlap >= 1)")
    batch_size: int = option(8192, "positions per SAE encode batch")
    device: str = option("cpu", "torch device for SAE encoding")

    def __post_init__(self) -> None:
        apply_compat(self)
        check(self.top_genes >= 1, "top_genes must be >= 1")
        check(self.min_count >= 1, "min_count must be >= 1")
        check(0 < self.alpha < 1, "alpha must be in (0, 1)")
        check(1 <= self.min_term_size <= self.max_term_size, "need 1 <= min_term_size <= max_term_size")
        check(self.min_set_size >= 1, "min_set_size must be >= 1")
        check(self.network_permutations >= 1, "network_permutations must be >= 1")
        check(0 < self.store_max_q <= 1, "store_max_q must be in (0, 1]")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        self.layers = parse_layers(self.layers, "layers")
