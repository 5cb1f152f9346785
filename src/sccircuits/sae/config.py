"""Options of ``train-sae`` (one dataclass, saved in the run manifest; importing it is cheap)."""

from __future__ import annotations

import dataclasses

from ..config import apply_compat, check, compat_option, option, parse_layers

# Ours: tuned on the benchmark activations (docs/sae-quality.md); the unit-norm decoder moves
# only directions, and the demo-sized stores give a few hundred steps, so it needs a larger
# step than the published 3e-4 (which the reference recipe keeps).
DEFAULT_LR = {"ours": 5e-3, "reference": 3e-4}


@dataclasses.dataclass
class SAETrainConfig:
    """Options of ``sccircuits train-sae``."""

    layers: str = option("all", "layers to train: 'all' (every extracted layer) or e.g. '0,5,11'")
    expansion: int = option(4, "d_sae = expansion * d_model")
    k: int = option(32, "active latents per position (TopK)")
    max_positions: int | None = option(None, "train on a random subsample of this many positions (all if None)")
    epochs: int = option(5, "passes over the training positions")
    batch_size: int = option(4096, "positions per optimisation step")
    lr: float | None = option(None, "Adam learning rate; default: 5e-3 (ours), 3e-4 (reference, as published)")
    seed: int = option(0, "seed of the held-out split, subsample, initialisation and shuffling")
    compat: str = option("none", "none, or 'reference' for the published training recipe")
    recipe: str | None = compat_option("ours", "reference", "'ours' (unit-norm features, AuxK, ...) or 'reference' (published recipe)")
    device: str = option("cpu", "torch device")
    holdout_fraction: float = option(0.1, "fraction of CELLS held out for evaluation")
    max_eval_positions: int = option(200_000, "cap on held-out positions evaluated (random subset)")
    aux_k: int | None = option(None, "AuxK latents (ours); default d_model // 2")
    aux_coef: float = option(1 / 32, "AuxK loss coefficient (ours)")
    dead_after: int = option(100_000, "a latent unfired for this many training positions is dead for AuxK (ours)")
    shuffle_shards: int = option(4, "shards held in memory at once for shuffling")
    lr_decay: bool = option(True, "linearly decay the lr to 0 over the last 20% of steps (ours)")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the recipe's default when not given."""
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_LR[self.recipe]

    def __post_init__(self) -> None:
        parse_layers(self.layers, "layers", allow_all=True)
        apply_compat(self)
        check(self.expansion >= 1, "expansion must be >= 1")
        check(self.k >= 1, "k must be >= 1")
        check(self.epochs >= 1, "epochs must be >= 1")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.lr is None or self.lr > 0, "lr must be > 0")
        check(self.recipe in ("ours", "reference"), f"recipe must be ours or reference, got {self.recipe!r}")
        check(0 < self.holdout_fraction < 1, "holdout_fraction must be in (0, 1)")
        check(self.max_positions is None or self.max_positions > 0, "max_positions must be positive")
        check(self.max_eval_positions > 0, "max_eval_positions must be positive")
        check(self.shuffle_shards >= 1, "shuffle_shards must be >= 1")
        check(self.dead_after >= 1, "dead_after must be >= 1")
