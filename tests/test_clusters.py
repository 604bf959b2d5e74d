"""Cluster tables and SVC: known blobs, SPM's formulas, connectivity."""

import numpy as np
import pytest
from scipy import ndimage

from ferritin.stats import rft
from ferritin.stats.clusters import Inference, cluster_table, sphere_mask, svc_table


def _info(shape, fwhm=3.0, df=(1, 40)):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -np.array(shape) + 1.0
    mask = np.ones(shape, bool)
    R = rft.resel_counts(mask, [fwhm] * 3)
    return Inference(df, "T", np.array([fwhm] * 3), R, int(mask.sum()), aff), mask


def test_two_blobs_found_with_spm_pvalues():
    shape = (30, 30, 30)
    info, mask = _info(shape)
    stat = np.zeros(shape)
    stat[5:9, 5:9, 5:9] = 3.5
    stat[7, 7, 7] = 6.0
    stat[20:23, 20:23, 20:23] = 4.0
    stat[21, 21, 21] = 5.0
    u = float(rft.height_threshold(0.005, info.df, "T"))
    table = cluster_table(stat, mask, info, u)
    assert list(table["cluster"]) == [1, 2]
    first = table.iloc[0]
    assert first["T"] == 6.0 and first["cluster_voxels"] == 64 and first["cluster_mm3"] == 64 * 8
    assert first["p_fwe"] == pytest.approx(rft.p_corrected(1, 0, 6.0, info.df, "T", info.resels, S=info.n_voxels))
    K = 64 * info.v2r
    assert first["cluster_p_fwe"] == pytest.approx(rft.p_rf(1, K, u, info.df, "T", info.resels).P)
    # peak MNI coordinate from the affine
    np.testing.assert_allclose([first.x, first.y, first.z], info.affine[:3, :3] @ [7, 7, 7] + info.affine[:3, 3])
    # uncorrected p is SPM's 1 - exp(-p) form, and Z its equivalent
    assert first["p_unc"] == pytest.approx(1 - np.exp(-(rft.p_uncorrected(6.0, info.df, "T") + rft.EPS)))
    assert first["Z"] > 4


def test_extent_threshold_and_18_connectivity():
    shape = (20, 20, 20)
    info, mask = _info(shape)
    stat = np.zeros(shape)
    stat[2:4, 2:4, 2:4] = 5.0  # 8 voxels
    stat[10, 10, 10] = stat[11, 11, 10] = 5.0  # edge-connected: one 18-connected cluster
    stat[15, 15, 15] = stat[16, 16, 16] = 5.0  # corner only: two clusters under 18-connectivity
    table = cluster_table(stat, mask, info, u=3.0)
    sizes = sorted(table.groupby("cluster")["cluster_voxels"].first())
    assert sizes == [1, 1, 2, 8]
    table = cluster_table(stat, mask, info, u=3.0, k_voxels=3)
    assert list(table["cluster_voxels"].unique()) == [8]


def test_peaks_at_least_8mm_apart():
    shape = (40, 20, 20)
    info, mask = _info(shape)
    x = np.arange(shape[0])
    profile = 4 + np.cos(x / 1.2)  # ripples: many local maxima along x
    stat = np.broadcast_to(profile[:, None, None], shape).copy()
    stat[:, :, :] -= 0.01 * ((np.arange(20)[None, :, None] - 10) ** 2 + (np.arange(20)[None, None, :] - 10) ** 2)
    table = cluster_table(stat, mask, info, u=3.0)
    xyz = table[["x", "y", "z"]].to_numpy()
    assert len(table) == 3
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    assert (d[np.triu_indices(3, 1)] >= 8).all()


def test_svc_sphere_and_mask_use_spm_resels():
    shape = (30, 30, 30)
    info, mask = _info(shape)
    stat = np.zeros(shape)
    stat[14:17, 14:17, 14:17] = 4.2
    centre_mm = info.affine[:3, :3] @ [15, 15, 15] + info.affine[:3, 3]
    t = svc_table(stat, mask, info, u=3.0, sphere=(centre_mm, 10.0))
    R = rft.sphere_resels(10.0, info.fwhm_vox, [2, 2, 2])
    S = int(sphere_mask(shape, info.affine, centre_mm, 10.0).sum())
    assert t.attrs["n_voxels"] == S
    assert t.iloc[0]["p_fwe"] == pytest.approx(rft.p_corrected(1, 0, 4.2, info.df, "T", R, S=S))
    # SVC is less severe than whole-brain correction
    whole = cluster_table(stat, mask, info, u=3.0)
    assert t.iloc[0]["p_fwe"] < whole.iloc[0]["p_fwe"]
    vol = ndimage.binary_dilation(stat > 0, iterations=2)
    tm = svc_table(stat, mask, info, u=3.0, volume=vol)
    np.testing.assert_allclose(tm.attrs["resels"], rft.resel_counts(vol, info.fwhm_vox))
    with pytest.raises(ValueError, match="exactly one"):
        svc_table(stat, mask, info, u=3.0)
    with pytest.raises(ValueError, match="empty"):
        svc_table(stat, mask, info, u=3.0, volume=np.zeros(shape, bool))


@pytest.mark.slow
def test_svc_without_a_prior_centre_keeps_the_nominal_false_positive_rate():
    """A sphere centred on the region's own peak would make the correction circular; the region is used."""
    from scipy import ndimage

    from ferritin.cohort.templates import load_template
    from ferritin.stats.analysis import analyse_contrast

    tpl = load_template(4.0)
    grid = tpl.grid
    regions = {n: (tpl.region(n), 20.0, None) for n in ("Precentral_L", "Precentral_R")}
    rng = np.random.default_rng(0)
    n, trials, hits = 12, 40, 0
    g = np.r_[np.ones(6), np.zeros(6)]
    for _ in range(trials):
        Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(grid.shape), 8 / 2.3548 / 4.0) for _ in range(n)])
        X = np.column_stack([g, 1 - g, rng.normal(0, 1, n)])
        res = analyse_contrast(Y, X, np.array([1.0, -1.0, 0.0]), tpl.brain_mask, grid.affine, height_p=0.005,
                               svc_regions=regions)
        for tab in res.svc.values():
            hits += bool("p_fwe" in tab.columns and len(tab) and tab["p_fwe"].min() < 0.05)
    # 80 corrected tests at 5 %: expect 4; P(>= 10 | 5 %) < 1 %.  A peak-centred sphere gave ~17 %.
    assert hits <= 9
