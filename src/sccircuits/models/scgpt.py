"""scGPT in plain PyTorch, and its adapter for the pipeline.

The model (read top-down, like nanoGPT):

* ``GeneEncoder``: token embedding followed by LayerNorm.
* ``ContinuousValueEncoder``: each token's input value, clamped at 512, goes through
  Linear(1, d) -> ReLU -> Linear(d, d) -> LayerNorm -> dropout.
* input of block 0 = gene embedding + value embedding (no positional encoding: scGPT treats a
  cell as a set of genes).
* ``EncoderLayer``: post-LayerNorm transformer block (self-attention -> add -> LayerNorm ->
  ReLU MLP -> add -> LayerNorm, eps 1e-5), identical in maths to
  ``torch.nn.TransformerEncoderLayer`` but always the same kernels: no nested tensors and no
  fused "fast path", so a clean pass and a pass resumed from a patched layer compute every later
  block the same way. Padded keys are masked out of attention.

Parameter names are those of the official checkpoints (``encoder.embedding.weight``,
``value_encoder.linear1.weight``, ``transformer_encoder.layers.0.self_attn.in_proj_weight``, ...),
so ``best_model.pt`` loads without renaming except for checkpoints trained with flash attention,
whose attention projection is called ``self_attn.Wqkv`` (mapped to ``in_proj_``).

A model directory holds ``args.json`` (hyper-parameters, official key names: ``embsize``,
``nheads``, ``d_hid``, ``nlayers``, ``dropout``, ``pad_token``, ``pad_value``, ``n_bins``,
``input_emb_style``, ``max_seq_len``, ...), ``vocab.json`` (gene symbol -> token id, plus
``<pad>``, ``<cls>``, ``<eoc>``) and ``best_model.pt`` (a state dict).

Input modes of :meth:`ScGPTAdapter.tokenize`:

* ``official``: the genes of the vocabulary with nonzero counts, in the AnnData's gene order;
  each cell's values binned into 1..n_bins-1 by its own quantiles (:func:`bin_values`, the rule
  of ``scgpt.preprocess._digitize``); ``<cls>`` first with value ``pad_value``; cells longer
  than ``max_seq_len`` keep a seeded random sample of genes (binning is done before sampling,
  as in the official data collator).
* ``reference`` (compat, reproduces the published study): raw nonzero values, unbinned, genes
  sorted by value descending, the top 1200 kept, no ``<cls>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..data import counts_matrix, gene_identifiers, warn_duplicates
from ..errors import InputError
from .base import BlockRunner, PostLNBlock, resolve_dtype, TokenBatch, TokenizedCells, collate
from .pickles import torch_load_refusal

SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
"""Special tokens of scGPT vocabularies (appended when a vocab.json lacks them, as scGPT does)."""

REFERENCE_MAX_GENES = 1200
"""Genes kept per cell by the published study's input (compat mode)."""

ENCODER_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")
"""Checkpoint keys under these prefixes belong to the part of the model we run."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScGPTConfig:
    """Hyper-parameters read from ``args.json`` (official key names in the comments)."""

    vocab_size: int  # len(vocab.json) after adding missing special tokens
    d_model: int  # embsize
    n_heads: int  # nheads
    d_hid: int  # d_hid
    n_layers: int  # nlayers
    dropout: float = 0.2  # dropout (inactive in eval mode)
    pad_token: str = "<pad>"  # pad_token
    pad_value: float = -2.0  # pad_value
    mask_value: float = -1.0  # mask_value
    n_bins: int = 51  # n_bins
    input_emb_style: str = "continuous"  # input_emb_style
    max_seq_len: int = 1200  # max_seq_len
    layer_norm_eps: float = 1e-5  # fixed in scGPT (torch default)
    max_value: float = 512.0  # ContinuousValueEncoder clamp (fixed in scGPT)

    @classmethod
    def from_args(cls, args: dict, vocab_size: int, source: str | os.PathLike) -> "ScGPTConfig":
        """Build from a parsed args.json; missing / invalid entries name ``source``."""
        for key in ("embsize", "nheads", "d_hid", "nlayers"):
            if key not in args:
                raise InputError(source, f"missing '{key}'")
            if not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] <= 0:
                raise InputError(source, f"'{key}' must be a positive integer, got {args[key]!r}")
        if args["embsize"] % args["nheads"]:
            raise InputError(source, f"embsize {args['embsize']} is not divisible by nheads {args['nheads']}")
        style = args.get("input_emb_style", "continuous")
        if style != "continuous":
            raise InputError(source, f"input_emb_style '{style}' is not supported (only 'continuous', "
                                     "the style of the released scGPT models)")
        if args.get("pre_norm", False):
            raise InputError(source, "pre_norm=true is not supported (released scGPT models are post-norm)")
        try:
            return cls(
                vocab_size=vocab_size, d_model=args["embsize"], n_heads=args["nheads"],
                d_hid=args["d_hid"], n_layers=args["nlayers"],
                dropout=float(args.get("dropout", 0.2)),
                pad_token=str(args.get("pad_token", "<pad>")),
                pad_value=float(args.get("pad_value", -2)),
                mask_value=float(args.get("mask_value", -1)),
                n_bins=int(args.get("n_bins", 51)),
                input_emb_style=style,
                max_seq_len=int(args.get("max_seq_len", 1200)),
            )
        except (TypeError, ValueError) as e:
            raise InputError(source, f"invalid value ({e})") from None


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class GeneEncoder(nn.Module):
    """Gene token -> embedding -> LayerNorm."""

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(ids))


class ContinuousValueEncoder(nn.Module):
    """Scalar input value -> clamp(max) -> Linear(1,d) -> ReLU -> Linear(d,d) -> LayerNorm -> dropout."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(values.unsqueeze(-1), max=self.max_value)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout
    (``in_proj_weight`` (3d, d) = stacked q, k, v projections; ``out_proj``)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, L, d); ``attention_mask`` (B, L) bool, True at real tokens (keys that
        may be attended to), or None when nothing is padded."""
        B, L, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        mask = None if attention_mask is None else attention_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, d))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer block with a ReLU MLP (as ``nn.TransformerEncoderLayer``)."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, dropout)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)  # inside the MLP
        self.dropout1 = nn.Dropout(dropout)  # attention residual
        self.dropout2 = nn.Dropout(dropout)  # MLP residual

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, attention_mask)))
        mlp = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(mlp))


class TransformerStack(nn.Module):
    """Holds the blocks as ``layers`` (so keys read ``transformer_encoder.layers.N.*``)."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_hid, cfg.dropout, cfg.layer_norm_eps)
            for _ in range(cfg.n_layers))


class ScGPTModel(nn.Module):
    """The scGPT encoder: embeddings and transformer blocks (the decoders are not needed)."""

    def __init__(self, cfg: ScGPTConfig, pad_id: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = GeneEncoder(cfg.vocab_size, cfg.d_model, padding_idx=pad_id)
        self.value_encoder = ContinuousValueEncoder(cfg.d_model, cfg.dropout, cfg.max_value)
        self.transformer_encoder = TransformerStack(cfg)

    def embed(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Input of block 0: gene embedding + value embedding, (B, L, d)."""
        dtype = self.encoder.embedding.weight.dtype
        return self.encoder(ids) + self.value_encoder(values.to(dtype))

    def run_blocks(self, x: torch.Tensor, attention_mask: torch.Tensor | None, start: int, stop: int,
                   keep: set[int] | None = None) -> dict[int, torch.Tensor]:
        """Run blocks ``start .. stop-1`` on ``x`` (the input of block ``start``); return
        {l: output of block l} for l in ``keep`` (all run blocks when ``keep`` is None)."""
        out = {}
        for i in range(start, stop):
            x = self.transformer_encoder.layers[i](x, attention_mask)
            if keep is None or i in keep:
                out[i] = x
        return out

    def forward(self, ids: torch.Tensor, values: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Output of the last block, (B, L, d)."""
        n = self.cfg.n_layers
        return self.run_blocks(self.embed(ids, values), attention_mask, 0, n, {n - 1})[n - 1]


# --------------------------------------------------------------------------------------------
# Files: vocab.json, args.json, best_model.pt
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read as JSON ({type(e).__name__}: {e})") from None


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """``vocab.json`` (token -> id); missing special tokens are appended with the next ids,
    as scGPT's ``GeneVocab`` does. Ids must be distinct non-negative integers."""
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "expected a non-empty JSON object mapping gene symbols to token ids")
    vocab: dict[str, int] = {}
    for tok, idx in raw.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise InputError(path, f"token '{tok}' has id {idx!r}; ids must be non-negative integers")
        vocab[str(tok)] = idx
    if len(set(vocab.values())) != len(vocab):
        raise InputError(path, "several tokens share one id")
    for tok in SPECIAL_TOKENS:
        if tok not in vocab:
            vocab[tok] = max(vocab.values()) + 1
    return vocab


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of ``best_model.pt`` (loaded with ``weights_only=True``), with flash-attention
    names (``self_attn.Wqkv.*``) and DDP prefixes (``module.``) mapped to ours."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip / pickle / unsafe-global errors all mean "not a usable state dict"
        raise InputError(path, torch_load_refusal(e)) from None
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    out = {}
    for k, v in obj.items():
        k = k.removeprefix("module.").replace("self_attn.Wqkv.", "self_attn.in_proj_")
        out[k] = v
    return out


def load_encoder_weights(model: ScGPTModel, state: dict[str, torch.Tensor],
                         source: str | os.PathLike) -> list[str]:
    """Copy every encoder weight of ``state`` into ``model``, strictly: a missing weight, a
    shape mismatch, a non-finite value or an unexpected encoder key (e.g. more layers than
    args.json says) is an InputError naming ``source``. Returns the ignored (decoder / head)
    keys."""
    own = model.state_dict()
    for key, param in own.items():
        if key not in state:
            raise InputError(source, f"missing encoder weight '{key}' (does args.json match this checkpoint?)")
        if tuple(state[key].shape) != tuple(param.shape):
            raise InputError(source, f"weight '{key}' has shape {tuple(state[key].shape)}, "
                                     f"expected {tuple(param.shape)} from args.json / vocab.json")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise InputError(source, f"weight '{key}' contains NaN or infinite values")
    unexpected = sorted(k for k in state if k.startswith(ENCODER_PREFIXES) and k not in own)
    if unexpected:
        raise InputError(source, f"unexpected encoder weight '{unexpected[0]}' "
                                 f"({len(unexpected)} in all; args.json may not match this checkpoint)")
    with torch.no_grad():
        for key, param in own.items():
            param.copy_(state[key].to(param.dtype))
    return sorted(k for k in state if k not in own)


# --------------------------------------------------------------------------------------------
# Tokenization helpers (pure functions)
# --------------------------------------------------------------------------------------------


def bin_values(x: np.ndarray, n_bins: int, ties: str = "middle",
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Bin one cell's positive values into 1..n_bins-1 by the cell's own quantiles.

    scGPT's rule (``scgpt.preprocess.binning`` / ``_digitize``): edges = the quantiles of ``x``
    at ``linspace(0, 1, n_bins - 1)``; a value strictly between edges gets
    ``np.digitize(x, edges)``. A value equal to one or more edges may go to any bin from
    ``right + 1`` to ``left`` (``right``/``left`` = digitize with right=True/False): scGPT
    draws ``ceil(left + u * (right - left))`` with u uniform in [0, 1). ``ties="middle"`` uses
    u = 0.5 (the middle of that range: deterministic, equal values share a bin);
    ``ties="random"`` draws u from ``rng`` as scGPT does.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bin_values expects a non-empty 1-D array")
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(x, edges)
    right = np.digitize(x, edges, right=True)
    if ties == "middle":
        u = np.full(x.shape, 0.5)
    elif ties == "random":
        u = (rng if rng is not None else np.random.default_rng(0)).random(x.shape)
    else:
        raise ValueError(f"ties must be 'middle' or 'random', got {ties!r}")
    return np.ceil(u * (right - left) + left).astype(np.int64)


def _vocab_columns(ids: np.ndarray, vocab: dict[str, int]) -> tuple[sp.csr_matrix, np.ndarray, int]:
    """Matrix summing the AnnData's gene columns into vocabulary tokens.

    Returns (M (n_var, n_tokens) 0/1 CSR, token id of each output column in order of first
    appearance in var, number of var columns that duplicate an earlier column's token)."""
    specials = set(SPECIAL_TOKENS)
    tok = np.array([vocab[g] if g in vocab and g not in specials else -1 for g in ids], dtype=np.int64)
    rows = np.flatnonzero(tok >= 0)
    uniq, first, inverse = np.unique(tok[rows], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # columns in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    M = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, rank[inverse])),
                      shape=(len(ids), len(uniq)))
    return M, uniq[order], int(len(rows) - len(uniq))


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


class ScGPTAdapter(BlockRunner):
    """scGPT behind the pipeline's :class:`~sccircuits.models.base.ModelAdapter` interface.

    Layer l is the output of transformer block l (0-based); layer -1 is the embedding output
    (the input of block 0). Forward methods run under ``torch.no_grad()``.
    """

    kind = "scgpt"

    def __init__(self, model: ScGPTModel, vocab: dict[str, int], args: dict, path: Path,
                 device: torch.device, dtype: torch.dtype, ignored_weights: list[str]):
        self.model = model
        self.cfg = model.cfg
        self.vocab = vocab
        self.args = args
        self.path = path
        self.device = device
        self.dtype = dtype
        self.ignored_weights = ignored_weights
        self.n_layers = self.cfg.n_layers
        self.d_model = self.cfg.d_model
        self.n_heads = self.cfg.n_heads
        self.pad_id = vocab[self.cfg.pad_token]
        self.cls_id = vocab["<cls>"]
        self.pad_value = self.cfg.pad_value
        self._id_to_token = {i: t for t, i in vocab.items()}

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32") -> "ScGPTAdapter":
        """Load an scGPT directory (args.json, vocab.json, best_model.pt), local files only."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(path, "model directory not found" if not path.exists() else
                             "expected an scGPT model directory, got a file")
        missing = [f for f in ("args.json", "vocab.json", "best_model.pt") if not (path / f).is_file()]
        if missing:
            raise InputError(path, f"not an scGPT model directory: lacks {', '.join(missing)}")
        vocab = read_vocab(path / "vocab.json")
        args = _read_json(path / "args.json")
        if not isinstance(args, dict):
            raise InputError(path / "args.json", "expected a JSON object of hyper-parameters")
        size = max(vocab.values()) + 1
        cfg = ScGPTConfig.from_args(args, vocab_size=size, source=path / "args.json")
        if cfg.pad_token not in vocab:
            raise InputError(path / "vocab.json", f"pad token '{cfg.pad_token}' (from args.json) not in vocab")
        model = ScGPTModel(cfg, pad_id=vocab[cfg.pad_token])
        ignored = load_encoder_weights(model, read_state_dict(path / "best_model.pt"), path / "best_model.pt")
        device, dtype = torch.device(device), resolve_dtype(dtype)
        model = model.to(device=device, dtype=dtype).eval()
        return cls(model, vocab, args, path, device, dtype, ignored)

    # -- tokenization -------------------------------------------------------------------------

    def tokenize(self, adata, mode: str = "official", gene_column: str | None = None,
                 layer: str | None = None, normalized: bool = False, max_length: int | None = None,
                 seed: int = 0, source: str | os.PathLike | None = None,
                 ties: str = "middle") -> TokenizedCells:
        """Cells -> token sequences (see the module docstring for the two modes).

        ``gene_column``: var column with gene symbols (default: var_names). ``layer``: counts
        layer (default X). ``normalized``: accept non-integer values. ``max_length``: tokens
        per cell (official: including ``<cls>``, default args.json max_seq_len; reference:
        default 1200). ``seed``: sampling of genes in over-long cells (and tie-breaking when
        ``ties="random"``). ``source``: the file name used in error messages.
        """
        if mode not in ("official", "reference"):
            raise ValueError(f"mode must be 'official' or 'reference', got {mode!r}")
        if max_length is None:
            max_length = self.cfg.max_seq_len if mode == "official" else REFERENCE_MAX_GENES
        if max_length < (2 if mode == "official" else 1):
            raise ValueError(f"max_length {max_length} is too small")
        where = source if source is not None else "AnnData"
        X = counts_matrix(adata, layer=layer, normalized=normalized, source=source)
        ids = gene_identifiers(adata, gene_column, source=source)
        M, tokens, n_dup = _vocab_columns(ids, self.vocab)
        if len(tokens) == 0:
            hint = "" if gene_column else (" (scGPT uses gene symbols: name a var column holding them with "
                                           "gene_column / --gene-column; var columns: "
                                           f"{', '.join(map(str, adata.var.columns)) or 'none'})")
            raise InputError(where, f"none of the {len(ids)} genes matches the scGPT vocabulary "
                                    f"(e.g. {', '.join(ids[:3])}){hint}")
        Xv = (X @ M).tocsr()
        Xv.eliminate_zeros()
        Xv.sort_indices()
        rng = np.random.default_rng(seed)
        input_ids, values, gene_mask, kept = [], [], [], []
        n_sampled = 0
        for r in range(Xv.shape[0]):
            cols = Xv.indices[Xv.indptr[r]:Xv.indptr[r + 1]]
            if cols.size == 0:
                continue
            vals = Xv.data[Xv.indptr[r]:Xv.indptr[r + 1]].astype(np.float64)
            if mode == "official":
                tok, val, n_sampled = self._official_cell(tokens[cols], vals, max_length, rng, ties, n_sampled)
                mask = np.r_[False, np.ones(len(tok) - 1, dtype=bool)]
            else:
                order = np.argsort(-vals, kind="stable")[:max_length]
                tok, val = tokens[cols][order], vals[order]
                mask = np.ones(len(tok), dtype=bool)
            input_ids.append(tok.astype(np.int64))
            values.append(val.astype(np.float32))
            gene_mask.append(mask)
            kept.append(r)
        warn_duplicates(where, n_dup, len(ids))
        info = {"mode": mode, "n_cells": int(X.shape[0]), "n_genes": int(len(ids)),
                "genes_mapped": int(M.nnz), "genes_unmapped": int(len(ids) - M.nnz),
                "duplicate_genes_summed": n_dup, "cells_skipped": int(X.shape[0] - len(kept)),
                "max_length": int(max_length), "cells_sampled": int(n_sampled)}
        if mode == "official":
            info["ties"] = ties
        return TokenizedCells(input_ids, values, gene_mask, np.asarray(kept, dtype=np.int64),
                              n_skipped=int(X.shape[0] - len(kept)), info=info)

    def _official_cell(self, tok: np.ndarray, vals: np.ndarray, max_length: int,
                       rng: np.random.Generator, ties: str, n_sampled: int):
        """One cell, official mode: bin all its values, then sample genes if too long, then
        prepend ``<cls>`` (value pad_value)."""
        bins = bin_values(vals, self.cfg.n_bins, ties=ties, rng=rng).astype(np.float64)
        if len(tok) + 1 > max_length:
            keep = np.sort(rng.choice(len(tok), size=max_length - 1, replace=False))
            tok, bins = tok[keep], bins[keep]
            n_sampled += 1
        return (np.r_[self.cls_id, tok], np.r_[self.pad_value, bins], n_sampled)

    # -- forward passes -----------------------------------------------------------------------

    def batch(self, cells: TokenizedCells, idx: Sequence[int]) -> TokenBatch:
        """Padded batch of the cells ``idx`` (pad id / pad value of the model) on the device."""
        return collate(cells, idx, self.pad_id, self.pad_value).to(self.device)

    def post_ln_block(self, layer: int) -> PostLNBlock:
        """Transformer block ``layer`` as a :class:`PostLNBlock` (views of its weights)."""
        lay = self.model.transformer_encoder.layers[layer]
        att, d = lay.self_attn, self.d_model
        w, b = att.in_proj_weight, att.in_proj_bias
        return PostLNBlock(
            q=(w[:d], b[:d]), k=(w[d:2 * d], b[d:2 * d]), v=(w[2 * d:], b[2 * d:]),
            out=(att.out_proj.weight, att.out_proj.bias), norm1=(lay.norm1.weight, lay.norm1.bias, lay.norm1.eps),
            ffn_in=(lay.linear1.weight, lay.linear1.bias), ffn_out=(lay.linear2.weight, lay.linear2.bias),
            norm2=(lay.norm2.weight, lay.norm2.bias, lay.norm2.eps), n_heads=att.n_heads, activation=torch.relu_)

    @torch.no_grad()
    def embed(self, batch: TokenBatch) -> torch.Tensor:
        """The embedding output (gene + value embedding, the input of block 0), (B, L, d)."""
        if batch.values is None:
            raise ValueError("scGPT batches need values (tokenize with this adapter)")
        return self.model.embed(batch.input_ids.to(self.device), batch.values.to(self.device))

    # -- vocabulary and facts -----------------------------------------------------------------

    def token_symbols(self) -> dict[int, str]:
        """Token id -> gene symbol (scGPT vocabularies are symbols; specials map to themselves)."""
        return dict(self._id_to_token)

    def token_gene_ids(self) -> dict[int, str]:
        """Token id -> the vocabulary's gene identifier (the symbol, for scGPT)."""
        return dict(self._id_to_token)

    def describe(self) -> dict:
        """Facts for ``inspect-model``."""
        specials = {t: self.vocab[t] for t in SPECIAL_TOKENS if t in self.vocab}
        return {
            "kind": self.kind, "path": str(self.path), "n_layers": self.n_layers,
            "d_model": self.d_model, "n_heads": self.n_heads, "d_hid": self.cfg.d_hid,
            "vocab_size": len(self.vocab), "n_genes": len(self.vocab) - len(specials),
            "special_tokens": specials, "pad_value": self.pad_value, "n_bins": self.cfg.n_bins,
            "max_seq_len": self.cfg.max_seq_len, "input_emb_style": self.cfg.input_emb_style,
            "files": ["args.json", "vocab.json", "best_model.pt"],
            "ignored_weights": list(self.ignored_weights),
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
        }
