"""Pretraining of the small demo models shipped with sccircuits (``sccircuits pretrain-demo``).

Two models are trained on the bundled blood cells (:func:`sccircuits.datasets.blood`, 719
immune cells x 8,455 genes; ``data='pbmc'`` for the 765-gene PBMCs), each with
its architecture's own objective, and saved in the real on-disk formats so they load through
:func:`sccircuits.models.load_model` like published checkpoints:

* **Geneformer architecture** (Hugging Face ``BertForMaskedLM``): cells become rank-value
  encodings (``<cls>`` genes-by-normalised-expression ``<eos>``, our Geneformer adapter's
  official tokenizer), 15% of the gene positions are masked BERT-style (80% ``<mask>``, 10% a
  random gene, 10% unchanged) and the model predicts the masked genes (cross-entropy). The
  directory holds config.json, model.safetensors and the gc104M-style dictionaries
  (``token_dictionary_gc104M.pkl``, ``gene_median_dictionary_gc104M.pkl``,
  ``gene_name_id_dict_gc104M.pkl``); the medians are the nonzero medians of counts / cell total
  * 10,000 over the training cells, as Geneformer computes its own.
* **scGPT architecture** (our :class:`~sccircuits.models.scgpt.ScGPTModel`): cells become
  ``<cls>`` + expressed genes with per-cell binned values (our scGPT adapter's official
  tokenizer); a fraction of the gene values is replaced by ``mask_value`` and an expression
  decoder (scGPT's ``ExprDecoder``: ``decoder.fc.0/2/4``) regresses the masked bins (MSE on
  masked positions, scGPT's "GEP" objective). The directory holds args.json (official keys),
  vocab.json and best_model.pt (encoder + ``decoder.fc.*`` weights).

A seeded fraction of cells is held out; after training, held-out masked-prediction accuracy is
compared with frequency baselines and with the untrained model of the same architecture
(:func:`evaluate_geneformer`, :func:`evaluate_scgpt`). Everything is seeded and runs with
deterministic algorithms on CPU, so the same command gives the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import to_dict
from .models.base import TokenizedCells, collate
from .pretrain_config import KINDS, PretrainConfig  # noqa: F401  (re-exported)

GENEFORMER_SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
SCGPT_SPECIALS = ("<pad>", "<cls>", "<eoc>")


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def split_cells(n: int, holdout_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, held-out) index arrays, each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(holdout_frac * n)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def choose_masked(gene_positions: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Positions to mask: round(frac * n) of ``gene_positions`` (at least one), sorted."""
    k = max(1, int(round(frac * len(gene_positions))))
    return np.sort(rng.choice(gene_positions, size=k, replace=False))


def nonzero_medians(X, totals: np.ndarray, target_sum: float = 10_000.0) -> np.ndarray:
    """Per gene, the median over cells with a nonzero count of count / cell total * target_sum
    (Geneformer's gene median); 1.0 for genes never expressed."""
    import scipy.sparse as sp

    Xn = sp.csc_matrix(sp.diags(target_sum / totals) @ sp.csr_matrix(X))
    out = np.ones(X.shape[1], dtype=np.float64)
    for j in range(X.shape[1]):
        col = Xn.data[Xn.indptr[j]:Xn.indptr[j + 1]]
        col = col[col > 0]
        if col.size:
            out[j] = float(np.median(col))
    return out


def standardised_log_expression(X) -> tuple[np.ndarray, np.ndarray]:
    """(cells x genes dense float64, genes that vary): ``X`` (counts) scaled to 10,000 per cell,
    log1p'd, and each gene standardised over the cells; genes that never vary get a zero column."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    Xn = sp.diags(10_000.0 / np.maximum(totals, 1.0)) @ X
    Xn.data = np.log1p(Xn.data)
    D = Xn.toarray()
    D -= D.mean(axis=0)
    sd = D.std(axis=0)
    varies = sd > 0
    D[:, varies] /= sd[varies]
    D[:, ~varies] = 0.0
    return D, varies


def coexpression_embedding(X, d: int) -> np.ndarray:
    """Gene vectors whose dot products follow the genes' co-expression across cells.

    ``X``: training cells x genes counts, standardised by :func:`standardised_log_expression`
    (genes that never vary get a zero row), and the gene
    loadings on the top ``d`` principal components, scaled by their singular values, are
    returned (genes x d). The dot product of two rows is n_cells x their correlation restricted
    to those components, so genes of one expression program start close together. Rows are
    rescaled to mean norm 1 over the genes that vary; the caller scales them to the model's
    own initial embedding norm. Deterministic (an SVD, no sampling); columns with the sign
    convention "largest absolute loading positive" so that the result does not depend on the
    LAPACK build's sign choice.
    """
    D, varies = standardised_log_expression(X)
    _, s, vt = np.linalg.svd(D, full_matrices=False)
    k = min(d, vt.shape[0])
    load = vt[:k].T * s[:k]  # genes x k
    flip = np.sign(load[np.abs(load).argmax(axis=0), np.arange(k)])
    load *= np.where(flip == 0, 1.0, flip)
    out = np.zeros((X.shape[1], d))
    out[:, :k] = load
    norms = np.linalg.norm(out[varies], axis=1)
    return out / max(float(norms.mean()), 1e-12) if norms.size else out


def init_gene_embedding(weight: torch.Tensor, rows: np.ndarray, vectors: np.ndarray, factor: float = 1.0) -> None:
    """Overwrite ``weight[rows]`` (gene tokens) with ``vectors`` scaled to ``factor`` x the mean
    row norm of the existing (random) initialisation; genes whose vector is zero keep their
    random row."""
    with torch.no_grad():
        scale = float(weight.norm(dim=1).mean()) * factor
        v = torch.as_tensor(vectors, dtype=weight.dtype)
        nonzero = v.norm(dim=1) > 0
        idx = torch.as_tensor(rows, dtype=torch.int64)
        weight[idx[nonzero]] = v[nonzero] * scale


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up to ``peak`` over warmup_frac * total steps, then linear decay to 0."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


@contextlib.contextmanager
def torch_settings(threads: int):
    """Deterministic algorithms and a thread count for the duration of training (restored)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of ``range(n)`` (no length bucketing: with the length cap most cells
    have the same length)."""
    perm = rng.permutation(n)
    return [perm[s:s + batch_size].tolist() for s in range(0, n, batch_size)]


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


# --------------------------------------------------------------------------------------------
# Geneformer architecture
# --------------------------------------------------------------------------------------------


def write_geneformer_dir(path: Path, adata, train_idx: np.ndarray, cfg: PretrainConfig) -> None:
    """An untrained (seeded) BertForMaskedLM directory with dictionaries built from ``adata``:
    vocabulary = genes with an Ensembl id, medians from the training cells."""
    from transformers import BertConfig, BertForMaskedLM

    from .data import counts_matrix

    var = adata.var
    has_id = (var["ensembl_id"] != "").to_numpy()
    ens = var["ensembl_id"].to_numpy()[has_id]
    X = counts_matrix(adata)
    totals = np.asarray(X.sum(axis=1)).ravel()
    med = nonzero_medians(X[train_idx][:, np.flatnonzero(has_id)], totals[train_idx])
    token_dict = dict(GENEFORMER_SPECIALS)
    for e in ens:
        token_dict[str(e)] = len(token_dict)
    names = {}
    for sym, e in zip(adata.var_names[has_id], ens):  # current symbols first: they name the tokens
        names[str(sym)] = str(e)
    for sym, e in zip(var["original_symbol"].to_numpy()[has_id], ens):
        names.setdefault(str(sym), str(e))
    config = BertConfig(
        vocab_size=len(token_dict), hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, hidden_act="relu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_length, layer_norm_eps=1e-12,
        pad_token_id=GENEFORMER_SPECIALS["<pad>"], initializer_range=0.02, type_vocab_size=2)
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(config)
    if cfg.embedding_init == "coexpression":
        vec = coexpression_embedding(X[train_idx][:, np.flatnonzero(has_id)], cfg.d_model)
        init_gene_embedding(model.bert.embeddings.word_embeddings.weight,
                            np.array([token_dict[str(e)] for e in ens]), vec, cfg.embedding_scale)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    _write_pickle(path / "token_dictionary_gc104M.pkl", token_dict)
    _write_pickle(path / "gene_median_dictionary_gc104M.pkl", {str(e): float(m) for e, m in zip(ens, med)})
    _write_pickle(path / "gene_name_id_dict_gc104M.pkl", names)


def mask_geneformer(ids: np.ndarray, gene_mask: np.ndarray, frac: float, rng: np.random.Generator,
                    mask_id: int, gene_tokens: np.ndarray, bert_style: bool) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels) of one cell with ``frac`` of its gene positions masked; labels are
    -100 except at masked positions. ``bert_style``: 80% <mask>, 10% random gene, 10% kept;
    otherwise every chosen position becomes <mask> (used for evaluation)."""
    pos = choose_masked(np.flatnonzero(gene_mask), frac, rng)
    inp, labels = ids.copy(), np.full_like(ids, -100)
    labels[pos] = ids[pos]
    if not bert_style:
        inp[pos] = mask_id
        return inp, labels
    u = rng.random(len(pos))
    inp[pos[u < 0.8]] = mask_id
    rand = pos[(u >= 0.8) & (u < 0.9)]
    inp[rand] = rng.choice(gene_tokens, size=len(rand))
    return inp, labels


def _geneformer_batch(cells: TokenizedCells, idx: list[int], pad_id: int, masked: list[tuple]):
    """Padded (input_ids, attention_mask, labels) tensors from per-cell masked arrays."""
    L = max(len(masked[i][0]) for i in idx)
    ids = np.full((len(idx), L), pad_id, dtype=np.int64)
    lab = np.full((len(idx), L), -100, dtype=np.int64)
    att = np.zeros((len(idx), L), dtype=np.int64)
    for r, i in enumerate(idx):
        n = len(masked[i][0])
        ids[r, :n], lab[r, :n], att[r, :n] = masked[i][0], masked[i][1], 1
    return torch.from_numpy(ids), torch.from_numpy(att), torch.from_numpy(lab)


def _masked_lm_loss(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of BertForMaskedLM at the masked positions only (the prediction head is
    run on those positions alone: same loss as ``model(labels=...)``, less work)."""
    hidden = model.bert(input_ids=ids, attention_mask=att).last_hidden_state
    where = lab != -100
    return F.cross_entropy(model.cls(hidden[where]), lab[where])


def train_geneformer(model, cells: TokenizedCells, cfg: PretrainConfig, gene_tokens: np.ndarray) -> list[float]:
    """Masked gene prediction on ``cells``; returns the mean loss of each epoch."""
    rng = np.random.default_rng(cfg.seed + 1)
    steps_per_epoch = -(-len(cells) // cfg.batch_size)

    def epoch_batches(epoch: int):
        masked = [mask_geneformer(cells.input_ids[i], cells.gene_mask[i], cfg.geneformer_mask_frac, rng,
                                  GENEFORMER_SPECIALS["<mask>"], gene_tokens, bert_style=True)
                  for i in range(len(cells))]
        for idx in _batches(len(cells), cfg.batch_size, rng):
            ids, att, lab = _geneformer_batch(cells, idx, GENEFORMER_SPECIALS["<pad>"], masked)
            yield lambda: _masked_lm_loss(model, ids, att, lab)

    if cfg.freeze_embeddings:
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    model.train()
    history = _optimise([p for p in model.parameters() if p.requires_grad], cfg, cfg.epochs * steps_per_epoch, "geneformer demo", epoch_batches)
    model.eval()
    return history


def _optimise(params: list, cfg: PretrainConfig, total: int, desc: str, epoch_batches) -> list[float]:
    """The training loop both demo models share: AdamW, warm-up then decaying lr, gradient norm
    clipped at 1, a progress bar. ``epoch_batches(epoch)`` yields one zero-argument loss function
    per batch; returns the mean loss of each epoch."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for epoch in range(cfg.epochs):
            losses = []
            for loss_fn in epoch_batches(epoch):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_frac)
                loss = loss_fn()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append(float(np.mean(losses)))
    return history


@torch.no_grad()
def evaluate_geneformer(model, train: TokenizedCells, test: TokenizedCells, frac: float = 0.15,
                        seed: int = 0, batch_size: int = 32) -> dict:
    """Held-out masked gene prediction: top-1 accuracy of ``model`` (a BertForMaskedLM) at
    ``frac`` of each test cell's gene positions (all replaced by <mask>, seeded), and of three
    baselines computed from the training cells: the most frequent gene (``frequency``), the
    most frequent gene at that rank position (``position_frequency``), and the most frequent
    gene not visible in the cell (``frequency_unseen``)."""
    rng = np.random.default_rng(seed)
    mask_id, pad_id = GENEFORMER_SPECIALS["<mask>"], GENEFORMER_SPECIALS["<pad>"]
    masked = [mask_geneformer(test.input_ids[i], test.gene_mask[i], frac, rng, mask_id, np.array([0]), False)
              for i in range(len(test))]
    counts = Counter(int(t) for ids, gm in zip(train.input_ids, train.gene_mask) for t in ids[gm])
    by_freq = [t for t, _ in counts.most_common()]
    pos_counts: dict[int, Counter] = {}
    for ids, gm in zip(train.input_ids, train.gene_mask):
        for p in np.flatnonzero(gm):
            pos_counts.setdefault(int(p), Counter())[int(ids[p])] += 1
    n = hit = hit_freq = hit_pos = hit_unseen = 0
    was_training = model.training
    model.eval()
    for s in range(0, len(test), batch_size):
        idx = list(range(s, min(s + batch_size, len(test))))
        ids, att, lab = _geneformer_batch(test, idx, pad_id, masked)
        pred = model(input_ids=ids, attention_mask=att).logits.argmax(-1)
        for r, i in enumerate(idx):
            where = np.flatnonzero(lab[r].numpy() != -100)
            truth = lab[r].numpy()[where]
            visible = set(masked[i][0][test.gene_mask[i]].tolist()) - {mask_id}
            unseen = next((t for t in by_freq if t not in visible), by_freq[0])
            n += len(where)
            hit += int((pred[r].numpy()[where] == truth).sum())
            hit_freq += int((truth == by_freq[0]).sum())
            hit_unseen += int((truth == unseen).sum())
            for p, t in zip(where, truth):
                top = pos_counts.get(int(p))
                hit_pos += int(top is not None and top.most_common(1)[0][0] == t)
    model.train(was_training)
    return {"metric": "masked-gene top-1 accuracy", "n_masked": n, "trained": hit / n,
            "frequency_baseline": hit_freq / n, "position_frequency_baseline": hit_pos / n,
            "frequency_unseen_baseline": hit_unseen / n}


def pretrain_geneformer(adata, train_idx: np.ndarray, test_idx: np.ndarray, cfg: PretrainConfig, path: Path) -> dict:
    """Write, train and evaluate the Geneformer-architecture demo model at ``path``."""
    from .models.geneformer import GeneformerAdapter

    write_geneformer_dir(path, adata, train_idx, cfg)
    adapter = GeneformerAdapter.from_pretrained(path)
    train = adapter.tokenize(adata[train_idx], gene_column="ensembl_id")
    test = adapter.tokenize(adata[test_idx], gene_column="ensembl_id")
    model = adapter.model.float()
    untrained = evaluate_geneformer(model, train, test, cfg.geneformer_mask_frac, cfg.seed)
    gene_tokens = np.array([t for g, t in adapter.token_dict.items() if g not in GENEFORMER_SPECIALS])
    t0 = time.perf_counter()
    history = train_geneformer(model, train, cfg, gene_tokens)
    seconds = time.perf_counter() - t0
    ev = evaluate_geneformer(model, train, test, cfg.geneformer_mask_frac, cfg.seed)
    ev["untrained"] = untrained["trained"]
    model.save_pretrained(path, safe_serialization=True)
    return {"train_seconds": seconds, "loss_per_epoch": history, "eval": ev,
            "n_train_cells": len(train), "n_test_cells": len(test)}


# --------------------------------------------------------------------------------------------
# scGPT architecture
# --------------------------------------------------------------------------------------------


class ExprDecoder(nn.Module):
    """scGPT's expression decoder: Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(., 1),
    saved as ``decoder.fc.0/2/4`` like the official checkpoints."""

    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model),
                                nn.LeakyReLU(), nn.Linear(d_model, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h).squeeze(-1)


def scgpt_args(cfg: PretrainConfig) -> dict:
    """args.json with the official key names."""
    return {"embsize": cfg.d_model, "nheads": cfg.n_heads, "d_hid": cfg.d_ff, "nlayers": cfg.n_layers,
            "n_layers_cls": 3, "dropout": cfg.dropout, "pad_token": "<pad>", "pad_value": -2, "mask_value": -1,
            "n_bins": 51, "input_emb_style": "continuous", "max_seq_len": cfg.max_length, "mask_ratio": cfg.scgpt_mask_frac,
            "special_tokens": list(SCGPT_SPECIALS), "fast_transformer": False, "GEP": True, "MVC": False,
            "lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": cfg.seed,
            "trained_by": "sccircuits pretrain-demo (demo model, not scGPT)"}


def write_scgpt_dir(path: Path, adata, cfg: PretrainConfig, train_idx: np.ndarray | None = None) -> None:
    """An untrained (seeded) scGPT-architecture directory: vocabulary = the genes' symbols then
    the specials; best_model.pt holds encoder + decoder weights."""
    from .models.scgpt import ScGPTConfig, ScGPTModel

    vocab = {str(s): i for i, s in enumerate(adata.var_names)}
    for tok in SCGPT_SPECIALS:
        vocab[tok] = len(vocab)
    mcfg = ScGPTConfig(vocab_size=len(vocab), d_model=cfg.d_model, n_heads=cfg.n_heads, d_hid=cfg.d_ff,
                       n_layers=cfg.n_layers, dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    model = ScGPTModel(mcfg, pad_id=vocab["<pad>"])
    decoder = ExprDecoder(cfg.d_model)
    if cfg.embedding_init == "coexpression":
        from .data import counts_matrix

        X = counts_matrix(adata)
        vec = coexpression_embedding(X if train_idx is None else X[train_idx], cfg.d_model)
        init_gene_embedding(model.encoder.embedding.weight, np.arange(adata.n_vars), vec, cfg.embedding_scale)
    path.mkdir(parents=True, exist_ok=True)
    (path / "args.json").write_text(json.dumps(scgpt_args(cfg), indent=2) + "\n")
    (path / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    save_scgpt_weights(path, model, decoder)


def save_scgpt_weights(path: Path, model: nn.Module, decoder: nn.Module) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    state.update({f"decoder.{k}": v.detach().contiguous().clone() for k, v in decoder.state_dict().items()})
    torch.save(state, path / "best_model.pt")


def mask_scgpt(values: np.ndarray, gene_mask: np.ndarray, frac: float, rng: np.random.Generator,
               mask_value: float) -> tuple[np.ndarray, np.ndarray]:
    """(input values, bool mask of positions to predict) with ``frac`` of gene values masked."""
    pos = choose_masked(np.flatnonzero(gene_mask), frac, rng)
    inp, target = values.copy(), np.zeros(len(values), dtype=bool)
    inp[pos], target[pos] = mask_value, True
    return inp, target


def _scgpt_batch(cells: TokenizedCells, idx: list[int], pad_id: int, pad_value: float, masked: list[tuple]):
    """(ids, masked values, true values, attention mask, target mask) tensors."""
    b = collate(cells, idx, pad_id, pad_value)
    inp = b.values.clone()
    tgt = torch.zeros_like(b.attention_mask)
    for r, i in enumerate(idx):
        n = len(masked[i][0])
        inp[r, :n] = torch.from_numpy(masked[i][0])
        tgt[r, :n] = torch.from_numpy(masked[i][1])
    att = None if bool(b.attention_mask.all()) else b.attention_mask
    return b.input_ids, inp, b.values, att, tgt


def _scgpt_predict(model, decoder, ids, values, att):
    n = model.cfg.n_layers
    h = model.run_blocks(model.embed(ids, values), att, 0, n, {n - 1})[n - 1]
    return decoder(h)


def train_scgpt(model, decoder, cells_for_epoch, cfg: PretrainConfig, pad_id: int) -> list[float]:
    """Masked value prediction (MSE on masked positions); ``cells_for_epoch(e)`` gives the
    training cells of epoch e (re-tokenized so over-long cells show other genes each epoch).
    Returns the mean loss of each epoch."""
    rng = np.random.default_rng(cfg.seed + 1)
    mcfg = model.cfg
    if cfg.freeze_embeddings:
        model.encoder.embedding.weight.requires_grad_(False)
    params = [p for p in list(model.parameters()) + list(decoder.parameters()) if p.requires_grad]
    steps_per_epoch = -(-len(cells_for_epoch(0)) // cfg.batch_size)

    def epoch_batches(epoch: int):
        cells = cells_for_epoch(epoch)
        masked = [mask_scgpt(cells.values[i], cells.gene_mask[i], cfg.scgpt_mask_frac, rng, mcfg.mask_value)
                  for i in range(len(cells))]
        for idx in _batches(len(cells), cfg.batch_size, rng):
            ids, inp, true, att, tgt = _scgpt_batch(cells, idx, pad_id, mcfg.pad_value, masked)
            yield lambda: F.mse_loss(_scgpt_predict(model, decoder, ids, inp, att)[tgt], true[tgt])

    model.train()
    decoder.train()
    history = _optimise(params, cfg, cfg.epochs * steps_per_epoch, "scgpt demo", epoch_batches)
    model.eval()
    decoder.eval()
    return history


@torch.no_grad()
def evaluate_scgpt(model, decoder, train: TokenizedCells, test: TokenizedCells, pad_id: int,
                   frac: float = 0.4, seed: int = 0, batch_size: int = 32) -> dict:
    """Held-out masked value prediction: accuracy (rounded prediction, clipped to the bins,
    equals the true bin) and MSE of ``model`` + ``decoder`` at ``frac`` of each test cell's
    gene values (seeded); baselines from the training cells: the most frequent bin
    (``frequency``; MSE of the mean bin) and each gene's most frequent bin (``gene_frequency``;
    MSE of the gene's mean bin)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    masked = [mask_scgpt(test.values[i], test.gene_mask[i], frac, rng, cfg.mask_value) for i in range(len(test))]
    all_bins = np.concatenate([v[gm] for v, gm in zip(train.values, train.gene_mask)])
    all_tok = np.concatenate([t[gm] for t, gm in zip(train.input_ids, train.gene_mask)])
    mode_bin, mean_bin = Counter(all_bins.tolist()).most_common(1)[0][0], float(all_bins.mean())
    gene_mode, gene_mean = {}, {}
    for t in np.unique(all_tok):
        b = all_bins[all_tok == t]
        gene_mode[int(t)], gene_mean[int(t)] = Counter(b.tolist()).most_common(1)[0][0], float(b.mean())
    was = (model.training, decoder.training)
    model.eval()
    decoder.eval()
    preds, truths, toks = [], [], []
    for s in range(0, len(test), batch_size):
        idx = list(range(s, min(s + batch_size, len(test))))
        ids, inp, true, att, tgt = _scgpt_batch(test, idx, pad_id, cfg.pad_value, masked)
        pred = _scgpt_predict(model, decoder, ids, inp, att)
        preds.append(pred[tgt].numpy())
        truths.append(true[tgt].numpy())
        toks.append(ids[tgt].numpy())
    model.train(was[0])
    decoder.train(was[1])
    pred, truth, tok = np.concatenate(preds), np.concatenate(truths), np.concatenate(toks)
    hard = np.clip(np.round(pred), 1, cfg.n_bins - 1)
    g_mode = np.array([gene_mode.get(int(t), mode_bin) for t in tok])
    g_mean = np.array([gene_mean.get(int(t), mean_bin) for t in tok])
    mse = lambda p: float(np.mean((p - truth) ** 2))  # noqa: E731
    within = lambda p: float(np.mean(np.abs(np.clip(np.round(p), 1, cfg.n_bins - 1) - truth) <= 2))  # noqa: E731
    return {"metric": "masked-bin mean squared error (lower is better)", "n_masked": int(len(truth)),
            "trained": mse(pred), "frequency_baseline": mse(np.full_like(truth, mean_bin)),
            "gene_frequency_baseline": mse(g_mean),
            "accuracy_exact": float(np.mean(hard == truth)),
            "accuracy_exact_frequency_baseline": float(np.mean(truth == mode_bin)),
            "accuracy_exact_gene_frequency_baseline": float(np.mean(truth == g_mode)),
            "accuracy_within_2": within(pred), "accuracy_within_2_frequency_baseline": within(np.full_like(truth, mean_bin)),
            "accuracy_within_2_gene_frequency_baseline": within(g_mean),
            "pearson_r": float(np.corrcoef(pred, truth)[0, 1]),
            "pearson_r_gene_frequency_baseline": float(np.corrcoef(g_mean, truth)[0, 1])}


def load_scgpt_decoder(path: Path, d_model: int) -> ExprDecoder:
    """The ``decoder.fc.*`` weights of a best_model.pt as an :class:`ExprDecoder`."""
    from .models.scgpt import read_state_dict

    state = read_state_dict(path / "best_model.pt")
    dec = ExprDecoder(d_model)
    dec.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.fc.")})
    return dec.eval()


def pretrain_scgpt(adata, train_idx: np.ndarray, test_idx: np.ndarray, cfg: PretrainConfig, path: Path) -> dict:
    """Write, train and evaluate the scGPT-architecture demo model at ``path``."""
    from .models.scgpt import ScGPTAdapter

    write_scgpt_dir(path, adata, cfg, train_idx)
    adapter = ScGPTAdapter.from_pretrained(path)
    train_data, test_data = adata[train_idx], adata[test_idx]
    train, test = adapter.tokenize(train_data, seed=cfg.seed), adapter.tokenize(test_data, seed=cfg.seed)
    model = adapter.model.float()
    decoder = load_scgpt_decoder(path, cfg.d_model)
    untrained = evaluate_scgpt(model, decoder, train, test, adapter.pad_id, cfg.scgpt_mask_frac, cfg.seed)
    t0 = time.perf_counter()
    epochs = lambda e: train if e == 0 else adapter.tokenize(train_data, seed=cfg.seed + e)  # noqa: E731
    with torch.no_grad():  # start the decoder at the mean training bin (skips learning the offset)
        decoder.fc[4].bias.fill_(float(np.mean(np.concatenate([v[m] for v, m in zip(train.values, train.gene_mask)]))))
    history = train_scgpt(model, decoder, epochs, cfg, adapter.pad_id)
    seconds = time.perf_counter() - t0
    ev = evaluate_scgpt(model, decoder, train, test, adapter.pad_id, cfg.scgpt_mask_frac, cfg.seed)
    ev["untrained"] = untrained["trained"]
    ev["accuracy_within_2_untrained"] = untrained["accuracy_within_2"]
    save_scgpt_weights(path, model, decoder)
    return {"train_seconds": seconds, "loss_per_epoch": history, "eval": ev,
            "n_train_cells": len(train), "n_test_cells": len(test)}


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def pretrain_demo(cfg: PretrainConfig, adata=None) -> dict[str, dict]:
    """Train the demo model(s) of ``cfg.kind`` on ``adata`` (default: the bundled cells named by
    ``cfg.data``) into
    ``cfg.out/demo-<kind>``; each directory gets a ``training.json`` (options, held-out cells,
    losses, evaluation). Returns {kind: that report + its path}. A directory is built under a
    temporary name and renamed when complete, so an interrupted run leaves no half model."""
    if adata is None:
        from . import datasets

        adata = datasets.blood() if cfg.data == "blood" else datasets.pbmc()
    if cfg.max_cells is not None:
        adata = adata[: cfg.max_cells].copy()
    train_idx, test_idx = split_cells(adata.n_obs, cfg.holdout_frac, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    with torch_settings(cfg.threads):
        for kind in cfg.kinds():
            final = out / f"demo-{kind}"
            tmp = out / f".demo-{kind}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            run = pretrain_geneformer if kind == "geneformer" else pretrain_scgpt
            report = run(adata, train_idx, test_idx, cfg, tmp)
            report.update({"kind": kind, "options": to_dict(cfg), "threads": cfg.threads,
                           "held_out_cells": [str(adata.obs_names[i]) for i in test_idx],
                           "note": (f"demo model trained by sccircuits on the bundled '{cfg.data}' cells; "
                                    "not Geneformer or scGPT")})
            (tmp / "training.json").write_text(json.dumps(report, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for f in final.iterdir():
                os.chmod(f, 0o644)
            reports[kind] = {**report, "path": str(final)}
    return reports
