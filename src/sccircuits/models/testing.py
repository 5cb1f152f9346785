"""Tiny models and data for tests, benchmarks and examples (random weights, nothing downloaded).

``make_synthetic_adata`` lives here; ``make_tiny_geneformer`` and ``make_tiny_scgpt`` write a
small checkpoint directory in the real on-disk format of each model so that it loads through
:func:`sccircuits.models.load_model` exactly like a real one.
"""

from __future__ import annotations

import numpy as np


def gene_ids(n: int) -> list[str]:
    """Ensembl-style ids ENSG00000000001, ... used by the synthetic data."""
    return [f"ENSG{i:011d}" for i in range(1, n + 1)]


def gene_symbols(n: int) -> list[str]:
    """Symbols GENE1, GENE2, ... matching :func:`gene_ids` one to one."""
    return [f"GENE{i}" for i in range(1, n + 1)]


def make_synthetic_adata(n_cells: int = 24, n_genes: int = 60, seed: int = 0, n_types: int = 3):
    """Raw integer counts with a few cell types (type-specific programmes), Ensembl ids as
    var_names, symbols in ``var['gene_symbols']``, type labels in ``obs['cell_type']``."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 2.0, size=n_genes)
    programmes = rng.gamma(0.5, 3.0, size=(n_types, n_genes)) * (rng.random((n_types, n_genes)) < 0.3)
    types = rng.integers(0, n_types, size=n_cells)
    size = rng.lognormal(0.0, 0.3, size=n_cells)[:, None]
    mu = (base[None, :] + programmes[types]) * size
    counts = rng.poisson(mu).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1.0  # no empty cells
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame({"gene_symbols": gene_symbols(n_genes)}, index=gene_ids(n_genes))
    return ad.AnnData(X=counts, obs=obs, var=var)


def make_tiny_scgpt(path, n_genes: int = 60, n_layers: int = 4, d_model: int = 32, seed: int = 0,
                    n_heads: int = 4, flash_names: bool = False):
    """Write a random scGPT directory (args.json, vocab.json, best_model.pt) at ``path``.

    The vocabulary is :func:`gene_symbols` ``(n_genes)`` followed by ``<pad>``, ``<cls>``,
    ``<eoc>``; args.json uses the official key names (d_hid = 2 * d_model so that transposed
    weights cannot load). The state dict holds every encoder weight plus a small expression
    decoder (``decoder.fc.*``, ignored by our loader, as real checkpoints carry decoders too).
    ``flash_names`` saves the attention projection as ``self_attn.Wqkv.*`` like checkpoints
    trained with flash attention. Deterministic for a given ``seed``. Returns the path.
    """
    import json
    from pathlib import Path

    import torch

    from .scgpt import ScGPTConfig, ScGPTModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {s: i for i, s in enumerate(gene_symbols(n_genes))}
    for tok in ("<pad>", "<cls>", "<eoc>"):
        vocab[tok] = len(vocab)
    args = {"embsize": d_model, "nheads": n_heads, "d_hid": 2 * d_model, "nlayers": n_layers,
            "n_layers_cls": 3, "dropout": 0.2, "pad_token": "<pad>", "pad_value": -2, "mask_value": -1,
            "n_bins": 51, "input_emb_style": "continuous", "max_seq_len": 1200,
            "special_tokens": ["<pad>", "<cls>", "<eoc>"], "fast_transformer": flash_names}
    cfg = ScGPTConfig(vocab_size=len(vocab), d_model=d_model, n_heads=n_heads, d_hid=2 * d_model,
                      n_layers=n_layers)
    state = ScGPTModel(cfg).state_dict()
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(state):
        t = state[name]
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        if "norm" in name:  # LayerNorm: weights near 1, small biases
            state[name] = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif t.dim() == 2 and name != "encoder.embedding.weight":
            state[name] = noise / t.shape[1] ** 0.5
        else:  # embeddings and biases
            state[name] = noise if t.dim() == 2 else 0.1 * noise
    state["encoder.embedding.weight"][vocab["<pad>"]] = 0.0  # as nn.Embedding(padding_idx) inits it
    for i, (n_in, n_out) in enumerate([(d_model, d_model), (d_model, d_model), (d_model, 1)]):
        state[f"decoder.fc.{2 * i}.weight"] = torch.randn(n_out, n_in, generator=gen) / n_in ** 0.5
        state[f"decoder.fc.{2 * i}.bias"] = torch.zeros(n_out)
    if flash_names:
        state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in state.items()}
    (path / "args.json").write_text(json.dumps(args, indent=2))
    (path / "vocab.json").write_text(json.dumps(vocab, indent=2))
    torch.save({k: v.contiguous() for k, v in state.items()}, path / "best_model.pt")
    return path


def make_tiny_geneformer(path, n_genes: int = 60, n_layers: int = 4, d_model: int = 32, seed: int = 0,
                         n_heads: int = 4, version: int = 2, max_positions: int | None = None,
                         init_std: float = 0.2):
    """Write a random Geneformer-style ``BertForMaskedLM`` directory covering the genes
    :func:`gene_ids` ``(n_genes)`` and return its path.

    Files: config.json + model.safetensors (``save_pretrained``), and the token, gene-median and
    gene-name dictionaries as pickles (V2: ``*_gc104M.pkl`` with ``<pad> <mask> <cls> <eos>`` =
    0..3; V1: ``*_gc30M.pkl`` with ``<pad> <mask>`` = 0, 1). Medians are positive and varied.
    ``max_positions`` defaults to room for every gene plus ``<cls>``/``<eos>``. ``init_std``
    (larger than BERT's 0.02) keeps attention and activations varied in so small a model.
    Deterministic for a given seed; the global torch random state is left untouched.
    """
    import pickle
    from pathlib import Path

    import torch
    from transformers import BertConfig, BertForMaskedLM

    if version not in (1, 2):
        raise ValueError("version must be 1 or 2")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<mask>", "<cls>", "<eos>"] if version == 2 else ["<pad>", "<mask>"]
    ids, symbols = gene_ids(n_genes), gene_symbols(n_genes)
    token_dict = {t: i for i, t in enumerate(specials)}
    token_dict.update({g: len(specials) + i for i, g in enumerate(ids)})
    rng = np.random.default_rng(seed)
    medians = {g: float(m) for g, m in zip(ids, np.round(rng.lognormal(0.0, 0.7, size=n_genes) + 0.05, 4))}
    names = dict(zip(symbols, ids))
    config = BertConfig(
        vocab_size=len(token_dict), hidden_size=d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, intermediate_size=2 * d_model, hidden_act="relu",
        max_position_embeddings=max_positions or (n_genes + 2), layer_norm_eps=1e-12,
        hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02, pad_token_id=0,
        initializer_range=init_std, type_vocab_size=2, architectures=["BertForMaskedLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    suffix = "gc104M" if version == 2 else "gc30M"
    for stem, obj in ((f"token_dictionary_{suffix}", token_dict),
                      (f"gene_median_dictionary_{suffix}", medians),
                      (f"gene_name_id_dict_{suffix}", names)):
        with open(path / f"{stem}.pkl", "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
    return path
