"""Pure statistics of the CRISPRi validation against hand-computed values."""

import numpy as np
import pytest
from scipy.stats import fisher_exact

from sccircuits import stats
from sccircuits.validate import metrics


def test_log2_fold_change_with_pseudocount():
    assert metrics.log2_fold_change(3.9, 0.9, 0.1) == pytest.approx(2.0)
    assert metrics.log2_fold_change(0.0, 0.0, 0.1) == 0.0


def test_sign_bias_baseline_hand_computed():
    # 80% negative predictions, 70% negative observations -> 0.2*0.3 + 0.8*0.7 = 0.62
    assert metrics.sign_bias_baseline(0.2, 0.3) == pytest.approx(0.62)
    assert metrics.sign_bias_baseline(0.5, 0.9) == pytest.approx(0.5)


def test_accuracy_and_baseline_point_values():
    # 4 pairs: predicted signs + + - -, observed + - - -  -> correct 3/4
    d = np.array([1.0, 2.0, -1.0, -3.0])
    lfc = np.array([0.5, -0.2, -0.1, -1.0])
    res = metrics.directional_accuracy(d, lfc, ["A", "A", "B", "B"], n_boot=200, seed=1)
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["p_pred"] == pytest.approx(0.5)
    assert res["p_obs"] == pytest.approx(0.25)
    assert res["baseline"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.75)
    assert res["excess"] == pytest.approx(0.25)
    assert res["n_clusters"] == 2
    # with 2 clusters the bootstrap can only produce: A only (0.5), B only (1.0), both (0.75)
    assert 0.5 <= res["accuracy_ci_low"] <= res["accuracy"] <= res["accuracy_ci_high"] <= 1.0


def test_cluster_bootstrap_resamples_whole_clusters_and_is_seeded():
    per = np.array([[10, 10, 5, 5], [10, 0, 5, 5]], dtype=float)  # cluster 0 all right, 1 all wrong
    boot = metrics.bootstrap_clusters(per, 500, seed=3)
    acc = boot[:, 0]
    assert set(np.round(acc, 6)) <= {0.0, 0.5, 1.0}  # whole clusters only
    np.testing.assert_array_equal(boot, metrics.bootstrap_clusters(per, 500, seed=3))


def test_fisher_tables_match_scipy():
    predicted = np.array([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=bool)
    responsive = np.array([[1, 1, 0, 1, 0, 0, 0, 0]], dtype=bool)
    universe = np.array([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=bool)  # last gene outside
    a, b, c, d = metrics.fisher_tables(predicted, responsive, universe)
    assert (a[0], b[0], c[0], d[0]) == (2, 1, 1, 3)
    _, p = fisher_exact([[2, 1], [1, 3]], alternative="greater")
    assert stats.hypergeom_sf(a, a + b, a + c, a + b + c + d)[0] == pytest.approx(p)


def test_spearman_degenerate_inputs_are_nan():
    assert np.isnan(metrics.spearman([1, 2], [1, 2])[0])
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3])[0])
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
