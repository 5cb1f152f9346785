"""Geneformer (a Hugging Face ``BertForMaskedLM`` directory) as a pipeline model adapter.

A Geneformer directory holds ``config.json``, the weights (``model.safetensors`` or
``pytorch_model.bin``) and, beside them, three dictionaries:

* token dictionary: Ensembl id -> token id (``token_dictionary_gc104M.pkl`` for V2 models,
  ``token_dictionary_gc30M.pkl`` / ``token_dictionary.pkl`` for V1),
* gene median dictionary: Ensembl id -> nonzero median expression in the training corpus,
* gene name dictionary: gene symbol -> Ensembl id (only needed when the data has symbols).

V2 vocabularies hold ``<pad>``=0, ``<mask>``=1, ``<cls>``=2, ``<eos>``=3 and each cell is
``<cls> genes... <eos>``; V1 vocabularies have no ``<cls>``/``<eos>`` and a cell is just its
genes. Every size (layers, width, heads, vocabulary, positions) is read from config.json.

Tokenization (:meth:`GeneformerAdapter.tokenize`), with x a gene's count, T the cell's total
count over all genes of the matrix and m the gene's median:

* ``official`` (Geneformer's own V2 rules): value x / T * 10,000 / m; genes without a median
  are left out; genes ranked by value, descending (ties keep the data's gene order); keep the
  first max_positions - 2 genes (V2) or max_positions genes (V1).
* ``reference`` (compat: the published study's script): value log1p(x / T * 10,000) / m, with
  m = 1.0 for genes without a median; keep the first 2,046 genes (capped by the model's
  positions).

Duplicate Ensembl ids (after mapping symbols) are summed first. With ``normalized=True`` the
matrix is taken as already normalised and the value is simply x / m.

The forward pass runs the model's own ``BertLayer`` modules one by one with the same
attention mask Hugging Face builds (SDPA attention by default), so :meth:`hidden_states`
equals ``output_hidden_states`` and :meth:`run_from` resumes a pass exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..data import counts_matrix, gene_identifiers, looks_like_ensembl, warn_duplicates
from ..errors import InputError
from .base import BlockRunner, PostLNBlock, resolve_dtype, TokenBatch, TokenizedCells, collate
from .pickles import load_dictionary

V2_SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
"""Special tokens of Geneformer V2 (gc104M) vocabularies."""

REFERENCE_MAX_GENES = 2046
"""Genes kept per cell by the published study's tokenizer (compat mode)."""

TARGET_SUM = 10_000.0
"""Counts are scaled to this total per cell before dividing by the gene medians."""

# Known dictionary file names, most specific first (each also accepted as .json).
DICTIONARY_NAMES = {
    "token": ["token_dictionary_gc104M", "token_dictionary_gc95M", "token_dictionary_gc30M",
              "token_dictionary"],
    "median": ["gene_median_dictionary_gc104M", "gene_median_dictionary_gc95M",
               "gene_median_dictionary_gc30M", "gene_median_dictionary"],
    "name": ["gene_name_id_dict_gc104M", "gene_name_id_dict_gc95M", "gene_name_id_dict_gc30M",
             "gene_name_id_dict"],
}

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def find_dictionary(model_dir: Path, which: str) -> Path | None:
    """The first file in ``model_dir`` with a known name for dictionary ``which`` (token,
    median or name), .pkl before .json; None if there is none."""
    for stem in DICTIONARY_NAMES[which]:
        for ext in (".pkl", ".json"):
            p = model_dir / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _read_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(cfg_path, f"cannot read config ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(cfg_path, "config.json is not a JSON object")
    mtype = cfg.get("model_type")
    if mtype != "bert":
        raise InputError(cfg_path, f"model_type is {mtype!r}; a Geneformer model is a BERT "
                                   "(BertForMaskedLM) checkpoint")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise InputError(cfg_path, f"config.json lacks a positive integer '{key}'")
    return cfg


def _load_hf_model(path: Path, dtype: torch.dtype, attn_implementation: str):
    """Load the BertForMaskedLM weights (local files only) with clear errors for broken dirs."""
    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    weights = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        raise InputError(path, "no weights: expected model.safetensors or pytorch_model.bin")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # we report missing weights ourselves
    hf_logging.disable_progress_bar()  # loading a local file takes no time worth a bar
    try:
        model, info = BertForMaskedLM.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation,
            output_loading_info=True, ignore_mismatched_sizes=True)  # mismatches checked below
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "size mismatch" in str(e) or "shape" in str(e).lower():
            problem = f"weights do not match config.json dimensions ({msg[:300]})"
        else:
            problem = f"cannot load weights, file corrupt or incomplete ({type(e).__name__}: {msg[:300]})"
        raise InputError(weights[0], problem) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if k.startswith("bert.")
               and not k.endswith("position_ids")]
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: str(m[0]))
    if mismatched:
        name, ckpt, want = mismatched[0]
        raise InputError(weights[0], f"weights do not match config.json dimensions ({len(mismatched)} tensors, "
                                     f"e.g. {name}: file {tuple(ckpt)} vs config {tuple(want)})")
    if missing:
        raise InputError(weights[0], f"{len(missing)} model weights missing (e.g. {', '.join(missing[:3])}); "
                                     "file incomplete or not a BERT checkpoint")
    return model.eval()


class GeneformerAdapter(BlockRunner):
    """Pipeline interface to a Geneformer checkpoint (see the module docstring)."""

    kind = "geneformer"

    def __init__(self, model, path: Path, token_dict: dict[str, int], median_dict: dict[str, float],
                 name_dict: dict[str, str], files: dict[str, str | None], device: torch.device,
                 dtype: torch.dtype):
        self.model = model
        self.bert = model.bert
        self.config = model.config
        self.path = path
        self.files = files
        self.device = device
        self.dtype = dtype
        self.n_layers = int(self.config.num_hidden_layers)
        self.d_model = int(self.config.hidden_size)
        self.n_heads = int(self.config.num_attention_heads)
        self.max_positions = int(self.config.max_position_embeddings)
        self.token_dict = token_dict
        self.median_dict = median_dict
        self.name_dict = name_dict
        self.version = 2 if ("<cls>" in token_dict and "<eos>" in token_dict) else 1
        self.pad_id = int(token_dict.get("<pad>", self.config.pad_token_id or 0))
        self.cls_id = token_dict.get("<cls>")
        self.eos_id = token_dict.get("<eos>")
        self.special_tokens = {k: int(v) for k, v in token_dict.items()
                               if isinstance(k, str) and k.startswith("<") and k.endswith(">")}
        self._id_to_gene = {int(v): str(k) for k, v in token_dict.items()}
        self._id_to_symbol = self._symbols()

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32",
                        token_dictionary: str | os.PathLike | None = None,
                        median_dictionary: str | os.PathLike | None = None,
                        name_dictionary: str | os.PathLike | None = None,
                        attn_implementation: str = "sdpa") -> "GeneformerAdapter":
        """Load a Geneformer directory (local files only). Dictionaries are found in the
        directory under any known name unless passed explicitly; ``attn_implementation`` is
        "sdpa" (default) or "eager"."""
        path = Path(path)
        if not path.exists():
            raise InputError(path, "model directory not found")
        if not path.is_dir():
            raise InputError(path, "expected a model directory, got a file")
        if not (path / "config.json").is_file():
            raise InputError(path, "not a Geneformer directory: no config.json")
        cfg = _read_config(path)
        files = {
            "token": token_dictionary or find_dictionary(path, "token"),
            "median": median_dictionary or find_dictionary(path, "median"),
            "name": name_dictionary or find_dictionary(path, "name"),
        }
        if files["token"] is None:
            raise InputError(path, "no token dictionary found (e.g. token_dictionary_gc104M.pkl): copy the "
                                   "model's dictionaries into the directory or pass token_dictionary=")
        token_dict = _check_token_dict(load_dictionary(files["token"]), files["token"], cfg["vocab_size"])
        median_dict = {} if files["median"] is None else _check_median_dict(load_dictionary(files["median"]),
                                                                            files["median"])
        name_dict = {} if files["name"] is None else {str(k): str(v) for k, v in
                                                      load_dictionary(files["name"]).items()}
        dt = resolve_dtype(dtype)
        device = torch.device(device)
        model = _load_hf_model(path, dt, attn_implementation).to(device)
        return cls(model, path, token_dict, median_dict, name_dict,
                   {k: (None if v is None else str(v)) for k, v in files.items()}, device, dt)

    def _symbols(self) -> dict[int, str]:
        """Token id -> symbol: the first symbol the name dictionary gives for the token's id."""
        ens_to_symbol: dict[str, str] = {}
        for sym, ens in self.name_dict.items():
            ens_to_symbol.setdefault(ens, sym)
        return {t: ens_to_symbol.get(g, g) for t, g in self._id_to_gene.items()}

    # -- tokenization -------------------------------------------------------------------------

    def tokenize(self, adata, mode: str = "official", gene_column: str | None = None,
                 layer: str | None = None, normalized: bool = False, max_length: int | None = None,
                 source: str | os.PathLike | None = None) -> TokenizedCells:
        """Cells -> rank-value token sequences (rules in the module docstring).

        ``gene_column``: var column with Ensembl ids or symbols (default var_names). ``layer``:
        counts layer (default X). ``normalized``: the matrix is already normalised (skip the
        count checks and the per-cell scaling). ``max_length``: tokens per cell including
        ``<cls>``/``<eos>`` (default: the model's positions; reference mode at most 2,048).
        ``source``: file name used in error messages.
        """
        if mode not in ("official", "reference"):
            raise ValueError(f"mode must be 'official' or 'reference', got {mode!r}")
        where = source if source is not None else "AnnData"
        n_special = 2 if self.version == 2 else 0
        max_genes = self._max_genes(mode, max_length, n_special)
        X = counts_matrix(adata, layer=layer, normalized=normalized, source=source)
        ids = gene_identifiers(adata, gene_column, source=source)
        ensembl, id_source = self._to_ensembl(ids, where, gene_column)
        M, tokens, medians, stats = self._vocab_columns(ensembl, require_median=(mode == "official"))
        stats["unmapped_examples"] = [str(ids[r]) for r in np.flatnonzero(np.diff(M.indptr) == 0)[:5]]
        if len(tokens) == 0:
            raise InputError(where, f"no gene overlaps the model vocabulary ({len(ids)} genes from "
                                    f"{id_source}, e.g. {', '.join(map(str, ids[:3]))})")
        totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
        Xg = (X @ M).tocsr()
        Xg.eliminate_zeros()
        Xg.sort_indices()
        input_ids, gene_mask, kept = [], [], []
        n_truncated = 0
        for r in range(Xg.shape[0]):
            lo, hi = Xg.indptr[r], Xg.indptr[r + 1]
            if hi == lo or totals[r] <= 0:
                continue
            cols = Xg.indices[lo:hi]
            value = self._rank_values(Xg.data[lo:hi].astype(np.float64), totals[r], medians[cols],
                                      mode, normalized)
            order = np.argsort(-value, kind="stable")
            n_truncated += int(len(order) > max_genes)
            genes = tokens[cols[order[:max_genes]]]
            if n_special:
                seq = np.r_[self.cls_id, genes, self.eos_id].astype(np.int64)
                mask = np.r_[False, np.ones(len(genes), dtype=bool), False]
            else:
                seq, mask = genes.astype(np.int64), np.ones(len(genes), dtype=bool)
            input_ids.append(seq)
            gene_mask.append(mask)
            kept.append(r)
        warn_duplicates(where, stats["duplicates"], len(ids))
        n_skipped = int(X.shape[0] - len(kept))
        if not kept:
            raise InputError(where, f"none of the {X.shape[0]} cells has a nonzero count in a gene of the "
                                    "model vocabulary")
        info = {"mode": mode, "version": self.version, "n_cells": int(X.shape[0]), "n_genes": int(len(ids)),
                "gene_ids_from": id_source, "genes_mapped": stats["mapped"],
                "genes_unmapped": int(len(ids) - stats["mapped"]),
                "genes_without_median": stats["no_median"], "duplicate_genes_summed": stats["duplicates"],
                "cells_skipped": n_skipped, "cells_truncated": n_truncated, "max_genes": int(max_genes),
                "normalized": bool(normalized), "unmapped_examples": stats["unmapped_examples"]}
        return TokenizedCells(input_ids, None, gene_mask, np.asarray(kept, dtype=np.int64),
                              n_skipped=n_skipped, info=info)

    def _max_genes(self, mode: str, max_length: int | None, n_special: int) -> int:
        """Genes per cell after truncation for this mode and model."""
        limit = self.max_positions if max_length is None else int(max_length)
        if limit > self.max_positions:
            raise ValueError(f"max_length {limit} exceeds the model's {self.max_positions} positions")
        max_genes = limit - n_special
        if mode == "reference" and max_length is None:
            max_genes = min(max_genes, REFERENCE_MAX_GENES)
        if max_genes < 1:
            raise ValueError(f"max_length {limit} leaves no room for genes")
        return max_genes

    def _to_ensembl(self, ids: np.ndarray, where, gene_column) -> tuple[np.ndarray, str]:
        """Ensembl id per var row: the ids themselves (version suffix dropped when needed) or
        symbols mapped through the name dictionary (unmapped symbols -> "")."""
        label = f"var['{gene_column}']" if gene_column else "var_names"
        if looks_like_ensembl(ids):
            out = np.array([i if i in self.token_dict or "." not in i else i.split(".", 1)[0]
                            for i in ids.astype(str)], dtype=object)
            return out, f"Ensembl ids in {label}"
        if not self.name_dict:
            raise InputError(where, f"{label} holds gene symbols but the model has no gene name "
                                    "dictionary (gene_name_id_dict*.pkl); give Ensembl ids with --gene-column")
        return (np.array([self.name_dict.get(s, "") for s in ids.astype(str)], dtype=object),
                f"symbols in {label} via {Path(self.files['name']).name}")

    def _vocab_columns(self, ensembl: np.ndarray, require_median: bool):
        """Sparse (n_var, n_unique) 0/1 matrix summing each var row into its unique gene, the
        token and median (NaN when missing) of each unique gene, and mapping counts."""
        col_of: dict[str, int] = {}
        rows, cols, tokens, medians = [], [], [], []
        n_no_median = 0
        for r, g in enumerate(ensembl):
            tok = self.token_dict.get(g) if g else None
            if tok is None or g in self.special_tokens:
                continue
            med = self.median_dict.get(g)
            has_median = isinstance(med, (int, float)) and med > 0
            if not has_median:
                if require_median:
                    continue
                n_no_median += 1
            if g not in col_of:
                col_of[g] = len(tokens)
                tokens.append(int(tok))
                medians.append(float(med) if has_median else np.nan)
            rows.append(r)
            cols.append(col_of[g])
        M = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                          shape=(len(ensembl), len(tokens)))
        stats = {"mapped": len(rows), "duplicates": len(rows) - len(tokens), "no_median": n_no_median}
        return M, np.asarray(tokens, dtype=np.int64), np.asarray(medians, dtype=np.float64), stats

    @staticmethod
    def _rank_values(x: np.ndarray, total: float, median: np.ndarray, mode: str, normalized: bool) -> np.ndarray:
        """The value genes are ranked by (see the module docstring)."""
        if mode == "official":
            scaled = x if normalized else x / total * TARGET_SUM
            return scaled / median
        scaled = x if normalized else np.log1p(x / total * TARGET_SUM)
        return scaled / np.where(np.isnan(median), 1.0, median)

    # -- forward passes -----------------------------------------------------------------------

    def batch(self, cells: TokenizedCells, idx: Sequence[int]) -> TokenBatch:
        """Padded batch of the cells ``idx`` on the adapter's device."""
        return collate(cells, idx, self.pad_id).to(self.device)

    def post_ln_block(self, layer: int) -> PostLNBlock:
        """``BertLayer`` number ``layer`` as a :class:`PostLNBlock` (views of its weights)."""
        lay = self.bert.encoder.layer[layer]
        att, inter, out = lay.attention, lay.intermediate, lay.output
        sa, act = att.self, inter.intermediate_act_fn
        return PostLNBlock(
            q=(sa.query.weight, sa.query.bias), k=(sa.key.weight, sa.key.bias), v=(sa.value.weight, sa.value.bias),
            out=(att.output.dense.weight, att.output.dense.bias),
            norm1=(att.output.LayerNorm.weight, att.output.LayerNorm.bias, att.output.LayerNorm.eps),
            ffn_in=(inter.dense.weight, inter.dense.bias), ffn_out=(out.dense.weight, out.dense.bias),
            norm2=(out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps), n_heads=sa.num_attention_heads,
            activation=torch.relu_ if isinstance(act, torch.nn.ReLU) else act)

    @torch.no_grad()
    def embed(self, batch: TokenBatch) -> torch.Tensor:
        """The embedding output (Hugging Face's hidden_states[0]), (B, L, d)."""
        return self.bert.embeddings(input_ids=batch.input_ids.to(self.device))

    # -- vocabulary and facts -----------------------------------------------------------------

    def token_symbols(self) -> dict[int, str]:
        """Token id -> gene symbol (the Ensembl id when the name dictionary has none)."""
        return dict(self._id_to_symbol)

    def token_gene_ids(self) -> dict[int, str]:
        """Token id -> Ensembl id (special tokens map to their names)."""
        return dict(self._id_to_gene)

    def _file_label(self, file: str | None) -> str | None:
        """A dictionary file's name when it sits in the model directory, else its full path."""
        if file is None:
            return None
        return Path(file).name if Path(file).parent.resolve() == self.path.resolve() else str(file)

    def describe(self) -> dict:
        """Facts for ``inspect-model``."""
        c = self.config
        n_genes = len(self._id_to_gene) - len(self.special_tokens)
        return {
            "kind": self.kind, "version": f"V{self.version}", "path": str(self.path),
            "n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
            "d_ff": int(c.intermediate_size), "activation": str(c.hidden_act),
            "layer_norm_eps": float(c.layer_norm_eps), "vocab_size": int(c.vocab_size),
            "n_genes": n_genes, "max_positions": self.max_positions, "special_tokens": dict(self.special_tokens),
            "genes_with_median": len(self.median_dict), "symbols_known": len(self.name_dict),
            "files": {k: self._file_label(v) for k, v in self.files.items()},
            "attn_implementation": str(c._attn_implementation),
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
        }


def _check_token_dict(d: dict, path, vocab_size: int) -> dict[str, int]:
    """Token dictionary sanity: str keys, int ids, all below config.json's vocab_size."""
    if not d:
        raise InputError(path, "token dictionary is empty")
    if not all(isinstance(k, str) for k in d) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in d.values()):
        raise InputError(path, "token dictionary must map strings to integer token ids")
    top = max(d.values())
    if top >= vocab_size or min(d.values()) < 0:
        raise InputError(path, f"token ids up to {top} do not fit config.json vocab_size {vocab_size}")
    if "<cls>" in d or "<eos>" in d:  # V2: the specials must be where the model expects them
        wrong = {k: d.get(k) for k, v in V2_SPECIALS.items() if d.get(k) != v}
        if wrong:
            raise InputError(path, f"V2 special tokens at unexpected ids {wrong}; expected {V2_SPECIALS}")
    return d


def _check_median_dict(d: dict, path) -> dict[str, float]:
    bad = [k for k, v in d.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise InputError(path, f"gene medians must be numbers (e.g. {bad[0]!r})")
    return {str(k): float(v) for k, v in d.items()}
