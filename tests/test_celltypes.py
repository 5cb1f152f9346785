"""Per-cell-type activity of SAE features and its Kruskal-Wallis test."""

from __future__ import annotations

import numpy as np
import pytest

from sccircuits.celltypes import CellTypeConfig, activity_table, kruskal_by_type, per_cell_activity
from sccircuits.errors import ConfigError
from sccircuits.stats import bh_fdr


def test_per_cell_activity_is_the_mean_over_positions():
    codes = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    cells = np.array([0, 0, 2])
    got = per_cell_activity(codes, cells, 3)
    np.testing.assert_allclose(got, [[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]])


def _sparse_activity(rng, n, n_feat):
    """Zero-inflated activities with per-feature popularity (many zeros, like SAE features)."""
    fire = rng.random((n, n_feat)) < rng.uniform(0.05, 0.6, n_feat)
    return fire * rng.gamma(2.0, 1.0, (n, n_feat))


def test_kruskal_finds_planted_cell_type_features_and_not_null_ones():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["B", "NK", "T"]), [40, 30, 80])
    act = _sparse_activity(rng, len(labels), 200)
    planted = np.arange(20)
    act[np.ix_(labels == "NK", planted)] += 1.5  # these features fire more in NK cells
    res = kruskal_by_type(act, labels)
    q = bh_fdr(res["p_value"].to_numpy())
    assert (q[planted] < 0.05).mean() >= 0.9
    assert (res["top_cell_type"].to_numpy()[planted] == "NK").all()
    false = (q[20:] < 0.05).mean()
    assert false <= 0.05  # unplanted features (same popularity spread) are not called
    assert res.loc[planted, "epsilon_sq"].mean() > res.loc[20:, "epsilon_sq"].mean()


def test_kruskal_null_is_calibrated_on_popularity_confounded_features():
    """No cell-type signal, but features differ in how often they fire and the types differ in
    size: p-values must stay uniform (share below 0.05 close to 5%)."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array(["a", "b", "c", "d"]), [10, 20, 60, 110])
    p = kruskal_by_type(_sparse_activity(rng, len(labels), 1000), labels)["p_value"].to_numpy()
    assert 0.02 <= (p < 0.05).mean() <= 0.08


def test_constant_feature_is_not_evidence_and_activity_table():
    labels = np.array(["x", "x", "y", "y"])
    act = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 3.0], [0.0, 3.0]])
    res = kruskal_by_type(act, labels)
    assert res.loc[0, "p_value"] == 1.0 and res.loc[0, "H"] == 0.0
    assert res.loc[1, "top_cell_type"] == "y" and res.loc[1, "rest_mean"] == 1.0
    t = activity_table(act, labels)
    assert t[(t.cell_type == "y") & (t.feature == 1)]["mean_activity"].item() == 3.0
    assert t[(t.cell_type == "x") & (t.feature == 0)]["frac_active"].item() == 0.0


def test_config_validation():
    with pytest.raises(ConfigError):
        CellTypeConfig(min_cells=1)
    with pytest.raises(ConfigError):
        CellTypeConfig(label_column="")
    with pytest.raises(ConfigError, match="COLUMN=VALUE"):
        CellTypeConfig(subset="pbmc3k")
