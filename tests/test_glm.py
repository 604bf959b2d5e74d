"""Voxelwise GLM against statsmodels and nilearn, design matrix checks."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from ferritin.stats.design import design_matrix, parse_contrast
from ferritin.stats.glm import f_contrast, fit_glm, standardized_residuals, t_contrast


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(4)
    n = 30
    table = pd.DataFrame({
        "group": ["ALS"] * 14 + ["NC"] * 16,
        "age": rng.normal(50, 9, n),
        "tiv": rng.normal(1500, 120, n),
        "sex": rng.choice(["M", "F"], n),
    }, index=[f"sub-{i:02d}" for i in range(n)])
    shape = (7, 8, 6)
    Y = rng.standard_normal((n, *shape)) + 0.02 * table["age"].to_numpy()[:, None, None, None]
    Y[:14, 2:4, 2:5, 1:3] += 1.0
    return table, Y


def test_design_columns_and_centering(cohort):
    table, _ = cohort
    d = design_matrix(table, groups=["ALS", "NC"], covariates=["tiv", "age", "sex"])
    assert d.columns == ("ALS", "NC", "tiv", "age", "sex[M]")
    np.testing.assert_allclose(d.X[:, 2:].mean(axis=0), 0, atol=1e-9)
    np.testing.assert_array_equal(d.contrast("ALS - NC"), [1, -1, 0, 0, 0])
    np.testing.assert_array_equal(d.contrast({"NC": 1}), [0, 1, 0, 0, 0])
    assert d.df == 30 - 5


def test_design_errors(cohort):
    table, _ = cohort
    t = table.copy()
    t.loc["sub-03", "age"] = np.nan
    with pytest.raises(ValueError, match="missing for sub-03"):
        design_matrix(t, covariates=["age"])
    t = table.copy()
    t["age2"] = 2 * t["age"]
    with pytest.raises(ValueError, match="rank deficient.*age"):
        design_matrix(t, covariates=["age", "age2"])
    with pytest.raises(ValueError, match="has no subjects"):
        design_matrix(table, groups=["ALS", "PD"])
    with pytest.raises(ValueError, match="not a design column"):
        parse_contrast("ALS - PD", ["ALS", "NC"])


def test_matches_statsmodels_voxel_by_voxel(cohort):
    table, Y = cohort
    d = design_matrix(table, groups=["ALS", "NC"], covariates=["tiv", "age"])
    Yd = da.from_array(Y, chunks=(10, 4, 3, 6))  # voxel chunks; subject axis gets merged
    fit = fit_glm(Yd, d.X)
    c = d.contrast("ALS - NC")
    T = t_contrast(fit, c).compute()
    F = f_contrast(fit, np.array([[1, -1, 0, 0], [0, 0, 0, 1.0]])).compute()
    beta = fit.beta.compute()
    for idx in [(0, 0, 0), (2, 3, 1), (6, 7, 5), (3, 2, 2)]:
        y = Y[(slice(None), *idx)]
        res = sm.OLS(y, d.X).fit()
        np.testing.assert_allclose(beta[(slice(None), *idx)], res.params, rtol=1e-6, atol=1e-10)
        assert T[idx] == pytest.approx(float(np.squeeze(res.t_test(c).tvalue)), rel=1e-6)
        assert F[idx] == pytest.approx(float(np.squeeze(res.f_test(np.array([[1, -1, 0, 0], [0, 0, 0, 1.0]])).fvalue)), rel=1e-6)
        assert fit.df == int(res.df_resid)


def test_matches_nilearn_second_level(cohort):
    import nibabel as nib
    from nilearn.glm.second_level import SecondLevelModel

    table, Y = cohort
    d = design_matrix(table, groups=["ALS", "NC"], covariates=["age"])
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    imgs = [nib.Nifti1Image(Y[i].astype(np.float64), aff) for i in range(Y.shape[0])]
    mask = nib.Nifti1Image(np.ones(Y.shape[1:], np.uint8), aff)
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=None).fit(imgs, design_matrix=d.frame())
    t_nl = model.compute_contrast([1, -1, 0], second_level_stat_type="t", output_type="stat").get_fdata()
    T = t_contrast(fit_glm(Y, d.X), [1, -1, 0]).compute()
    np.testing.assert_allclose(T, t_nl, rtol=1e-6, atol=1e-8)


def test_standardized_residuals_and_mask(cohort):
    table, Y = cohort
    d = design_matrix(table, covariates=["age"])
    mask = np.zeros(Y.shape[1:], bool)
    mask[1:6, 1:7, 1:5] = True
    fit = fit_glm(Y, d.X, mask=mask)
    r = standardized_residuals(fit).compute()
    assert np.isnan(r[:, 0]).all() and np.isfinite(r[:, mask]).all()
    # sum of squares of standardized residuals equals the error df
    np.testing.assert_allclose((r[:, mask] ** 2).sum(axis=0), fit.df, rtol=1e-9)
    assert np.isnan(t_contrast(fit, [1, -1, 0]).compute()[0, 0, 0])


@pytest.mark.slow
def test_chunking_does_not_change_results(cohort):
    table, Y = cohort
    d = design_matrix(table, covariates=["tiv"])
    a = t_contrast(fit_glm(da.from_array(Y, chunks=(30, 7, 8, 6)), d.X), [1, -1, 0]).compute()
    b = t_contrast(fit_glm(da.from_array(Y, chunks=(5, 2, 3, 2)), d.X), [1, -1, 0]).compute()
    np.testing.assert_array_equal(a, b)


def test_two_fits_on_one_cluster_do_not_share_results(client):
    """Each fit has its own task keys: a second model on the same scheduler
    (other data, other shape) must not be answered from the first one's."""
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(8), np.repeat([0.0, 1.0], 4)])
    a = rng.normal(size=(8, 6, 5, 4))
    b = rng.normal(size=(8, 3, 3, 3))
    t_a = client.compute(t_contrast(fit_glm(a, X), [0, 1])).result()
    t_b = client.compute(t_contrast(fit_glm(b, X), [0, 1])).result()
    assert t_a.shape == (6, 5, 4) and t_b.shape == (3, 3, 3)
    np.testing.assert_allclose(t_b, t_contrast(fit_glm(b, X), [0, 1]).compute(scheduler="sync"))
