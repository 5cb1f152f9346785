"""The TopK sparse autoencoder used at every layer.

Encoding (the published formula, Gao et al. 2024 / bio-sae)::

    pre = (h - activation_mean) @ W_enc + b_enc          # (..., d_sae)
    keep the k largest entries of ``pre`` (over ALL latents), ReLU them, zero the rest
    h_hat = z @ W_dec + b_dec + activation_mean

``encode`` takes RAW residuals and subtracts the stored per-layer activation mean itself;
``decode`` adds it back, so callers never centre anything. Feature ``f``'s direction in the
residual stream is ``W_dec[f]`` (a row; shape ``(d_sae, d_in)`` as in SAELens).

Because ReLU is applied after the top-k selection, a position can have fewer than ``k``
strictly positive activations when some kept pre-activations are negative; the *support*
(the kept set) always has exactly ``k`` members, and :meth:`TopKSAE.encode_topk` returns it.
"""

from __future__ import annotations

import torch
from torch import nn


class TopKSAE(nn.Module):
    """TopK SAE with the mean-centring built in (see module docstring).

    Parameters: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae)``, ``W_dec (d_sae, d_in)``,
    ``b_dec (d_in)``; buffer ``activation_mean (d_in)``. ``metadata`` is a free-form dict
    (layer, model, training metrics) saved into ``cfg.json``.
    """

    def __init__(self, d_in: int, d_sae: int, k: int, activation_mean: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        if not (0 < k <= d_sae):
            raise ValueError(f"k must be in 1..d_sae ({d_sae}), got {k}")
        self.d_in, self.d_sae, self.k = int(d_in), int(d_sae), int(k)
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        mean = torch.zeros(d_in, **kw) if activation_mean is None else torch.as_tensor(activation_mean).to(**kw)
        if mean.shape != (d_in,):
            raise ValueError(f"activation_mean must have shape ({d_in},), got {tuple(mean.shape)}")
        self.register_buffer("activation_mean", mean.clone())
        self.metadata: dict = {}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, k={self.k}"

    # -- encoding ------------------------------------------------------------------------
    def pre_activations(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of RAW residuals ``h (..., d_in)`` -> ``(..., d_sae)``."""
        x = h.to(self.W_enc.dtype) - self.activation_mean
        return torch.nn.functional.linear(x, self.W_enc.T, self.b_enc)

    def encode_topk(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse code as (values, indices), each ``(..., k)``: the kept latents (TopK over all
        pre-activations) and their ReLU'd values (some may be 0)."""
        top = torch.topk(self.pre_activations(h), self.k, dim=-1)
        return torch.relu(top.values), top.indices

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Dense code ``(..., d_sae)`` of RAW residuals; nonzero only at the k kept latents."""
        pre = self.pre_activations(h)
        return topk_relu(pre, self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the RAW residual space (the activation mean added back)."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec + self.activation_mean

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(h))

    # -- helpers -------------------------------------------------------------------------
    @torch.no_grad()
    def feature_norms(self) -> torch.Tensor:
        """L2 norm of each feature's decoder direction ``W_dec[f]`` -> ``(d_sae,)``."""
        return self.W_dec.norm(dim=1)


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of ``pre`` along the last dim, ReLU them, zero the rest."""
    top = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
