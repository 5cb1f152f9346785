"""Model adapters. :func:`load_model` detects the kind of a checkpoint directory."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .base import ModelAdapter, TokenBatch, TokenizedCells, collate, length_batches

__all__ = ["load_model", "detect_kind", "ModelAdapter", "TokenBatch", "TokenizedCells", "collate",
           "length_batches"]


def detect_kind(path: str | os.PathLike) -> str:
    """"geneformer" for a Hugging Face BertForMaskedLM directory, "scgpt" for a directory with
    args.json + vocab.json + best_model.pt; a clear error otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "model directory not found")
    if not p.is_dir():
        raise InputError(p, "expected a model directory, got a file")
    if (p / "args.json").is_file() or (p / "best_model.pt").is_file():
        missing = [f for f in ("args.json", "vocab.json", "best_model.pt") if not (p / f).is_file()]
        if missing:
            raise InputError(p, f"looks like an scGPT directory but lacks {', '.join(missing)}")
        return "scgpt"
    if (p / "config.json").is_file():
        return "geneformer"
    raise InputError(p, "not a model directory: expected config.json (Geneformer / Hugging Face) "
                        "or args.json + vocab.json + best_model.pt (scGPT)")


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32", **kwargs) -> ModelAdapter:
    """Load a Geneformer or scGPT checkpoint directory (local files only) as an adapter."""
    kind = detect_kind(path)
    if kind == "geneformer":
        from .geneformer import GeneformerAdapter

        return GeneformerAdapter.from_pretrained(path, device=device, dtype=dtype, **kwargs)
    from .scgpt import ScGPTAdapter

    return ScGPTAdapter.from_pretrained(path, device=device, dtype=dtype, **kwargs)
