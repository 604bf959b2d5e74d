"""Permutation inference: agreement with a direct loop, seeding, chunking, validity under the null."""

import numpy as np
import pytest
import statsmodels.api as sm

from ferritin.stats.permutation import _permutations, freedman_lane_t, permutation_max_t


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


# ---- spatial statistics: cluster mass and TFCE -------------------------------------------

from scipy import ndimage  # noqa: E402

from ferritin.stats.permutation import cluster_masses, permutation_cluster, tfce  # noqa: E402


def _smooth_images(rng, n, shape, sigma=1.5):
    Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(n)])
    return Y / Y.std()


def test_tfce_equals_nilearn():
    from nilearn.mass_univariate._utils import calculate_tfce

    rng = np.random.default_rng(4)
    img = 2 * _smooth_images(rng, 1, (24, 25, 26), 2.0)[0]
    steps = np.linspace(0, img.max(), round(img.max() / 0.1) + 1)[1:]  # nilearn's grid of thresholds
    ref = calculate_tfce(img[..., None], ndimage.generate_binary_structure(3, 3), dh=0.1, two_sided_test=False)
    np.testing.assert_allclose(tfce(img, thresholds=steps), ref[..., 0], rtol=1e-12)
    with pytest.raises(ValueError, match="connectivity"):
        tfce(img, connectivity=4)


def test_cluster_masses_by_hand():
    img = np.zeros((6, 6, 6))
    img[1, 1, 1:3] = [3.0, 4.0]  # one cluster, mass 7
    img[4, 4, 4] = 5.0  # another, mass 5
    img[1, 3, 1] = 2.0  # below the threshold
    lab, masses = cluster_masses(img, 2.5)
    assert sorted(masses[1:]) == [5.0, 7.0] and lab[1, 1, 1] == lab[1, 1, 2] != lab[4, 4, 4]


def test_cluster_permutation_is_seeded_batch_free_and_agrees_with_max_t():
    rng = np.random.default_rng(2)
    n, shape = 16, (10, 11, 9)
    X = np.column_stack([np.r_[np.ones(8), np.zeros(8)], np.r_[np.zeros(8), np.ones(8)], rng.normal(0, 1, n)])
    c = np.array([1.0, -1.0, 0.0])
    Y = _smooth_images(rng, n, shape)
    mask = np.ones(shape, bool)
    mask[0] = False
    a = permutation_cluster(Y, X, c, mask, n_perm=40, seed=3, cluster_forming_t=2.0, tfce_dh=0.2, batch=7)
    b = permutation_cluster(Y, X, c, mask, n_perm=40, seed=3, cluster_forming_t=2.0, tfce_dh=0.2, batch=40,
                            block_voxels=100)
    np.testing.assert_allclose(a.max_mass_null, b.max_mass_null, rtol=1e-12)
    np.testing.assert_allclose(a.max_tfce_null, b.max_tfce_null, rtol=1e-12)
    np.testing.assert_array_equal(a.tfce_p_fwe, b.tfce_p_fwe)
    voxel = permutation_max_t(Y, X, c, mask=mask, n_perm=40, seed=3)
    np.testing.assert_allclose(a.max_t_null, voxel.max_null, rtol=1e-10)
    np.testing.assert_array_equal(np.isnan(a.t_obs), ~mask)


def test_cluster_permutation_on_dask_workers_is_identical_to_in_process(client):
    rng = np.random.default_rng(5)
    n, shape = 12, (9, 10, 8)
    X = np.column_stack([np.r_[np.ones(6), np.zeros(6)], np.r_[np.zeros(6), np.ones(6)], rng.normal(0, 1, n)])
    c = np.array([1.0, -1.0, 0.0])
    Y = _smooth_images(rng, n, shape)
    Y[:6, 3:6, 3:6, 3:6] += 1.5  # an effect, so that the observed clusters are not empty
    mask = np.ones(shape, bool)
    here = permutation_cluster(Y, X, c, mask, n_perm=30, seed=4, cluster_forming_t=2.0, tfce_dh=0.2, batch=8)
    there = permutation_cluster(Y, X, c, mask, n_perm=30, seed=4, cluster_forming_t=2.0, tfce_dh=0.2, batch=8,
                                client=client)
    assert here.cluster_mass.size > 1
    for name in ("t_obs", "max_t_null", "p_fwe", "cluster_labels", "cluster_mass", "cluster_p_fwe",
                 "max_mass_null", "tfce_obs", "tfce_p_fwe", "max_tfce_null"):
        np.testing.assert_array_equal(getattr(here, name), getattr(there, name), err_msg=name)


@pytest.mark.slow
def test_cluster_and_tfce_find_a_planted_blob_and_nothing_else():
    rng = np.random.default_rng(9)
    n, shape = 20, (14, 14, 12)
    X = np.column_stack([np.r_[np.ones(10), np.zeros(10)], np.r_[np.zeros(10), np.ones(10)], rng.normal(0, 1, n)])
    c = np.array([1.0, -1.0, 0.0])
    Y = _smooth_images(rng, n, shape)
    blob = np.zeros(shape)
    blob[3:7, 3:7, 3:6] = 1.0
    Y[:10] += 2.0 * ndimage.gaussian_filter(blob, 1.0)[None]
    r = permutation_cluster(Y, X, c, np.ones(shape, bool), n_perm=200, seed=0, cluster_forming_t=2.5, tfce_dh=0.1)
    centre = (5, 5, 4)
    assert r.cluster_p_fwe[r.cluster_labels[centre]] < 0.05
    assert r.tfce_p_fwe[centre] < 0.05
    far = np.zeros(shape, bool)
    far[10:, 10:, :] = True
    assert (r.tfce_p_fwe[far] > 0.05).all()


@pytest.mark.slow
def test_cluster_fwe_controlled_under_the_null():
    rng = np.random.default_rng(1)
    n, shape = 16, (10, 10, 8)
    X = np.column_stack([np.r_[np.ones(8), np.zeros(8)], np.r_[np.zeros(8), np.ones(8)], rng.normal(0, 1, n)])
    c = np.array([1.0, -1.0, 0.0])
    trials, hits_mass, hits_tfce = 40, 0, 0
    for i in range(trials):
        Y = _smooth_images(rng, n, shape) + 1.5 * X[:, 2, None, None, None]
        r = permutation_cluster(Y, X, c, np.ones(shape, bool), n_perm=50, seed=i, cluster_forming_t=2.0, tfce_dh=0.2)
        hits_mass += bool(np.nanmin(r.cluster_p_fwe, initial=1.0) <= 0.05)
        hits_tfce += bool(np.nanmin(r.tfce_p_fwe) <= 0.05)
    # 5 % expected; P(>= 7 of 40 | 5 %) = 0.014
    assert hits_mass <= 6 and hits_tfce <= 6


def test_single_precision_products_give_the_same_inference(data):
    X, Y, c = data
    a = permutation_max_t(Y, X, c, n_perm=300, seed=4)
    b = permutation_max_t(Y, X, c, n_perm=300, seed=4, dtype=np.float32)
    np.testing.assert_allclose(b.max_null, a.max_null, rtol=1e-4)
    assert np.abs(b.p_fwe - a.p_fwe).max() <= 1 / 300
