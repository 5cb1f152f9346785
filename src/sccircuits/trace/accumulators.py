"""Mergeable per-edge statistics of the tracer.

For each source layer ``s``, each traced source feature ``f`` of ``s`` and each downstream
layer ``t``, every cell where ``f`` fires contributes one observation: a vector over all
features of layer ``t`` (mean change of the target activations over the positions where
``f`` fired). :class:`Accumulators` keeps, per ``(s, t)`` and per ablation kind ("real" or
"null"), dense arrays over (source feature slot, target feature):

* ``n``     (F,)      int64    cells observed
* ``mean``  (F, T)    float64  running mean
* ``m2``    (F, T)    float64  sum of squared deviations (Welford / Chan)
* ``pos``, ``neg``, ``zero`` (F, T) int32 sign counts of the observations
* ``clean``   (F, T)  float64  sum over cells of the target's mean clean activation at the
  averaged positions (the magnitude floor's unit)
* ``size``    (F,)    float64  sum over cells of the mean ablation norm at those positions

For the "null" kind the slots are the null draws of the layer (``Accumulators.null_features``:
the template feature of each draw), not the traced features.

Accumulators merge exactly with :func:`sccircuits.stats.welford_merge`. Results do not
depend on how cells are split as long as the *fold order* is the same: the tracer always
folds per-batch statistics into a block, and blocks into the total, in cell order (see
``engine.py``), so a run split into shards and merged folds the very same numbers in the very
same order as a single run and is bit-for-bit equal to it.

Saved as ``.npz`` (numpy arrays only, no pickle).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..rundir import atomic_write_bytes
from ..stats import welford_merge

KINDS = ("real", "null")
STAT_NAMES = ("n", "mean", "m2", "pos", "neg", "zero", "clean", "size")


@dataclass
class PairStats:
    """Statistics of one (source layer, target layer, kind): arrays over (slot, target feature)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    zero: np.ndarray
    clean: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls, n_slots: int, n_targets: int) -> "PairStats":
        shape = (n_slots, n_targets)
        return cls(np.zeros(n_slots, np.int64), np.zeros(shape, np.float64), np.zeros(shape, np.float64),
                   np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32),
                   np.zeros(shape, np.float64), np.zeros(n_slots, np.float64))

    @classmethod
    def from_observations(cls, slots: np.ndarray, obs: np.ndarray, n_slots: int, clean: np.ndarray | None = None,
                          size: np.ndarray | None = None) -> "PairStats":
        """Statistics of observations ``obs`` (N, T) belonging to source slots ``slots`` (N,),
        with the cells' mean clean target activations ``clean`` (N, T) and ablation sizes
        ``size`` (N,) (zeros when not given).

        Observations of one slot are taken in the order given (callers pass cell order);
        the computation is vectorised over slots (two-pass mean / M2 per slot).
        """
        obs = np.asarray(obs, dtype=np.float64)
        slots = np.asarray(slots, dtype=np.int64)
        out = cls.empty(n_slots, obs.shape[1])
        if len(slots) == 0:
            return out
        order = np.argsort(slots, kind="stable")
        x = obs[order]
        s = slots[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        uniq = s[starts]
        counts = np.diff(np.r_[starts, len(s)])
        mean = np.add.reduceat(x, starts, axis=0) / counts[:, None]
        seg = np.repeat(np.arange(len(starts)), counts)
        m2 = np.add.reduceat((x - mean[seg]) ** 2, starts, axis=0)
        out.n[uniq] = counts
        out.mean[uniq] = mean
        out.m2[uniq] = m2
        out.pos[uniq] = np.add.reduceat((x > 0).astype(np.int32), starts, axis=0)
        out.neg[uniq] = np.add.reduceat((x < 0).astype(np.int32), starts, axis=0)
        out.zero[uniq] = counts[:, None] - out.pos[uniq] - out.neg[uniq]
        if clean is not None:
            out.clean[uniq] = np.add.reduceat(np.asarray(clean, np.float64)[order], starts, axis=0)
        if size is not None:
            out.size[uniq] = np.add.reduceat(np.asarray(size, np.float64)[order], starts)
        return out

    def merge(self, other: "PairStats") -> "PairStats":
        """Exact Chan merge (self first, then other); returns a new object."""
        n, mean, m2 = welford_merge(self.n[:, None], self.mean, self.m2, other.n[:, None], other.mean, other.m2)
        return PairStats((self.n + other.n).astype(np.int64), np.asarray(mean, np.float64),
                         np.asarray(m2, np.float64), self.pos + other.pos, self.neg + other.neg,
                         self.zero + other.zero, self.clean + other.clean, self.size + other.size)

    def sd(self) -> np.ndarray:
        """Sample standard deviation (ddof 1; NaN when n < 2)."""
        n = self.n[:, None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n >= 2, np.sqrt(np.maximum(self.m2, 0.0) / (n - 1)), np.nan)


@dataclass
class Accumulators:
    """All statistics of a trace (or of one block of cells): see the module docstring."""

    features: dict[int, np.ndarray]
    """Source layer -> traced source feature ids (int64); a feature's slot is its index here."""
    targets: dict[int, list[int]]
    """Source layer -> downstream layers measured."""
    target_sizes: dict[int, int]
    """Downstream layer -> number of SAE features."""
    pairs: dict[tuple[str, int, int], PairStats] = field(default_factory=dict)
    """(kind, source layer, target layer) -> statistics."""
    active: dict[int, np.ndarray] = field(default_factory=dict)
    """Source layer -> cells where each slot's feature fired (int64, (F,))."""
    counters: dict[str, int] = field(default_factory=dict)
    """Work done: forward passes, ablations, cells (int)."""
    null_features: dict[int, np.ndarray] = field(default_factory=dict)
    """Source layer -> template feature of each null draw (the null kind's slots)."""

    @classmethod
    def empty(cls, features: dict[int, np.ndarray], targets: dict[int, list[int]],
              target_sizes: dict[int, int], kinds: tuple[str, ...] = ("real",),
              null_features: dict[int, np.ndarray] | None = None) -> "Accumulators":
        """Zero statistics; the null kind has one slot per null draw (``null_features``; by
        default one per traced feature)."""
        acc = cls({s: np.asarray(f, np.int64) for s, f in features.items()},
                  {s: list(t) for s, t in targets.items()}, dict(target_sizes))
        if "null" in kinds:
            nf = null_features if null_features is not None else features
            acc.null_features = {s: np.asarray(nf.get(s, ()), np.int64) for s in acc.features}
        for s, ts in acc.targets.items():
            acc.active[s] = np.zeros(len(acc.features[s]), np.int64)
            for t in ts:
                for kind in kinds:
                    n = len(acc.features[s]) if kind == "real" else len(acc.null_features[s])
                    acc.pairs[(kind, s, t)] = PairStats.empty(n, target_sizes[t])
        return acc

    def kinds(self) -> list[str]:
        return sorted({k for k, _, _ in self.pairs}, key=KINDS.index)

    def layout_key(self) -> tuple:
        """What must agree between accumulators that are merged."""
        return (tuple((s, tuple(self.features[s].tolist())) for s in sorted(self.features)),
                tuple((s, tuple(self.targets[s])) for s in sorted(self.targets)),
                tuple(sorted(self.target_sizes.items())), tuple(sorted(self.pairs)),
                tuple((s, tuple(self.null_features[s].tolist())) for s in sorted(self.null_features)))

    def merge(self, other: "Accumulators") -> "Accumulators":
        """Exact merge (self's cells first). Both must trace the same features and layers."""
        if self.layout_key() != other.layout_key():
            raise InputError(None, "cannot merge trace accumulators of different features, layers or "
                                   "null settings")
        out = Accumulators(self.features, self.targets, self.target_sizes, null_features=self.null_features)
        out.pairs = {k: self.pairs[k].merge(other.pairs[k]) for k in self.pairs}
        out.active = {s: self.active[s] + other.active[s] for s in self.active}
        out.counters = {k: self.counters.get(k, 0) + other.counters.get(k, 0)
                        for k in set(self.counters) | set(other.counters)}
        return out

    # -- persistence (.npz, no pickle) ---------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for s in sorted(self.features):
            arrays[f"features_s{s}"] = self.features[s]
            arrays[f"targets_s{s}"] = np.asarray(self.targets[s], np.int64)
            arrays[f"active_s{s}"] = self.active[s]
            if s in self.null_features:
                arrays[f"nullfeatures_s{s}"] = self.null_features[s]
        for t, size in self.target_sizes.items():
            arrays[f"size_t{t}"] = np.asarray(size, np.int64)
        for (kind, s, t), ps in self.pairs.items():
            for name in STAT_NAMES:
                arrays[f"{kind}_s{s}_t{t}_{name}"] = getattr(ps, name)
        for k, v in self.counters.items():
            arrays[f"counter_{k}"] = np.asarray(v, np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "Accumulators":
        keys = list(arrays.keys())
        features = {int(k[len("features_s"):]): np.asarray(arrays[k], np.int64) for k in keys if k.startswith("features_s")}
        targets = {s: [int(t) for t in arrays[f"targets_s{s}"]] for s in features}
        sizes = {int(k[len("size_t"):]): int(arrays[k]) for k in keys if k.startswith("size_t")}
        acc = cls(features, targets, sizes)
        acc.active = {s: np.asarray(arrays[f"active_s{s}"], np.int64) for s in features}
        acc.null_features = {s: np.asarray(arrays[f"nullfeatures_s{s}"], np.int64) for s in features
                             if f"nullfeatures_s{s}" in arrays}
        for k in keys:
            if k.endswith("_n") and k.split("_")[0] in KINDS:
                kind, s, t, _ = k.split("_")
                s, t = int(s[1:]), int(t[1:])
                pre = f"{kind}_s{s}_t{t}_"
                if pre + "size" not in arrays:
                    raise InputError(None, "trace statistics written by an older sccircuits (no null sizes); "
                                           "trace again into a new run directory")
                acc.pairs[(kind, s, t)] = PairStats(*(np.asarray(arrays[pre + n]) for n in STAT_NAMES))
            elif k.startswith("counter_"):
                acc.counters[k[len("counter_"):]] = int(arrays[k])
        return acc

    def save(self, path: str | os.PathLike, compress: bool = True, **extra: np.ndarray) -> None:
        """Atomically write to ``path`` (.npz); ``extra`` arrays are stored beside (e.g. block ids)."""
        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buf, **self.to_arrays(), **{f"extra_{k}": np.asarray(v) for k, v in extra.items()})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["Accumulators", dict[str, np.ndarray]]:
        """Read accumulators (and the ``extra`` arrays) written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(path, "file not found") from None
        except Exception as e:  # corrupt / not an npz
            raise InputError(path, f"not a readable trace accumulator file ({type(e).__name__})") from None
        extra = {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
        return cls.from_arrays({k: v for k, v in arrays.items() if not k.startswith("extra_")}), extra
