import numpy as np
import pytest
from scipy.stats import fisher_exact

from sccircuits import stats


def test_bh_matches_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.5, 0.001, np.nan])
    ok = ~np.isnan(p)
    expected = multipletests(p[ok], method="fdr_bh")[1]
    q = stats.bh_fdr(p)
    np.testing.assert_allclose(q[ok], expected)
    assert np.isnan(q[-1])


def test_bh_hand_computed():
    # p sorted: 0.01, 0.02, 0.03 with n=3 -> 0.03, 0.03, 0.03
    np.testing.assert_allclose(stats.bh_fdr([0.02, 0.01, 0.03]), [0.03, 0.03, 0.03])


def test_hypergeom_hand_computed_and_fisher():
    # background 10, term 4, set 3, overlap 3: C(4,3)/C(10,3) = 4/120
    assert stats.hypergeom_sf(3, 3, 4, 10) == pytest.approx(4 / 120)
    # overlap 2: (C(4,2)C(6,1) + C(4,3)) / C(10,3) = (36 + 4) / 120
    assert stats.hypergeom_sf(2, 3, 4, 10) == pytest.approx(40 / 120)
    # equals one-sided Fisher on [[k, set-k], [term-k, bg-set-term+k]]
    k, s, t, n = 5, 20, 40, 500
    _, p = fisher_exact([[k, s - k], [t - k, n - s - t + k]], alternative="greater")
    assert stats.hypergeom_sf(k, s, t, n) == pytest.approx(p)


def test_paired_stats_and_permutation_p():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    d = stats.paired_d(x.mean(), x.std(ddof=1))
    assert d == pytest.approx(3.0 / np.sqrt(14 / 3))
    from scipy.stats import ttest_1samp

    assert stats.paired_t_p(x.mean(), x.std(ddof=1), 4) == pytest.approx(ttest_1samp(x, 0).pvalue)
    assert np.isnan(stats.paired_t_p(1.0, 0.0, 5))
    assert stats.permutation_p(5.0, np.array([1, 2, 5, 7])) == pytest.approx(3 / 5)


def test_welford_merge_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=5)
    n, mean, m2 = stats.welford_merge(7, a.mean(), a.var() * 7, 5, b.mean(), b.var() * 5)
    allx = np.concatenate([a, b])
    assert n == 12 and mean == pytest.approx(allx.mean()) and m2 == pytest.approx(allx.var() * 12)
