"""Cell-type activity of SAE features (``sccircuits celltypes``): does a feature fire more in
some cell types than in others?

For every layer with an SAE, each extracted cell gets one activity per feature: the mean SAE
activation over the cell's gene positions (0 where the feature does not fire). Per feature,
a Kruskal-Wallis test compares these per-cell activities across the cell-type labels of the
data file (``obs[label_column]``; types with fewer than ``min_cells`` extracted cells are left
out; ``subset`` restricts the test to one batch of cells, since a batch that is mostly one cell
type would otherwise pass batch differences off as cell-type differences); p-values get a Benjamini-Hochberg correction over every tested feature of every layer.
Features that never fire in the tested cells are not tested. The effect size is epsilon^2 =
H / (n - 1) (0: no difference, 1: the types separate completely).

Outputs in ``RUN/celltypes/``: ``activity.parquet`` (layer, feature, cell_type, n_cells,
mean_activity, frac_active) and ``kruskal.parquet`` (layer, feature, n_cells, H,
epsilon_sq, p_value, q_value, top_cell_type, top_mean, rest_mean, traced: whether the trace
stage ablated it as a source), plus the manifest stage ``celltypes``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from . import artifacts
from .celltypes_config import CellTypeConfig  # noqa: F401  (re-exported)
from .config import to_dict
from .errors import InputError
from .rundir import RunDir

STAGE = artifacts.CELLTYPES


# ------------------------------------------------------------------ pure part

def per_cell_activity(codes: np.ndarray, cell_of_row: np.ndarray, n_cells: int) -> np.ndarray:
    """Mean over each cell's positions of ``codes (positions, features)`` -> (n_cells, features).
    ``cell_of_row`` holds 0..n_cells-1; a cell without positions gets zeros."""
    sums = np.zeros((n_cells, codes.shape[1]), dtype=np.float64)
    np.add.at(sums, cell_of_row, codes.astype(np.float64))
    counts = np.bincount(cell_of_row, minlength=n_cells).astype(np.float64)
    return sums / np.maximum(counts, 1.0)[:, None]


def kruskal_by_type(activity: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per feature (column of ``activity (cells, features)``): Kruskal-Wallis H and p across the
    groups of ``labels``, epsilon^2 = H/(n-1), the type with the highest mean and the mean of
    the other cells. Features constant over the cells get H = 0, p = 1 (nothing to test is no
    evidence). Returns one row per feature."""
    from scipy.stats import kruskal

    types = np.unique(labels)
    n = len(labels)
    rows = []
    for j in range(activity.shape[1]):
        x = activity[:, j]
        groups = [x[labels == t] for t in types]
        means = np.array([g.mean() for g in groups])
        top = int(means.argmax())
        if np.ptp(x) == 0:
            h, p = 0.0, 1.0
        else:
            h, p = kruskal(*groups)
            h, p = float(h), float(p)
        rows.append({"feature": j, "n_cells": n, "H": h, "epsilon_sq": h / max(n - 1, 1), "p_value": p,
                     "top_cell_type": str(types[top]), "top_mean": float(means[top]),
                     "rest_mean": float(x[labels != types[top]].mean()) if (labels != types[top]).any() else np.nan})
    return pd.DataFrame(rows)


def activity_table(activity: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Long table (feature, cell_type, n_cells, mean_activity, frac_active)."""
    rows = []
    for t in np.unique(labels):
        sel = labels == t
        a = activity[sel]
        rows.append(pd.DataFrame({"feature": np.arange(a.shape[1]), "cell_type": str(t), "n_cells": int(sel.sum()),
                                  "mean_activity": a.mean(0), "frac_active": (a > 0).mean(0)}))
    return pd.concat(rows, ignore_index=True)


# ------------------------------------------------------------------ stage

def _labels(data: str, column: str, cells: np.ndarray, subset: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(label of each extracted cell, whether it is in ``subset``)."""
    from .data import read_cells

    adata = read_cells(data)
    wanted = [column] + ([subset.split("=", 1)[0]] if subset else [])
    for col in wanted:
        if col not in adata.obs.columns:
            raise InputError(data, f"no obs column '{col}' (columns: {', '.join(map(str, adata.obs.columns)) or 'none'})")
    if cells.size and cells.max() >= adata.n_obs:
        raise InputError(data, f"has {adata.n_obs} cells but the activations come from row {cells.max()}: "
                               "not the file they were extracted from")
    labels = adata.obs[column].astype(str).to_numpy()[cells]
    if not subset:
        return labels, np.ones(len(cells), dtype=bool)
    col, value = subset.split("=", 1)
    return labels, adata.obs[col].astype(str).to_numpy()[cells] == value


def _traced_sources(run: RunDir) -> set[tuple[int, int]]:
    f = artifacts.read_trace_table(run, "features", columns=["source_layer", "source_feature"])
    if f is None:
        return set()
    return {(int(a), int(b)) for a, b in zip(f["source_layer"], f["source_feature"])}


def celltypes(run: str | os.PathLike, cfg: CellTypeConfig | None = None, progress: bool = True) -> dict:
    """Run the stage on ``run`` (needs extract and train-sae); returns its metrics."""
    import torch

    from .activations import ActivationStore
    from .sae import load_saes
    from .stats import bh_fdr

    cfg = cfg or CellTypeConfig()
    rd = RunDir(run, create=False)
    ext = rd.require("extract")
    rd.require("train-sae")
    data = cfg.data or str(ext.get("data_path") or "")
    if not data:
        raise InputError(rd.path, "celltypes: the extract stage does not record its data file; pass --data")
    store = ActivationStore(rd)
    cells = store.cells()
    labels_all, in_subset = _labels(data, cfg.label_column, cells, cfg.subset)
    n_per = pd.Series(labels_all[in_subset]).value_counts()
    keep_types = set(n_per[n_per >= cfg.min_cells].index)
    keep_cells = in_subset & np.array([lab in keep_types for lab in labels_all])
    if len(keep_types) < 2:
        raise InputError(data, f"celltypes: fewer than 2 cell types with >= {cfg.min_cells} extracted cells "
                               f"in obs['{cfg.label_column}']" + (f" among cells with {cfg.subset}" if cfg.subset else ""))
    with rd.hold(STAGE):  # a failure marks the stage failed and frees the run lock
        rd.begin_stage(STAGE, {**to_dict(cfg), "data": data})
        saes = load_saes(rd.path / "saes")
        traced = _traced_sources(rd)
        act_rows, test_rows = [], []
        for layer in sorted(saes):
            sae = saes[layer].eval()
            chunks = []
            with torch.no_grad():
                for acts, cell_idx, _tok in store.iter_batches(layer, cfg.batch_size):
                    chunks.append((sae.encode(torch.as_tensor(acts, dtype=torch.float32)).numpy(), cell_idx))
            codes = np.concatenate([c for c, _ in chunks])
            cell_idx = np.concatenate([i for _, i in chunks])
            activity = per_cell_activity(codes, cell_idx, len(cells))[keep_cells]
            labels = labels_all[keep_cells]
            alive = np.flatnonzero(activity.max(0) > 0)
            test = kruskal_by_type(activity[:, alive], labels)
            test["feature"] = alive
            test.insert(0, "layer", layer)
            test["traced"] = [(layer, int(f)) in traced for f in alive]
            test_rows.append(test)
            act = activity_table(activity[:, alive], labels)
            act["feature"] = alive[act["feature"].to_numpy()]
            act.insert(0, "layer", layer)
            act_rows.append(act)
        tests = pd.concat(test_rows, ignore_index=True)
        tests["q_value"] = bh_fdr(tests["p_value"].to_numpy(dtype=np.float64))
        outputs = artifacts.write_celltypes(rd, {"activity": pd.concat(act_rows, ignore_index=True), "kruskal": tests})
        sig = tests["q_value"] < cfg.alpha
        metrics = {"n_cells": int(keep_cells.sum()), "cell_types": {str(k): int(v) for k, v in n_per.items()},
                   "n_features_tested": int(len(tests)), "n_significant": int(sig.sum()),
                   "share_significant": float(sig.mean()) if len(tests) else 0.0,
                   "n_traced_tested": int(tests["traced"].sum()),
                   "n_traced_significant": int((sig & tests["traced"]).sum())}
        rd.complete_stage(STAGE, outputs=outputs, metrics=metrics)
        return metrics
