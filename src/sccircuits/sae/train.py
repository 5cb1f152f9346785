"""Training TopK SAEs on an activation store, one SAE per layer.

Two recipes:

``ours`` (default), following Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"):
  * input centred by the per-layer activation mean (stored in the SAE);
  * decoder feature directions ``W_dec[f]`` initialised random unit vectors and kept unit-norm
    after every step; before each step the gradient component parallel to each direction is
    removed (so Adam moves directions, not lengths);
  * encoder initialised as the decoder transpose, ``b_enc = 0``; ``b_dec`` initialised to the
    geometric median of a sample of centred training positions;
  * loss = normalised MSE (squared error / total variance of the data) plus AuxK: latents that
    have not fired for ``dead_after`` training positions are "dead"; the top ``aux_k`` of their
    pre-activations reconstruct the main reconstruction error, with coefficient ``aux_coef``.

``reference`` (the published scripts, flaws included, for reproduction and comparison):
  PyTorch ``nn.Linear`` default initialisation, plain MSE, Adam, and after every step each
  decoder *row* ``W_dec.weight[i, :]`` (one per input dimension, i.e. a column of our
  ``W_dec``) is scaled to unit norm: feature directions stay unconstrained. No AuxK.

Both stream positions from :class:`~sccircuits.activations.ActivationStore` a few shards at a
time (a bounded shuffle buffer), so the activations never have to fit in memory. Whole cells
are held out for evaluation (variance explained = 1 - FVU, L0, dead latents = never fired on
the held-out positions); the metrics go into the run manifest and each SAE's cfg.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..activations import ActivationStore
from ..config import check, parse_layers, to_dict
from ..rundir import RunDir, atomic_write_npy
from .config import DEFAULT_LR, SAETrainConfig  # noqa: F401  (re-exported)
from .io import load_sae, save_sae
from .model import TopKSAE, topk_relu

STAGE = "train-sae"
SAE_DIR = "saes"


# =============================================================================== entry point
def train_saes(run: str | os.PathLike | RunDir, cfg: SAETrainConfig | None = None, *,
               progress: bool = True) -> dict[int, TopKSAE]:
    """Train one SAE per layer of the run's activation store; returns {layer: TopKSAE}.

    Layers already finished with the same options are loaded, not retrained; a layer
    interrupted mid-training resumes from its last epoch checkpoint.
    """
    cfg = cfg or SAETrainConfig()
    run = run if isinstance(run, RunDir) else RunDir(run, create=False)
    with run.hold(STAGE):
        return _train_saes(run, cfg, progress)


def _train_saes(run: RunDir, cfg: SAETrainConfig, progress: bool) -> dict[int, TopKSAE]:
    store = ActivationStore(run)
    layers = store.layers if cfg.layers.strip().lower() == "all" else parse_layers(cfg.layers, "layers")
    missing = [l for l in layers if l not in store.layers]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"layer(s) {missing} were not extracted (store has {store.layers})")
    d_sae = cfg.expansion * store.d_model
    check(cfg.k <= d_sae, f"k ({cfg.k}) must be <= d_sae ({d_sae})")

    split = heldout_split(store.cell_index(), cfg.holdout_fraction, cfg.seed)
    out_dir = run / SAE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_npy(out_dir / "heldout_cells.npy", split.heldout_cells)
    upstream = run.stamps("extract")
    previous = (run.stage(STAGE) or {}).get("metrics", {}) if _same_config(run, cfg, upstream) else {}
    run.begin_stage(STAGE, cfg, upstream=upstream)
    # epoch checkpoints count only for these options on these activations (a re-extract changes the key)
    cfg_key = json.dumps({**to_dict(cfg), "activations": upstream["extract"]}, sort_keys=True)
    metrics: dict = {}
    saes: dict[int, TopKSAE] = {}
    for layer in layers:
        name = f"layer{layer:02d}"
        final = out_dir / name
        if f"{name}" in previous and (final / "cfg.json").is_file():
            saes[layer] = load_sae(final)
            metrics[name] = previous[name]
            continue
        sae, m = train_layer(store, layer, cfg, split, checkpoint=out_dir / ".checkpoints" / f"{name}.pt",
                             progress=progress, cfg_key=cfg_key)
        sae.metadata = {"layer": layer, "model_name": _model_name(store.info.get("model_path")), "recipe": cfg.recipe,
                        "metrics": m, "train_config": to_dict(cfg)}
        save_sae(sae, final)
        metrics[name] = m
        saes[layer] = sae
        _record_partial(run, metrics)
    summary = {"layers": metrics, "heldout_cells": int(len(split.heldout_cells)),
               "mean_variance_explained": float(np.mean([m["variance_explained"] for m in metrics.values()])),
               "total_dead": int(sum(m["dead"] for m in metrics.values())),
               "total_latents": int(sum(m["d_sae"] for m in metrics.values()))}
    run.complete_stage(STAGE, outputs=[SAE_DIR], metrics={**metrics, "summary": summary})
    return saes


def _same_config(run: RunDir, cfg: SAETrainConfig, upstream: dict) -> bool:
    """Same options, trained on the activations the run holds now (not on an earlier extract)."""
    st = run.stage(STAGE)
    return bool(st) and st.get("config") == to_dict(cfg) and st.get("upstream", upstream) == upstream


def _model_name(model_path: str | None) -> str | None:
    """SAELens ``model_name``: the model directory's name, never a path of the user's machine."""
    return None if not model_path else Path(model_path).name or None


def _record_partial(run: RunDir, metrics: dict) -> None:
    """Per-layer metrics so far (a resumed run skips these layers)."""
    def fn(m):
        m["stages"][STAGE]["metrics"] = dict(metrics)
    run.update_manifest(fn)


# =============================================================================== data
@dataclasses.dataclass
class Split:
    """Row numbers of training and held-out positions (held out = all positions of some cells)."""

    train_rows: np.ndarray
    eval_rows: np.ndarray
    heldout_cells: np.ndarray


def heldout_split(cell_index: np.ndarray, fraction: float, seed: int) -> Split:
    """Hold out ``round(fraction * n_cells)`` whole cells (at least 1, at most n_cells - 1)."""
    cells = np.unique(cell_index)
    if len(cells) < 2:
        from ..errors import InputError

        raise InputError(None, "need at least 2 extracted cells to hold some out for evaluation")
    n_hold = min(len(cells) - 1, max(1, int(round(fraction * len(cells)))))
    rng = np.random.default_rng([seed, 7])
    held = np.sort(rng.choice(cells, size=n_hold, replace=False))
    is_eval = np.isin(cell_index, held)
    return Split(np.flatnonzero(~is_eval).astype(np.int64), np.flatnonzero(is_eval).astype(np.int64), held)


def _subsample(rows: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=n, replace=False))


def shuffled_batches(store: ActivationStore, layer: int, rows: np.ndarray, batch_size: int,
                     rng: np.random.Generator, shuffle_shards: int):
    """One epoch of float32 training batches: shards in random order, ``shuffle_shards`` shards
    at a time pooled and permuted (bounded memory); leftovers carry into the next pool."""
    starts = store.shard_starts
    order = rng.permutation(store.n_shards)
    carry = np.zeros((0, store.d_model), dtype=np.float32)
    for g in range(0, len(order), shuffle_shards):
        parts = [carry]
        for i in order[g:g + shuffle_shards]:
            a, b = np.searchsorted(rows, [starts[i], starts[i + 1]])
            if a < b:
                parts.append(np.asarray(store.shard(layer, int(i))[rows[a:b] - starts[i]], dtype=np.float32))
        pool = np.concatenate(parts)
        pool = pool[rng.permutation(len(pool))]
        n_full = len(pool) // batch_size * batch_size
        for s in range(0, n_full, batch_size):
            yield pool[s:s + batch_size]
        carry = pool[n_full:]
    if len(carry):
        yield carry


def _sample_rows(store: ActivationStore, layer: int, rows: np.ndarray, n: int, rng) -> np.ndarray:
    pick = _subsample(rows, n, rng)
    return np.concatenate([x for x, _, _ in store.iter_batches(layer, 65536, rows=pick)])


# =============================================================================== model init
def geometric_median(X: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to rows of X."""
    y = X.mean(0)
    for _ in range(iters):
        w = 1.0 / torch.clamp((X - y).norm(dim=1), min=eps)
        y_new = (w[:, None] * X).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y


def init_sae(d_in: int, d_sae: int, k: int, mean: np.ndarray, recipe: str, sample_centred: torch.Tensor,
             seed: int) -> TopKSAE:
    """A fresh SAE initialised per ``recipe`` (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k, activation_mean=torch.from_numpy(np.asarray(mean, dtype=np.float32)))
    with torch.no_grad():
        if recipe == "ours":
            W = torch.randn(d_sae, d_in, generator=g)
            W /= W.norm(dim=1, keepdim=True)
            sae.W_dec.copy_(W)
            sae.W_enc.copy_(W.T)
            sae.b_enc.zero_()
            sae.b_dec.copy_(geometric_median(sample_centred.double()).float())
        else:  # nn.Linear defaults, as the published nn.Linear(d, 4d) / nn.Linear(4d, d)
            enc, dec = torch.nn.Linear(d_in, d_sae), torch.nn.Linear(d_sae, d_in)
            for lin, fan_in in ((enc, d_in), (dec, d_sae)):
                bound = 1 / math.sqrt(fan_in)
                torch.nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=g)
                torch.nn.init.uniform_(lin.bias, -bound, bound, generator=g)
            sae.W_enc.copy_(enc.weight.T)
            sae.b_enc.copy_(enc.bias)
            sae.W_dec.copy_(dec.weight.T)
            sae.b_dec.copy_(dec.bias)
    return sae


# =============================================================================== steps
def remove_parallel_grad(sae: TopKSAE) -> None:
    """Project out of ``W_dec.grad`` each row's component along that (unit) feature direction."""
    if sae.W_dec.grad is None:
        return
    with torch.no_grad():
        W, G = sae.W_dec, sae.W_dec.grad
        G -= (G * W).sum(dim=1, keepdim=True) * W / (W * W).sum(dim=1, keepdim=True).clamp_min(1e-12)


def normalize_features(sae: TopKSAE) -> None:
    """Scale each feature direction ``W_dec[f]`` to unit norm (ours)."""
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def normalize_reference_rows(sae: TopKSAE) -> None:
    """The published step: unit-normalise ``W_dec.weight`` rows = columns of our ``W_dec``
    (one per input dimension, across all features). Feature norms stay free."""
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)


def auxk_loss(sae: TopKSAE, x_c: torch.Tensor, pre: torch.Tensor, recon_c: torch.Tensor, dead: torch.Tensor,
              aux_k: int, total_var: float) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top ``aux_k`` dead latents' pre-activations, decoded without
    bias, reconstruct the main error ``x - x_hat``; normalised MSE."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    err = (x_c - recon_c).detach()
    masked = pre.masked_fill(~dead, float("-inf"))
    top = torch.topk(masked, min(aux_k, n_dead), dim=-1)
    # raw (not ReLU'd) values, as SAELens does: a dead latent whose pre-activation is negative
    # everywhere would otherwise get no gradient at all and could never come back
    z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    err_hat = z_aux @ sae.W_dec
    return (err_hat - err).pow(2).sum(-1).mean() / total_var


class Trainer:
    """Optimisation state of one SAE (kept together so it can be checkpointed)."""

    def __init__(self, sae: TopKSAE, cfg: SAETrainConfig, total_var: float, total_steps: int):
        self.sae, self.cfg, self.total_var = sae, cfg, float(total_var)
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.W_dec.device)
        self.aux_k = cfg.aux_k if cfg.aux_k is not None else max(1, sae.d_in // 2)
        self.step_no, self.total_steps = 0, max(1, total_steps)

    def _lr(self) -> float:
        lr = self.cfg.learning_rate
        if self.cfg.recipe != "ours" or not self.cfg.lr_decay:
            return lr
        start = int(0.8 * self.total_steps)
        if self.step_no < start:
            return lr
        return lr * max(0.0, (self.total_steps - self.step_no) / max(1, self.total_steps - start))

    def step(self, x: torch.Tensor) -> dict:
        """One optimisation step on RAW residuals ``x (B, d)``."""
        sae, cfg = self.sae, self.cfg
        x_c = x - sae.activation_mean
        pre = torch.nn.functional.linear(x_c, sae.W_enc.T, sae.b_enc)
        z = topk_relu(pre, sae.k)
        recon_c = z @ sae.W_dec + sae.b_dec
        if cfg.recipe == "ours":
            mse = (recon_c - x_c).pow(2).sum(-1).mean() / self.total_var
            fired = (z > 0).any(0)
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
            dead = self.since_fired >= cfg.dead_after
            aux = auxk_loss(sae, x_c, pre, recon_c, dead, self.aux_k, self.total_var)
            loss = mse + cfg.aux_coef * aux
        else:
            mse = torch.nn.functional.mse_loss(recon_c, x_c)
            aux, dead = mse.new_zeros(()), None
            loss = mse
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.recipe == "ours":
            remove_parallel_grad(sae)
        for gr in self.opt.param_groups:
            gr["lr"] = self._lr()
        self.opt.step()
        if cfg.recipe == "ours":
            normalize_features(sae)
        else:
            normalize_reference_rows(sae)
        self.step_no += 1
        return {"loss": float(loss.detach()), "mse": float(mse.detach()), "aux": float(aux.detach()),
                "dead": int(dead.sum()) if dead is not None else 0}

    def state(self, epoch: int, cfg_key: str) -> dict:
        return {"epoch": epoch, "step_no": self.step_no, "cfg_key": cfg_key, "sae": self.sae.state_dict(),
                "opt": self.opt.state_dict(), "since_fired": self.since_fired.cpu()}

    def load(self, st: dict) -> int:
        self.sae.load_state_dict(st["sae"])
        self.opt.load_state_dict(st["opt"])
        self.since_fired = st["since_fired"].to(self.since_fired.device)
        self.step_no = int(st["step_no"])
        return int(st["epoch"])


# =============================================================================== per layer
def train_layer(store: ActivationStore, layer: int, cfg: SAETrainConfig, split: Split, *,
                checkpoint: Path | None = None, progress: bool = True, cfg_key: str = "") -> tuple[TopKSAE, dict]:
    """Train and evaluate the SAE of one layer; returns (sae, metrics)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([cfg.seed, layer, 1])
    train_rows = _subsample(split.train_rows, cfg.max_positions, rng)
    if len(train_rows) == 0:
        from ..errors import InputError

        raise InputError(store.path, "no training positions left after holding out cells")
    mean = store.mean(layer)
    sample = torch.from_numpy(_sample_rows(store, layer, train_rows, 8192, rng) - mean.astype(np.float32))
    total_var = float(sample.double().pow(2).sum(1).mean() - sample.double().mean(0).pow(2).sum())
    torch.manual_seed(cfg.seed)
    sae = init_sae(store.d_model, cfg.expansion * store.d_model, cfg.k, mean, cfg.recipe, sample,
                   seed=cfg.seed * 1000 + layer).to(cfg.device)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    tr = Trainer(sae, cfg, total_var, steps_per_epoch * cfg.epochs)
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        st = torch.load(checkpoint, map_location=cfg.device, weights_only=True)
        if st.get("cfg_key") == cfg_key:
            start_epoch = tr.load(st)
    t0, seen = time.perf_counter(), 0
    bar = tqdm(total=steps_per_epoch * cfg.epochs, initial=steps_per_epoch * start_epoch, disable=not progress,
               desc=f"train-sae layer {layer}", unit="step")
    sae.train()
    for epoch in range(start_epoch, cfg.epochs):
        ep_rng = np.random.default_rng([cfg.seed, layer, 2, epoch])
        for xb in shuffled_batches(store, layer, train_rows, cfg.batch_size, ep_rng, cfg.shuffle_shards):
            info = tr.step(torch.from_numpy(xb).to(cfg.device))
            seen += len(xb)
            bar.update(1)
            bar.set_postfix(mse=f"{info['mse']:.4f}", dead=info["dead"], refresh=False)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(tr.state(epoch + 1, cfg_key), tmp)
            os.replace(tmp, checkpoint)
    bar.close()
    elapsed = time.perf_counter() - t0
    sae.eval()
    eval_rows = _subsample(split.eval_rows, cfg.max_eval_positions, np.random.default_rng([cfg.seed, layer, 3]))
    m = evaluate(sae, store, layer, eval_rows, device=cfg.device)
    m.update({"n_train_positions": int(len(train_rows)), "epochs": cfg.epochs, "recipe": cfg.recipe,
              "lr": cfg.learning_rate,
              "train_seconds": round(elapsed, 3), "positions_per_second": round(seen / elapsed, 1) if seen else None,
              "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k})
    if checkpoint is not None and checkpoint.is_file():
        checkpoint.unlink()
    return sae, m


@torch.no_grad()
def evaluate(sae: TopKSAE, store: ActivationStore, layer: int, rows: np.ndarray, device: str = "cpu",
             batch_size: int = 8192) -> dict:
    """Held-out metrics: variance explained = 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2
    (mean of the evaluated positions), L0 (mean nonzero latents), dead = latents never nonzero."""
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    sse = 0.0
    n = 0
    s1 = np.zeros(sae.d_in, dtype=np.float64)
    s2 = 0.0
    l0 = 0.0
    for X, _, _ in store.iter_batches(layer, batch_size, rows=rows):
        x = torch.from_numpy(X).to(device)
        z = sae.encode(x)
        sse += float((sae.decode(z) - x).double().pow(2).sum())
        nz = z > 0
        fired |= nz.any(0)
        l0 += float(nz.sum())
        xd = X.astype(np.float64)
        s1 += xd.sum(0)
        s2 += float((xd * xd).sum())
        n += len(X)
    tot = s2 - float(s1 @ s1) / max(n, 1)
    dead = int((~fired).sum())
    return {"variance_explained": float(1 - sse / tot) if tot > 0 else float("nan"),
            "fvu": float(sse / tot) if tot > 0 else float("nan"), "l0": l0 / max(n, 1), "dead": dead,
            "dead_fraction": dead / sae.d_sae, "n_eval_positions": int(n)}
