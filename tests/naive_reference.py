"""A deliberately naive, independent implementation of the published tracing loop.

Used only to check the real tracer (``sccircuits.trace``) and by ``benchmarks/trace_speed.py``.
It follows docs/method.md §5 literally, the way the published scripts did:

* for every cell, for every source layer, for every traced feature that is active in the cell:
  ONE full forward pass of the whole model, batch 1, with a forward hook on block ``s`` that
  adds ``-z_f * W_dec[f]`` to its output (bio-sae-circuits ``src/13_causal_circuit_tracing.py``
  L654-684: ``h_ablated[:, fi] = 0``, ``delta = decode(h_ablated) - decode(h_sparse)``);
* "active" at a position = ``f`` is in the SAE's top-k support there (L655: ``(topk_indices ==
  fi).any(dim=1)``), even where the ReLU'd value is 0 (bio-sae-circuits ``src/sae_model.py``
  L64-65: top-k first, ReLU after); the observation is the mean over those positions of
  encode(ablated) - encode(clean) (L688-708);
* the SAE code is computed here from the raw weights (not with ``TopKSAE.encode``);
* statistics with plain numpy per test as the published Welford accumulator finalises them
  (L222-230: d = mean / max(sd, 1e-10), consistency = max(#>0, n - #>0) / n, no test when
  n < 2, L745), published thresholds (L78-80, L756) and top-50 cap by |d| (L763).

Shares nothing with the tracer except the tokenized cells and the weights. For Geneformer it
runs Hugging Face's ``BertModel`` loaded separately with eager attention (as the published code
did); for scGPT it calls the adapter's embedding and blocks one after another (batch 1, no
padding, so no mask).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def sae_encode_support(sae, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code, top-k indices) from raw weights, fp32 as published (sae_model.py L60-71): top-k of
    (h - mean) @ W_enc + b_enc, then ReLU of the kept values."""
    w, b, mean = (x.detach().float() for x in (sae.W_enc, sae.b_enc, sae.activation_mean))
    pre = (h.detach().float() - mean) @ w + b
    top = torch.topk(pre, sae.k, dim=-1)
    z = torch.zeros_like(pre)
    z.scatter_(-1, top.indices, torch.relu(top.values))
    return z, top.indices


def sae_encode(sae, h: torch.Tensor) -> torch.Tensor:
    """TopK code from raw weights (see :func:`sae_encode_support`)."""
    return sae_encode_support(sae, h)[0]


class _Patch:
    """Forward hook adding ``delta`` (L, d) to a block's output."""

    def __init__(self):
        self.delta = None

    def __call__(self, module, inputs, output):
        if self.delta is None:
            return output
        if isinstance(output, tuple):
            return (output[0] + self.delta.to(output[0].dtype),) + tuple(output[1:])
        return output + self.delta.to(output.dtype)


class _NaiveModel:
    """Full forward passes of one cell (batch 1) returning every block's output."""

    def __init__(self, adapter):
        self.kind = adapter.kind
        if adapter.kind == "geneformer":
            from transformers import BertModel

            self.net = BertModel.from_pretrained(str(adapter.path), attn_implementation="eager").eval()
            self.blocks = self.net.encoder.layer
        else:
            self.net = adapter.model.eval()
            self.blocks = self.net.transformer_encoder.layers
        self.patch = _Patch()
        self.handles = []

    def hook(self, layer: int) -> None:
        for h in self.handles:
            h.remove()
        self.handles = [self.blocks[layer].register_forward_hook(self.patch)]

    @torch.no_grad()
    def forward(self, ids: np.ndarray, values: np.ndarray | None) -> list[torch.Tensor]:
        ids_t = torch.as_tensor(ids, dtype=torch.long)[None]
        if self.kind == "geneformer":
            out = self.net(input_ids=ids_t, output_hidden_states=True)
            return [h[0] for h in out.hidden_states[1:]]
        x = self.net.embed(ids_t, torch.as_tensor(values, dtype=torch.float32)[None])
        outs = []
        for block in self.blocks:
            x = block(x, None)
            outs.append(x[0])
        return outs


def naive_observations(adapter, saes: dict, cells, features: dict[int, list[int]]) -> dict:
    """{(s, f, t): list of per-cell observation vectors (float64, (d_sae_t,))}, plus the number of
    forward passes under key "forward_passes"."""
    model = _NaiveModel(adapter)
    obs: dict = {}
    passes = 0
    sae_layers = sorted(saes)
    for c in range(len(cells)):
        ids = cells.input_ids[c]
        vals = None if cells.values is None else cells.values[c]
        genes = torch.as_tensor(cells.gene_mask[c])
        model.patch.delta = None
        clean = model.forward(ids, vals)
        passes += 1
        for s, feats in features.items():
            z_s = torch.zeros(len(ids), saes[s].d_sae, dtype=torch.float32)
            support = torch.full((len(ids), saes[s].k), -1, dtype=torch.long)
            z_s[genes], support[genes] = sae_encode_support(saes[s], clean[s][genes])
            model.hook(s)
            for f in feats:
                fired = (support == f).any(1)  # published L655: in the top-k, whatever its value
                if not bool(fired.any()):
                    continue
                delta = -z_s[:, f, None] * saes[s].W_dec[f].detach().float()[None, :]
                model.patch.delta = delta
                ablated = model.forward(ids, vals)
                model.patch.delta = None
                passes += 1
                for t in sae_layers:
                    if t <= s:
                        continue
                    za = sae_encode(saes[t], ablated[t][fired])
                    zc = sae_encode(saes[t], clean[t][fired])
                    obs.setdefault((s, f, t), []).append((za - zc).double().mean(0).numpy())
        for h in model.handles:
            h.remove()
        model.handles = []
    obs["forward_passes"] = passes
    return obs


def naive_edges(obs: dict, d_threshold: float = 0.5, consistency_threshold: float = 0.7,
                top_n: int = 50, min_cells: int = 2) -> pd.DataFrame:
    """Published statistics and edge rule, one test at a time (slow on purpose)."""
    rows = []
    for key, vecs in obs.items():
        if key == "forward_passes":
            continue
        s, f, t = key
        X = np.stack(vecs)
        n = X.shape[0]
        if n < min_cells:
            continue
        cand = []
        for g in range(X.shape[1]):
            x = X[:, g]
            sd = x.std(ddof=1)
            d = x.mean() / max(sd, 1e-10)  # published L228
            pos = int((x > 0).sum())
            cons = max(pos, n - pos) / n
            if abs(d) > d_threshold and cons > consistency_threshold:
                cand.append((s, f, t, g, d, cons, n, x.mean()))
        cand.sort(key=lambda r: (-abs(r[4]), r[3]))
        rows.extend(cand[:top_n] if top_n > 0 else cand)
    df = pd.DataFrame(rows, columns=["source_layer", "source_feature", "target_layer", "target_feature",
                                     "cohens_d", "consistency", "n_cells", "mean_delta"])
    return df.sort_values(["source_layer", "source_feature", "target_layer", "target_feature"], ignore_index=True)


EDGE_KEY = ["source_layer", "source_feature", "target_layer", "target_feature"]


def assert_same_edges(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    """The tracer's capped edges equal the naive loop's: same keys, d, mean delta and cell counts."""
    merged = ours.merge(ref, on=EDGE_KEY, how="outer", suffixes=("", "_ref"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged["_merge"].value_counts()
    np.testing.assert_allclose(merged["cohens_d"], merged["cohens_d_ref"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(merged["mean_delta"], merged["mean_delta_ref"], rtol=1e-4, atol=1e-5)
    assert (merged["n_cells"] == merged["n_cells_ref"]).all()
