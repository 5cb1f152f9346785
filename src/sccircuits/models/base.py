"""The model adapter interface: everything the pipeline asks of a single-cell model.

Geneformer and scGPT are two implementations (``geneformer.py``, ``scgpt.py``). Layer numbers
are 0-based transformer blocks: "layer l" is the *output* of block l (Hugging Face's
``hidden_states[l + 1]``). Gene positions are the positions holding a gene token (not
``<cls>``, ``<eos>`` or padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"float32" / "bfloat16" / "float16" (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        from ..errors import ConfigError

        raise ConfigError(f"dtype must be one of float32, bfloat16, float16; got {dtype!r}")
    return _DTYPES[dtype]


@dataclass
class TokenizedCells:
    """Tokenized cells, one variable-length sequence per kept cell (special tokens included)."""

    input_ids: list[np.ndarray]
    """Token ids per cell (int64), e.g. ``<cls> g1 g2 ... <eos>`` for Geneformer V2."""
    values: list[np.ndarray] | None
    """Per-token input values (float32) for value-aware models (scGPT); None for Geneformer."""
    gene_mask: list[np.ndarray]
    """Per-cell bool array, True at gene positions."""
    cell_index: np.ndarray
    """Row of each kept cell in the input AnnData (int64)."""
    n_skipped: int = 0
    """Cells dropped because no gene mapped to the vocabulary."""
    info: dict = field(default_factory=dict)
    """Tokenizer statistics (genes mapped / unmapped, mode, ...)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)


@dataclass
class TokenBatch:
    """A padded batch ready for the model (all tensors on one device)."""

    input_ids: torch.Tensor  # (B, L) int64, padded with the model's pad id
    attention_mask: torch.Tensor  # (B, L) bool, True at real tokens
    gene_mask: torch.Tensor  # (B, L) bool, True at gene positions
    cell_index: torch.Tensor  # (B,) int64, rows in the input AnnData
    values: torch.Tensor | None = None  # (B, L) float32 input values (scGPT) or None

    def to(self, device: torch.device | str) -> "TokenBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TokenBatch(mv(self.input_ids), mv(self.attention_mask), mv(self.gene_mask),
                          mv(self.cell_index), mv(self.values))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate(cells: TokenizedCells, idx: Sequence[int], pad_id: int, pad_value: float = 0.0) -> TokenBatch:
    """Pad the cells ``idx`` of ``cells`` to one batch (right padding)."""
    L = max(len(cells.input_ids[i]) for i in idx)
    B = len(idx)
    ids = np.full((B, L), pad_id, dtype=np.int64)
    att = np.zeros((B, L), dtype=bool)
    gm = np.zeros((B, L), dtype=bool)
    vals = None if cells.values is None else np.full((B, L), pad_value, dtype=np.float32)
    for r, i in enumerate(idx):
        n = len(cells.input_ids[i])
        ids[r, :n] = cells.input_ids[i]
        att[r, :n] = True
        gm[r, :n] = cells.gene_mask[i]
        if vals is not None:
            vals[r, :n] = cells.values[i]
    return TokenBatch(torch.from_numpy(ids), torch.from_numpy(att), torch.from_numpy(gm),
                      torch.from_numpy(np.asarray(cells.cell_index)[list(idx)].astype(np.int64)),
                      None if vals is None else torch.from_numpy(vals))


def length_batches(cells: TokenizedCells, batch_size: int, bucket: bool = True) -> Iterator[list[int]]:
    """Indices of cells in batches; with ``bucket`` cells of similar length go together
    (sorted by length, order within the output is deterministic)."""
    order = np.argsort(-cells.lengths(), kind="stable") if bucket else np.arange(len(cells))
    for s in range(0, len(order), batch_size):
        yield [int(i) for i in order[s:s + batch_size]]


def check_layers(layers: Sequence[int], low: int, high: int) -> list[int]:
    """Sorted distinct layers, each in ``low..high``; ValueError naming the bad ones otherwise."""
    layers = sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not low <= l <= high]
    if bad:
        raise ValueError(f"layers {bad} out of range {low}..{high}")
    return layers


@dataclass(frozen=True)
class PostLNBlock:
    """One post-LayerNorm transformer encoder block as plain tensors (views of the model's own
    parameters, nothing copied): BERT's ``BertLayer`` (Geneformer) and scGPT's
    ``EncoderLayer`` are both this block::

        h   = LayerNorm1(x + out(attention(q(x), k(x), v(x))))
        out = LayerNorm2(h + ffn_out(activation(ffn_in(h))))

    Each linear map is a ``(weight (d_out, d_in), bias)`` pair; each LayerNorm is
    ``(weight, bias, eps)``; ``activation`` may work in place (it only ever gets a fresh
    tensor). Built on every call from the live modules, so weights edited in place are always
    seen.
    """

    q: tuple[torch.Tensor, torch.Tensor]
    k: tuple[torch.Tensor, torch.Tensor]
    v: tuple[torch.Tensor, torch.Tensor]
    out: tuple[torch.Tensor, torch.Tensor]
    norm1: tuple[torch.Tensor, torch.Tensor, float]
    ffn_in: tuple[torch.Tensor, torch.Tensor]
    ffn_out: tuple[torch.Tensor, torch.Tensor]
    norm2: tuple[torch.Tensor, torch.Tensor, float]
    n_heads: int
    activation: Callable[[torch.Tensor], torch.Tensor]


SDPA_MIN_QUERIES = 32
"""With fewer queries than this, torch's CPU flash-attention kernel (torch 2.13) takes a path whose
result depends on the number of torch threads (last-bit differences): a Ray worker and a local
run would then disagree. :func:`_attention` zero-pads the queries up to this count (a query row's
output does not depend on the other rows), which gives bit-equal outputs for every thread count."""


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``scaled_dot_product_attention`` (B, heads, Q, d_head) with at least
    :data:`SDPA_MIN_QUERIES` queries on CPU (see there); returns the rows of the real queries."""
    n = q.shape[-2]
    if n >= SDPA_MIN_QUERIES or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    q = F.pad(q, (0, 0, 0, SDPA_MIN_QUERIES - n))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[..., :n, :]


def run_post_ln_block(block: PostLNBlock, x: torch.Tensor, key_mask: torch.Tensor | None,
                      queries: torch.Tensor | None = None, ln_denoms: torch.Tensor | None = None,
                      record: list | None = None) -> torch.Tensor:
    """Output of ``block`` on ``x`` (B, L, d); ``key_mask`` (B, L) bool, True at real tokens
    (None: no padding). With ``queries`` (B, Q) int64 positions, only those positions are
    computed (their queries, attention output, MLP): keys and values still come from every
    position, so the result equals the full block's output at those positions; returns (B, Q, d).

    *Frozen LayerNorms*: with ``ln_denoms`` ((B, L, 2): the two LayerNorms' denominators
    ``sqrt(var + eps)`` at every position; taken at ``queries`` like ``x``) each LayerNorm
    centres its input as usual but divides by the given denominator instead of its own. With
    ``record`` (a list) the denominators are computed (same formula, same arithmetic as the
    frozen path, so an unperturbed input gives the same output either way) and the
    (B, L or Q, 2) float32 tensor is appended. Both compute in float32 (as ``F.layer_norm`` does
    for bf16/fp16 inputs) and return the model's dtype. Without either, ``F.layer_norm``
    (bit-equal to the models' own modules).
    """
    B, _, d = x.shape
    manual = ln_denoms is not None or record is not None
    used = []

    def norm(h: torch.Tensor, params: tuple, i: int) -> torch.Tensor:
        if not manual:
            return F.layer_norm(h, (d,), *params)
        weight, bias, eps = params
        # float32 arithmetic as F.layer_norm's own (a bf16/fp16 model: h.float() is a copy; an
        # fp16 square would overflow past 256); float32 models: h itself, in place, as before
        hf = h.float()
        hf = hf.sub_(hf.mean(-1, keepdim=True))
        den = (torch.sqrt(hf.square().mean(-1, keepdim=True) + eps) if ln_denoms is None
               else ln_denoms[..., i:i + 1].float())
        if record is not None:
            used.append(den)
        return torch.addcmul(bias.float(), hf.div_(den), weight.float()).to(h.dtype)

    def at_queries(t: torch.Tensor) -> torch.Tensor:  # the rows of t (B, L, n) at the computed positions
        return t if queries is None else torch.gather(t, 1, queries[..., None].expand(-1, -1, t.shape[-1]))

    xq = at_queries(x)
    if ln_denoms is not None:
        ln_denoms = at_queries(ln_denoms)
    heads = lambda t: t.view(B, -1, block.n_heads, d // block.n_heads).transpose(1, 2)  # noqa: E731
    mask = None if key_mask is None else key_mask[:, None, None, :]
    att = _attention(heads(F.linear(xq, *block.q)), heads(F.linear(x, *block.k)), heads(F.linear(x, *block.v)), mask)
    h = F.linear(att.transpose(1, 2).reshape(B, -1, d), *block.out)
    h = norm(h.add_(xq), block.norm1, 0)  # in place on fresh tensors: no extra copies
    mlp = F.linear(block.activation(F.linear(h, *block.ffn_in)), *block.ffn_out)
    out = norm(mlp.add_(h), block.norm2, 1)
    if record is not None:
        record.append(torch.cat(used, -1))
    return out


class BlockRunner:
    """Forward passes shared by both adapters, written once over two model-specific hooks.

    A subclass sets ``n_layers``, ``device`` and ``dtype`` and implements:

    * :meth:`embed` (batch -> the embedding output, "layer -1", (B, L, d)),
    * :meth:`post_ln_block` (block ``l``'s weights as a :class:`PostLNBlock`).

    Every block is run by :func:`run_post_ln_block` (SDPA with the padding key mask), so both
    models share one implementation, and the tracer can compute the last block it needs at
    selected positions only (``run_from(..., queries=)``). :meth:`hidden_states` and
    :meth:`run_from` follow the layer convention of the module docstring with the same checks
    for both models, so a resumed pass runs exactly the blocks a clean pass runs after
    ``layer`` (this is what makes ``run_from`` equal a clean pass).
    """

    n_layers: int
    device: torch.device
    dtype: torch.dtype

    def embed(self, batch: TokenBatch) -> torch.Tensor:
        """The embedding output (the input of block 0), (B, L, d) in the adapter's dtype."""
        raise NotImplementedError

    def post_ln_block(self, layer: int) -> PostLNBlock:
        """Block ``layer`` as a :class:`PostLNBlock` (views of the live weights)."""
        raise NotImplementedError

    def attention_context(self, hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor | None:
        """The key mask every block takes (True = real token); None when nothing is padded."""
        att = batch.attention_mask.to(hidden.device)
        return None if bool(att.all()) else att

    def run_blocks(self, x: torch.Tensor, context, start: int, stop: int,
                   keep: set[int] | None = None, queries: torch.Tensor | None = None,
                   ln_denoms: dict[int, torch.Tensor] | None = None,
                   ln_record: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Blocks ``start .. stop-1`` on ``x`` (the input of block ``start``); {l: output of
        block l} for l in ``keep`` (every block run when None). With ``queries`` the last block
        is computed only at those positions (see :func:`run_post_ln_block`). ``ln_denoms``
        ({block: (B, L, 2)}, every position) freezes the LayerNorm denominators; ``ln_record``
        (a dict) receives each block's own."""
        out = {}
        for l in range(start, stop):
            q = queries if l == stop - 1 else None
            den = None if ln_denoms is None else ln_denoms[l]
            rec = [] if ln_record is not None else None
            x = run_post_ln_block(self.post_ln_block(l), x, context, q, den, rec)
            if rec is not None:
                ln_record[l] = rec[0]
            if keep is None or l in keep:
                out[l] = x
        return out

    @torch.no_grad()
    def hidden_states(self, batch: TokenBatch, layers: Sequence[int],
                      ln_record: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Clean pass: {layer: (B, L, d) output of block ``layer``} (-1 = embedding output);
        blocks after the deepest requested layer are not run. With ``ln_record`` (a dict) every
        block's LayerNorm denominators are recorded there ({block: (B, L, 2)}) for a later
        :meth:`run_from` with frozen LayerNorms."""
        layers = check_layers(layers, -1, self.n_layers - 1)
        x = self.embed(batch)
        out = {-1: x} if -1 in layers else {}
        if layers and layers[-1] >= 0:
            out.update(self.run_blocks(x, self.attention_context(x, batch), 0, layers[-1] + 1, set(layers),
                                       ln_record=ln_record))
        return out

    @torch.no_grad()
    def run_from(self, layer: int, hidden: torch.Tensor, batch: TokenBatch, until: int | None = None,
                 layers: Sequence[int] | None = None, queries: torch.Tensor | None = None,
                 ln_denoms: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Continue from ``hidden`` = output of ``layer`` (-1: the embedding output) through
        blocks ``layer+1 .. until`` (default: the last); {l: (B, L, d)} for ``layers`` (default:
        every block run). Blocks <= ``layer`` are never run; ``hidden`` is moved to the
        adapter's device and dtype first. With ``queries`` ((B, Q) int64 positions) block
        ``until`` is computed only there (keys and values still at every position) and its
        entry is (B, Q, d). ``ln_denoms`` ({block: (B, L, 2)} from a clean pass's ``ln_record``)
        freezes every LayerNorm's denominator at those values."""
        until = self.n_layers - 1 if until is None else int(until)
        if not -1 <= layer <= until < self.n_layers:
            raise ValueError(f"need -1 <= layer ({layer}) <= until ({until}) < {self.n_layers}")
        keep = None if layers is None else set(check_layers(layers, layer + 1, until))
        hidden = hidden.to(device=self.device, dtype=self.dtype)
        return self.run_blocks(hidden, self.attention_context(hidden, batch), layer + 1, until + 1, keep, queries,
                               ln_denoms)


@runtime_checkable
class ModelAdapter(Protocol):
    """What the pipeline needs from a model. Implementations: GeneformerAdapter, ScGPTAdapter."""

    kind: str  # "geneformer" or "scgpt"
    n_layers: int
    d_model: int
    pad_id: int
    device: torch.device
    dtype: torch.dtype

    def tokenize(self, adata, mode: str = "official", **options) -> TokenizedCells:
        """Cells -> token sequences. ``mode`` is "official" or "reference" (compat)."""

    def batch(self, cells: TokenizedCells, idx: Sequence[int]) -> TokenBatch:
        """Padded batch of the cells ``idx`` on the adapter's device."""

    def hidden_states(self, batch: TokenBatch, layers: Sequence[int],
                      ln_record: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Clean forward pass: {layer: (B, L, d) output of that layer} for the given layers
        (with ``ln_record``, each block's LayerNorm denominators are recorded there)."""

    def run_from(self, layer: int, hidden: torch.Tensor, batch: TokenBatch,
                 until: int | None = None, layers: Sequence[int] | None = None,
                 queries: torch.Tensor | None = None,
                 ln_denoms: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Continue the forward pass from ``hidden`` (the output of ``layer``) through the
        blocks ``layer+1 .. until`` (default: the last); returns {l: (B, L, d)} for ``layers``
        (default: every layer computed). Blocks <= ``layer`` are never run. With ``queries``
        ((B, Q) positions) block ``until`` is computed only there and its entry is (B, Q, d).
        ``ln_denoms`` (from ``hidden_states(ln_record=)``) freezes the LayerNorm denominators."""

    def token_symbols(self) -> dict[int, str]:
        """Token id -> gene symbol (falls back to the gene id when no symbol is known)."""

    def token_gene_ids(self) -> dict[int, str]:
        """Token id -> the gene identifier of the vocabulary (Ensembl id or symbol)."""

    def describe(self) -> dict:
        """Facts for ``inspect-model``: kind, layers, d_model, heads, vocab size, specials, files."""
