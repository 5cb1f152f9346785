"""Look at a model directory or at a data set through a model's tokenizer, before a long run.

:func:`inspect_model` reports what a checkpoint is (kind, sizes, vocabulary, special tokens,
dictionaries found); :func:`inspect_data` tokenizes an .h5ad file with a model and reports how
many cells and genes made it through and how long the sequences are. Both return plain dicts
(the CLI commands ``inspect-model`` / ``inspect-data`` print them as tables or JSON).
"""

from __future__ import annotations

import os

import numpy as np


def inspect_model(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Facts about a Geneformer or scGPT directory (loads it, so broken weights are reported)."""
    from .models import load_model

    adapter = load_model(path, device=device)
    facts = dict(adapter.describe())
    model = getattr(adapter, "model", None)
    if model is not None:
        facts["n_parameters"] = int(sum(p.numel() for p in model.parameters()))
    return facts


def _stats(x: np.ndarray) -> dict:
    """min / median / mean / max of a length vector (zeros when empty)."""
    if x.size == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {"min": int(x.min()), "median": float(np.median(x)), "mean": round(float(x.mean()), 2),
            "max": int(x.max())}


def inspect_data(model_path: str | os.PathLike, data_path: str | os.PathLike, mode: str = "official",
                 gene_column: str | None = None, layer: str | None = None, normalized: bool = False,
                 max_length: int | None = None) -> dict:
    """Tokenize the cells of ``data_path`` (.h5ad) with the model at ``model_path`` and report
    cells kept / skipped, genes mapped / unmapped and sequence-length statistics.

    The options are those of the model's ``tokenize`` (``mode`` "official" or "reference",
    ``gene_column`` var column with gene ids, ``layer`` counts layer, ``normalized`` to accept
    non-count data, ``max_length`` tokens per cell).
    """
    from .data import read_cells
    from .models import load_model

    adapter = load_model(model_path)
    adata = read_cells(data_path)
    cells = adapter.tokenize(adata, mode=mode, gene_column=gene_column, layer=layer,
                             normalized=normalized, max_length=max_length, source=data_path)
    info = dict(cells.info)
    lengths = cells.lengths()
    genes_per_cell = np.array([int(m.sum()) for m in cells.gene_mask], dtype=np.int64)
    report = {
        "model": str(model_path), "kind": adapter.kind, "data": str(data_path), "mode": mode,
        "cells": int(adata.n_obs), "cells_kept": len(cells), "cells_skipped": int(cells.n_skipped),
        "genes": int(adata.n_vars), "genes_mapped": info.get("genes_mapped"),
        "genes_unmapped": info.get("genes_unmapped"),
        "sequence_length": _stats(lengths), "genes_per_cell": _stats(genes_per_cell),
    }
    for key in ("gene_ids_from", "duplicate_genes_summed", "genes_without_median", "cells_truncated",
                "cells_sampled", "unmapped_examples"):
        if key in info:
            report[key] = info[key]
    return report
