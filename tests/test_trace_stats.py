"""Tracer statistics: accumulators, merges, edge rules (pure functions, hand-computed values)."""

import numpy as np
import pytest

from sccircuits.config import from_dict, to_dict
from sccircuits.errors import ConfigError
from sccircuits.trace import Accumulators, PairStats, Thresholds, TraceConfig, build_tables, parse_feature_spec
from sccircuits.trace.edges import consistency, consistency_nonzero


def test_pair_stats_hand_computed():
    # slot 0 gets cells [1, -1], [3, 0]; slot 2 gets [2, 0]; slot 1 nothing
    obs = np.array([[1.0, -1.0], [2.0, 0.0], [3.0, 0.0]])
    ps = PairStats.from_observations(np.array([0, 2, 0]), obs, n_slots=3)
    assert ps.n.tolist() == [2, 0, 1]
    np.testing.assert_allclose(ps.mean[0], [2.0, -0.5])
    np.testing.assert_allclose(ps.m2[0], [2.0, 0.5])  # (1-2)^2+(3-2)^2, (-1+.5)^2+(0+.5)^2
    assert ps.pos[0].tolist() == [2, 0] and ps.neg[0].tolist() == [0, 1] and ps.zero[0].tolist() == [0, 1]
    np.testing.assert_allclose(ps.sd()[0], [np.sqrt(2.0), np.sqrt(0.5)])
    assert np.isnan(ps.sd()[2]).all()  # n = 1


def test_merge_of_parts_equals_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    slots = rng.integers(0, 3, size=40)
    whole = PairStats.from_observations(slots, x, 3)
    a = PairStats.from_observations(slots[:17], x[:17], 3)
    b = PairStats.from_observations(slots[17:], x[17:], 3)
    merged = PairStats.empty(3, 5).merge(a).merge(b)
    assert merged.n.tolist() == whole.n.tolist()
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-12)
    assert (merged.pos == whole.pos).all() and (merged.zero == whole.zero).all()
    # merging with an empty accumulator changes nothing, bit for bit
    again = PairStats.empty(3, 5).merge(whole)
    assert (again.mean == whole.mean).all() and (again.m2 == whole.m2).all()


def test_consistency_definitions():
    # n = 5: 2 positive, 1 negative, 2 zero: reference counts zeros as non-positive -> 3/5
    assert consistency(np.array([2]), np.array([5]))[0] == pytest.approx(0.6)
    # nonzero: 2 of the 3 nonzero agree with a positive mean; 1 of 3 with a negative mean
    assert consistency_nonzero(np.array([2]), np.array([1]), np.array([0.1]))[0] == pytest.approx(2 / 3)
    assert consistency_nonzero(np.array([2]), np.array([1]), np.array([-0.1]))[0] == pytest.approx(1 / 3)
    assert np.isnan(consistency_nonzero(np.array([0]), np.array([0]), np.array([0.0]))[0])


def _acc_from(obs_by_slot, n_targets, features=(7, 9)):
    acc = Accumulators.empty({0: np.array(features)}, {0: [2]}, {2: n_targets})
    slots = np.concatenate([[s] * len(v) for s, v in obs_by_slot.items()])
    x = np.concatenate([np.asarray(v, float) for v in obs_by_slot.values()])
    acc.pairs[("real", 0, 2)] = PairStats.from_observations(slots, x, len(features))
    acc.active[0] = np.array([len(obs_by_slot.get(i, [])) for i in range(len(features))])
    return acc


def test_edges_thresholds_cap_and_q():
    # slot 0 (feature 7), 4 cells; targets: 0 strong negative, 1 strong positive, 2 weak, 3 all zero
    obs = {0: [[-1.0, 2.0, 0.1, 0.0], [-1.2, 2.2, -0.1, 0.0], [-0.9, 1.9, 0.05, 0.0], [-1.1, 2.1, -0.02, 0.0]]}
    acc = _acc_from(obs, 4)
    edges, feats, null = build_tables(acc, Thresholds(min_cells=2, top_per_layer=1), "m")
    assert edges["target_feature"].tolist() == [0, 1]
    assert edges["source_feature"].tolist() == [7, 7]
    x = np.array(obs[0])[:, 0]
    assert edges.loc[0, "cohens_d"] == pytest.approx(x.mean() / x.std(ddof=1))
    assert edges.loc[0, "consistency"] == 1.0 and edges.loc[0, "n_cells"] == 4
    # the cap keeps the larger |d| only
    y = np.array(obs[0])[:, 1]
    keep = 0 if abs(x.mean() / x.std(ddof=1)) > abs(y.mean() / y.std(ddof=1)) else 1
    assert edges["in_cap"].tolist() == [keep == 0, keep == 1]
    # BH over the 3 valid tests (the all-zero target has sd 0 and is not a test)
    from scipy import stats as st
    from statsmodels.stats.multitest import multipletests

    data = np.array(obs[0])[:, :3]
    p = [st.ttest_1samp(data[:, j], 0).pvalue for j in range(3)]
    q = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(edges["p_value"], p[:2], rtol=1e-8)
    np.testing.assert_allclose(edges["q_value"], q[:2], rtol=1e-8)
    row = feats[(feats.source_feature == 7)].iloc[0]
    assert row.n_tests == 3 and row.n_edges == 2 and row.n_edges_in_cap == 1 and row.distance == 2
    assert feats[feats.source_feature == 9].iloc[0].cells_active == 0
    # uncapped: both in the cap; stricter threshold: none
    assert build_tables(acc, Thresholds(min_cells=2, top_per_layer=0), "m")[0]["in_cap"].all()
    assert len(build_tables(acc, Thresholds(min_cells=5), "m")[0]) == 0  # min n


def test_nonzero_consistency_option():
    # target 0: positive in 3 cells, zero in 3 -> reference consistency max(3, 3)/6 = 0.5 (zeros
    # count as non-positive) fails 0.7, while the nonzero consistency is 3/3 = 1 and passes
    obs = {0: [[1.0], [1.1], [0.9], [0.0], [0.0], [0.0]]}
    acc = _acc_from(obs, 1)
    assert len(build_tables(acc, Thresholds(min_cells=2), "m")[0]) == 0
    nz = build_tables(acc, Thresholds(min_cells=2, consistency_kind="nonzero"), "m")[0]
    assert nz["target_feature"].tolist() == [0]
    assert nz.loc[0, "consistency"] == 0.5 and nz.loc[0, "consistency_nonzero"] == 1.0


def test_accumulators_npz_roundtrip(tmp_path):
    acc = _acc_from({0: [[1.0, 2.0], [3.0, -1.0]], 1: [[0.5, 0.0]]}, 2)
    acc.counters["ablations"] = 3
    acc.save(tmp_path / "a.npz", fingerprint=np.asarray("abc"))
    back, extra = Accumulators.load(tmp_path / "a.npz")
    assert str(extra["fingerprint"]) == "abc" and back.counters == {"ablations": 3}
    for name in ("n", "mean", "m2", "pos", "neg", "zero"):
        assert (getattr(back.pairs[("real", 0, 2)], name) == getattr(acc.pairs[("real", 0, 2)], name)).all()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert "real_s0_t2_mean" in z.files


def test_config_and_feature_spec():
    assert parse_feature_spec("0:309,460;5:12,80") == {0: [309, 460], 5: [12, 80]}
    with pytest.raises(ConfigError):
        parse_feature_spec("0:a")
    with pytest.raises(ConfigError):
        TraceConfig(shard="3/3")
    with pytest.raises(ConfigError):
        TraceConfig(selection="best")
    with pytest.raises(ConfigError, match="--top-per-layer 0 contradicts --compat reference"):
        TraceConfig(compat="reference", top_per_layer=0)
    cfg = TraceConfig(compat="reference", tokenization="reference", top_per_layer=50)
    assert cfg.tokenization == "reference" and cfg.top_per_layer == 50 and cfg.min_cells == 2
    assert from_dict(TraceConfig, to_dict(cfg)) == cfg
