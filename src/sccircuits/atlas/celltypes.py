"""Activity of SAE features per cell type, for the atlas's feature cards.

For a seeded random sample of the run's extracted cells, every position is encoded by the
layer's SAE (the same TopK code the catalog counts) and a feature *fires in a cell* when it is
nonzero at any of the cell's gene positions. The activity of a feature in a cell type is the
fraction of the sampled cells of that type in which it fires. Cell types come from an obs
column of the run's input .h5ad; runs without activations, SAEs or such a column get none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..rundir import RunDir

CELL_TYPE_COLUMNS = ("cell_type", "celltype", "cell_types", "bulk_labels", "cell_ontology_class", "annotation")


@dataclass
class CellTypeActivity:
    """Per layer: {feature: fraction of sampled cells of each type where it fires}."""

    column: str
    types: list[str]
    n_cells: list[int]  # sampled cells per type
    activity: dict[int, dict[int, np.ndarray]]


def fire_fraction_by_type(cell: np.ndarray, feature: np.ndarray, cell_type: np.ndarray, n_types: int,
                          n_features: int) -> np.ndarray:
    """(n_features, n_types) fraction of the cells of each type in which each feature fires.

    ``cell``/``feature``: one entry per (position, firing feature) with the position's cell
    (0..n_cells-1); ``cell_type``: type index of each cell. Repeated firings in one cell count once.
    """
    cell_type = np.asarray(cell_type, np.int64)
    n_per_type = np.bincount(cell_type, minlength=n_types)
    pairs = np.unique(np.asarray(cell, np.int64) * n_features + np.asarray(feature, np.int64))
    counts = np.zeros((n_features, n_types), np.int64)
    np.add.at(counts, (pairs % n_features, cell_type[pairs // n_features]), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_per_type > 0, counts / np.maximum(n_per_type, 1), np.nan)


def _labels(run: RunDir, column: str | None) -> tuple[str, pd.Series] | None:
    """(column, labels indexed by .h5ad row) from the run's input data, or None."""
    import anndata as ad

    data = run.recorded_path("extract", "data_path")
    if not data:
        return None
    try:
        adata = ad.read_h5ad(data, backed="r")
    except (OSError, ValueError):
        return None
    try:
        cols = [column] if column else [c for c in CELL_TYPE_COLUMNS if c in adata.obs]
        if not cols or cols[0] not in adata.obs:
            return None
        return cols[0], pd.Series(adata.obs[cols[0]].astype(str).to_numpy())
    finally:
        adata.file.close()


def cell_type_activity(run: RunDir, feats: pd.DataFrame, column: str | None, max_cells: int,
                       seed: int, batch_size: int = 8192) -> CellTypeActivity | None:
    """Activity per cell type of the features ``feats`` (columns layer, feature) of one run.

    None when ``column`` is ``''``, or the run has no completed extract/train-sae, or its data
    has no cell-type column.
    """
    if column == "" or not len(feats) or not (run.is_complete("extract") and run.is_complete("train-sae")):
        return None
    found = _labels(run, column)
    if found is None:
        return None
    import torch

    from ..activations import ActivationStore
    from ..sae import load_saes

    col, labels = found
    store = ActivationStore(run)
    cells = store.cells()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(cells, size=min(max_cells, len(cells)), replace=False))
    types, type_of_sample = np.unique(labels.iloc[sample].to_numpy(), return_inverse=True)
    cell_pos = store.cell_index()
    rows = np.flatnonzero(np.isin(cell_pos, sample))
    layers = sorted(set(int(x) for x in feats["layer"]) & set(store.layers))
    saes = load_saes(run.path, layers=layers) if layers else {}
    activity: dict[int, dict[int, np.ndarray]] = {}
    for layer, sae in saes.items():
        want = np.unique(feats.loc[feats["layer"] == layer, "feature"].to_numpy(np.int64))
        cell_list, feat_list = [], []
        with torch.no_grad():
            for acts, cell, _ in store.iter_batches(layer, batch_size, rows=rows):
                values, idx = sae.encode_topk(torch.from_numpy(acts))
                fired = (values > 0).numpy()
                pos, slot = np.nonzero(fired)
                cell_list.append(np.searchsorted(sample, cell[pos]))
                feat_list.append(idx.numpy()[pos, slot])
        cell_i = np.concatenate(cell_list) if cell_list else np.zeros(0, np.int64)
        feat_i = np.concatenate(feat_list) if feat_list else np.zeros(0, np.int64)
        frac = fire_fraction_by_type(cell_i, feat_i, type_of_sample, len(types), sae.d_sae)
        activity[layer] = {int(f): frac[f] for f in want if f < frac.shape[0]}
    return CellTypeActivity(col, [str(t) for t in types], np.bincount(type_of_sample, minlength=len(types)).tolist(),
                            activity)
