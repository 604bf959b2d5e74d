"""Permutation inference: agreement with a direct loop, seeding, chunking, validity under the null."""

import numpy as np
import pytest
import statsmodels.api as sm

from stats.permutation import _permutations, freedman_lane_t, permutation_max_t


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    n = 24
    X = np.column_stack([np.r_[np.ones(12), np.zeros(12)], np.r_[np.zeros(12), np.ones(12)], rng.normal(0, 1, n)])
    Y = rng.standard_normal((n, 5, 6, 4)) + 0.8 * X[:, 2, None, None, None]
    return X, Y, np.array([1.0, -1.0, 0.0])


def test_freedman_lane_matches_explicit_refits(data):
    X, Y, c = data
    flat = Y.reshape(Y.shape[0], -1)
    perms = _permutations(X.shape[0], 5, seed=3)
    T = freedman_lane_t(flat, X, c, perms)
    Z = np.column_stack([X[:, 0] + X[:, 1], X[:, 2]])  # nuisance space of c: the mean and the covariate
    for b, P in enumerate(perms):
        for v in (0, 7, 50):
            y = flat[:, v]
            fit_z = sm.OLS(y, Z).fit()
            ystar = fit_z.resid[P] + fit_z.fittedvalues
            t = float(np.squeeze(sm.OLS(ystar, X).fit().t_test(c).tvalue))
            assert T[b, v] == pytest.approx(t, rel=1e-8)
    # identity permutation gives the ordinary T
    t0 = float(np.squeeze(sm.OLS(flat[:, 3], X).fit().t_test(c).tvalue))
    assert T[0, 3] == pytest.approx(t0, rel=1e-10)


def test_seeded_and_independent_of_blocking(data):
    X, Y, c = data
    a = permutation_max_t(Y, X, c, n_perm=200, seed=7, block_voxels=1000)
    b = permutation_max_t(Y, X, c, n_perm=200, seed=7, block_voxels=17, batch=33)
    np.testing.assert_allclose(a.max_null, b.max_null, rtol=1e-12)
    np.testing.assert_array_equal(a.p_fwe, b.p_fwe)
    c2 = permutation_max_t(Y, X, c, n_perm=200, seed=8)
    assert not np.array_equal(a.max_null, c2.max_null)
    assert (a.p_fwe >= 1 / 200).all() and (a.p_fwe <= 1).all()


def test_fwe_controlled_under_the_null():
    """Over repeated null data sets, P(min p_FWE <= 0.05) stays near 5 %."""
    rng = np.random.default_rng(0)
    n = 20
    X = np.column_stack([np.r_[np.ones(10), np.zeros(10)], np.r_[np.zeros(10), np.ones(10)], rng.normal(0, 1, n)])
    c = np.array([1.0, -1.0, 0.0])
    hits = 0
    trials = 60
    for i in range(trials):
        Y = rng.standard_normal((n, 200)) + 2.0 * X[:, 2:3]  # strong nuisance, no group effect
        r = permutation_max_t(Y, X, c, n_perm=100, seed=i)
        hits += np.nanmin(r.p_fwe) <= 0.05
    assert hits / trials < 0.15


def test_detects_a_real_effect(data):
    X, Y, c = data
    Y = Y.copy()
    Y[:12, 2, 3, 1] += 3.0
    r = permutation_max_t(Y, X, c, n_perm=500, seed=1)
    assert r.p_fwe[2, 3, 1] < 0.05
    assert np.nanargmax(r.t_obs) == np.ravel_multi_index((2, 3, 1), Y.shape[1:])
