"""Inputs for the tracer tests and benchmark: random TopK SAEs (our layout or bio-sae) and
count data written to .h5ad. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sccircuits.models import testing
from sccircuits.sae import TopKSAE, save_sae


def random_sae(d_in: int, d_sae: int, k: int, seed: int, scale: float = 3.0) -> TopKSAE:
    """A TopK SAE with random decoder directions (encoder = decoder transpose) and a small mean."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d_in, generator=g) * 0.05
    sae = TopKSAE(d_in, d_sae, k, activation_mean=mean)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5 * scale)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.01)
    return sae.eval()


def random_saes(layers, d_in: int, d_sae: int = 64, k: int = 8, seed: int = 0) -> dict[int, TopKSAE]:
    return {int(l): random_sae(d_in, d_sae, k, seed * 1000 + int(l)) for l in layers}


def write_saes(saes: dict[int, TopKSAE], path: str | Path, layout: str = "ours") -> Path:
    """Save SAEs as ``layerNN/`` (ours) or ``layerNN_x4_k32/sae_final.pt`` + mean (bio-sae)."""
    path = Path(path)
    for layer, sae in saes.items():
        if layout == "ours":
            save_sae(sae, path / f"layer{layer:02d}")
            continue
        d = path / f"layer{layer:02d}_x{sae.d_sae // sae.d_in}_k{sae.k}"
        d.mkdir(parents=True, exist_ok=True)
        sd = {"W_enc.weight": sae.W_enc.detach().T.contiguous(), "W_enc.bias": sae.b_enc.detach().clone(),
              "W_dec.weight": sae.W_dec.detach().T.contiguous(), "W_dec.bias": sae.b_dec.detach().clone()}
        torch.save({"model_state_dict": sd, "d_model": sae.d_in, "n_features": sae.d_sae, "k": sae.k},
                   d / "sae_final.pt")
        np.save(d / "activation_mean.npy", sae.activation_mean.detach().numpy().astype(np.float32))
    return path


def write_cells(path: str | Path, n_cells: int = 24, n_genes: int = 60, seed: int = 0) -> Path:
    """Synthetic raw counts as .h5ad (Ensembl var_names, symbols in var['gene_symbols'])."""
    path = Path(path)
    testing.make_synthetic_adata(n_cells=n_cells, n_genes=n_genes, seed=seed).write_h5ad(path)
    return path
