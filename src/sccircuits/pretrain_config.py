"""Options of ``pretrain-demo`` (one dataclass, saved with the models; importing it is cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import check, option

KINDS = ("geneformer", "scgpt")
"""Demo model kinds."""


@dataclass
class PretrainConfig:
    """Options of ``sccircuits pretrain-demo`` (defaults = the shipped demo models)."""

    out: str = option("", "output directory; models go to OUT/demo-geneformer and OUT/demo-scgpt")
    kind: str = option("both", "geneformer, scgpt or both")
    seed: int = option(0, "seed for weights, held-out cells, masking and batch order")
    n_layers: int = option(6, "transformer blocks")
    d_model: int = option(64, "hidden size")
    n_heads: int = option(4, "attention heads")
    d_ff: int = option(128, "feed-forward width (Geneformer: intermediate_size; scGPT: d_hid)")
    max_length: int = option(128, "tokens per cell, specials included (Geneformer: max_position_embeddings, "
                                  "top-ranked genes kept; scGPT: max_seq_len, genes sampled)")
    epochs: int = option(20, "passes over the training cells")
    batch_size: int = option(16, "cells per step")
    lr: float = option(2e-3, "peak AdamW learning rate (linear warm-up, then linear decay)")
    warmup_frac: float = option(0.1, "fraction of steps spent warming up")
    weight_decay: float = option(0.01, "AdamW weight decay")
    dropout: float = option(0.02, "dropout (Geneformer's value; also used for scGPT)")
    holdout_frac: float = option(0.1, "fraction of cells held out for evaluation")
    geneformer_mask_frac: float = option(0.15, "fraction of gene positions masked (Geneformer)")
    scgpt_mask_frac: float = option(0.4, "fraction of gene values masked (scGPT)")
    threads: int = option(1, "CPU threads for torch during training (1 is fastest on a busy machine)")
    max_cells: int | None = option(None, "use only the first N cells (for quick tests)")
    embedding_init: str = option("coexpression", "gene token embeddings at the start of training: "
                                 "'coexpression' (each gene's loadings on the top d_model principal components "
                                 "of the training cells' log-normalised, gene-standardised expression, so "
                                 "co-expressed genes start close) or 'random' (the architecture's own "
                                 "initialisation, as the models before 2026-12-02)")
    embedding_scale: float = option(4.0, "with 'coexpression': the gene rows' mean norm as a multiple of the "
                                         "architecture's random-initialisation row norm (larger: gene identity "
                                         "weighs more against position/value embeddings; 1, 2, 4 and 8 were measured "
                                         "for the demo models' annotation rate, docs/demo-models.md)")
    freeze_embeddings: bool = option(False, "keep the gene token embeddings at their initial values during "
                                            "training (with 'coexpression': the co-expression structure survives "
                                            "unchanged; Geneformer's tied output embedding is frozen with them)")
    data: str = option("blood", "bundled training cells: 'blood' (719 immune cells x 8,455 genes, "
                                "sccircuits.datasets.blood) or 'pbmc' (700 PBMCs x 765 genes)")

    def __post_init__(self) -> None:
        check(bool(self.out), "pretrain-demo: --out is required")
        check(self.kind in KINDS + ("both",), f"pretrain-demo: kind must be geneformer, scgpt or both, got {self.kind!r}")
        check(self.d_model % self.n_heads == 0, f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        check(self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}")
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "epochs", "batch_size", "threads"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("holdout_frac", "geneformer_mask_frac", "scgpt_mask_frac"):
            check(0.0 < getattr(self, name) < 1.0, f"{name} must be in (0, 1), got {getattr(self, name)}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.max_cells is None or self.max_cells >= 10, "max_cells must be >= 10")
        check(self.embedding_init in ("coexpression", "random"),
              f"pretrain-demo: embedding_init must be 'coexpression' or 'random', got {self.embedding_init!r}")
        check(self.embedding_scale > 0, f"pretrain-demo: embedding_scale must be > 0, got {self.embedding_scale}")
        check(self.data in ("blood", "pbmc"), f"pretrain-demo: data must be 'blood' or 'pbmc', got {self.data!r}")

    def kinds(self) -> list[str]:
        return list(KINDS) if self.kind == "both" else [self.kind]
