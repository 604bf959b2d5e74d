"""stats.rft against SPM12's own numbers (SPM12 r7771 on deterministic inputs, kept in tests/data/spm12)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ferritin.stats import rft
from ferritin.stats.smoothness import est_smoothness

REF = Path(__file__).resolve().parent / "data" / "spm12"


def _load(name):
    return json.loads((REF / name).read_text())["rows"]


def _df(row):
    return [math.inf if v == "Infinity" else float(v) for v in row["df"]]


def test_ec_density_matches_spm():
    for row in _load("a_pvalues/spm_ECdensity.json"):
        got = rft.ec_density(row["STAT"], np.array(row["u"]), _df(row))
        want = np.array(row["EC_rows_d0_to_d3_cols_u"], dtype=float)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=f"{row['STAT']} {row['df']}")
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-300)


def test_p_rf_grid_matches_spm():
    rows = _load("a_pvalues/spm_P_grid.json")
    assert len(rows) > 400
    checked = 0
    for row in rows:
        df, R, u, k, n = _df(row), row["R"], row["u"], row["k_resels"], row["n"]
        ref = row["spm_P_RF_c1"]
        got = rft.p_rf(1, k, u, df, row["STAT"], R, n)
        for name in ("P", "p", "Ec", "Ek"):
            want = ref[name]
            if want is None or (isinstance(want, str)):
                assert np.isnan(getattr(got, name)), (row, name)
                continue
            assert abs(getattr(got, name) - want) <= 1e-10 * max(1.0, abs(want)), (row, name, getattr(got, name), want)
        want3 = row["spm_P_RF_c3_P"]
        got3 = rft.p_rf(3, k, u, df, row["STAT"], R, n).P
        if isinstance(want3, (int, float)):
            assert abs(got3 - want3) <= 1e-10, (row, got3, want3)
        s = row["spm_P_c1_S"]
        got_s = rft.p_corrected(1, k, u, df, row["STAT"], R, n, S=s["S"])
        if isinstance(s["P"], (int, float)):
            assert abs(got_s - s["P"]) <= 1e-10, (row, got_s, s["P"])
        unc = rft.p_rf(1, 0, u, df, row["STAT"], [1], n).P
        assert abs(unc - row["uncorrected_p_spm_P_R1"]) <= 1e-10
        checked += 1
    assert checked == len(rows)


def test_fwe_thresholds_match_spm():
    for row in _load("a_pvalues/spm_uc.json"):
        df = _df(row)
        u_rf = rft.threshold_fwe(row["alpha"], df, row["STAT"], row["R"])
        assert abs(u_rf - row["spm_uc_RF"]) < 1e-6, row
        u = rft.threshold_fwe(row["alpha"], df, row["STAT"], row["R"], S=row["S"])
        assert abs(u - row["spm_uc"]) < 1e-6, row
        bonf = float(rft.height_threshold(row["alpha"] / row["S"], df, row["STAT"]))
        assert abs(bonf - row["spm_uc_Bonf"]) < 1e-6, row


def test_resels_of_masks_are_exact():
    for row in _load("b_resels/spm_resels_vol.json"):
        mask = np.load(REF / "inputs" / "masks" / f"{row['mask']}.npy")
        got = rft.resel_counts(mask, row["FWHM_vox"])
        np.testing.assert_allclose(got, row["spm_resels_vol_array"], rtol=1e-12, atol=1e-12, err_msg=row["mask"])


def test_analytic_svc_resels():
    for row in _load("b_resels/spm_resels_analytic.json"):
        fwhm = [math.inf if v == "Infinity" else v for v in row["FWHM_vox"]]
        if row["SPACE"] == "S":
            got = rft.sphere_resels(row["D_mm"], fwhm, row["VOX_mm"])
        else:
            got = rft.box_resels(row["D_mm"], fwhm, row["VOX_mm"])
        np.testing.assert_allclose(got, row["R"], rtol=1e-12, atol=1e-12, err_msg=str(row))


@pytest.mark.parametrize("case", ["S1_iso_nan", "S1_iso_nan_no_ndf", "S3_iso_zero", "S5_2d_nan"])
def test_smoothness_matches_spm(case):
    row = next(r for r in json.loads((REF / "c_smoothness.json").read_text())["rows"] if r["case"] == case)
    src = "S5_2d_nan" if case.startswith("S5") else "S1_iso_nan"
    z = np.load(REF / "inputs" / "smooth" / f"{src}.npz")
    resid, mask = z["resid"], z["mask"]
    if case == "S3_iso_zero":
        resid = np.nan_to_num(resid, nan=0.0)
    ndf = None if row["ndf"] == "omitted" else row["ndf"]
    sm = est_smoothness(resid, mask, ndf)
    # Zero-outside residuals (not what SPM writes) agree to 3e-10 only: SPM's
    # sampler differs from exact differences against 0 in the last bits there.
    rtol = 1e-9 if case == "S3_iso_zero" else 1e-10
    np.testing.assert_allclose(sm.fwhm_vox, row["FWHM_vox"], rtol=rtol)
    np.testing.assert_allclose(sm.resels, row["R"], rtol=rtol)
    finite = np.isfinite(sm.rpv) & (mask > 0)
    assert finite.sum() == row["nvox_finite_RPV_in_mask"]
    assert abs(sm.rpv[finite].mean() - row["mean_finite_RPV_in_mask"]) < 1e-9 * row["mean_finite_RPV_in_mask"] * 10


def test_smoothness_of_known_gaussian_field():
    """A stationary field smoothed by FWHM f has estimated FWHM ~ f (no reference needed)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    f = 4.0
    imgs = np.stack([ndimage.gaussian_filter(rng.standard_normal((48, 48, 48)), f / 2.3548, mode="wrap")
                     for _ in range(12)])
    imgs /= imgs.std(axis=0, keepdims=True)
    sm = est_smoothness(imgs, np.ones((48, 48, 48)))
    np.testing.assert_allclose(sm.fwhm_vox, f, rtol=0.12)


def test_smoothness_does_not_depend_on_the_space_around_the_mask():
    """The estimate reads the mask and its forward neighbours only: embedding the same residuals and mask
    in a larger image (NaN around, as residual images are written) changes no bit of it.  The mask touches
    both z edges, and keeps its upper one in the larger image: forward differences stop there."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    shape = (20, 22, 18)
    imgs = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) for _ in range(8)])
    zz = np.indices(shape)
    mask = ((zz[0] - 10) ** 2 / 81 + (zz[1] - 11) ** 2 / 100 + (zz[2] - 8) ** 2 / 90) <= 1  # touches z = 0
    imgs = np.where(mask, imgs, np.nan)
    small = est_smoothness(imgs, mask)
    big_imgs = np.full((8, 31, 30, 25), np.nan)
    big_imgs[:, 5:25, 3:25, 7:] = imgs
    big_mask = np.zeros((31, 30, 25), bool)
    big_mask[5:25, 3:25, 7:] = mask
    big = est_smoothness(big_imgs, big_mask)
    np.testing.assert_array_equal(big.fwhm_vox, small.fwhm_vox)
    np.testing.assert_array_equal(big.resels, small.resels)
    np.testing.assert_array_equal(big.rpv[5:25, 3:25, 7:], small.rpv, strict=True)
    assert np.isnan(big.rpv[~big_mask]).all()


def test_input_checks():
    with pytest.raises(ValueError, match="stat"):
        rft.ec_density("Q", 3.0, (1, 20))
    with pytest.raises(ValueError, match="resel"):
        rft.p_rf(1, 0, 3.0, (1, 20), "T", [0, 0, 0, 0])
    with pytest.raises(ValueError, match="alpha"):
        rft.threshold_fwe(1.5, (1, 20), "T", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="fwhm"):
        rft.resel_counts(np.ones((3, 3, 3)), [1, 0, 1])
