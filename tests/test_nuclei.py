"""Deep-grey tables and the χ reference: labels carried to the subject, eroded, read; the reference region."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ferritin.cohort.templates import load_template
from ferritin.engine.anat.labels import erode_labels, labels_on_grid
from ferritin.engine.anat.resampling import native_points
from ferritin.engine.chi_reference import lateral_ventricles, reference_region, referenced
from ferritin.engine.nuclei import STATISTICS, deep_grey_atlas, nuclei_frame, region_statistics, subject_nuclei


def _world(shape, affine):
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *shape))


def test_labels_reach_a_finer_rotated_grid_as_nearest_neighbour_resampling():
    """Through an identity normalisation, labels on a finer, turned native grid are those of the MNI
    voxel each native voxel lies in (what nearest-neighbour resampling gives), away from label edges."""
    rng = np.random.default_rng(0)
    mni_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    labels = np.zeros((16, 16, 16), np.int32)
    labels[4:9, 5:11, 4:12] = 1
    labels[9:13, 5:11, 4:12] = 2
    points = _world(labels.shape, mni_affine)  # identity normalisation: every MNI voxel sits where it is
    angle = np.deg2rad(12)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    native_affine = np.eye(4)
    native_affine[:3, :3] = turn * 1.5
    native_affine[:3, 3] = rng.uniform(4, 6, 3)
    shape = (30, 30, 30)
    got = labels_on_grid(labels, points, 3.0, shape, native_affine)
    ijk = np.linalg.inv(mni_affine) @ np.vstack([_world(shape, native_affine).reshape(3, -1), np.ones((1, 27000))])
    expected = ndimage.map_coordinates(labels, ijk[:3], order=0, mode="constant").reshape(shape)
    assert set(np.unique(got)) == {0, 1, 2}
    agree = (got == expected).mean()
    assert agree > 0.99


def test_labels_follow_the_normalisation():
    """A subject whose brain sits 6 mm to the right: its labels sit 6 mm to the right too."""
    mni_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((20, 20, 20), np.int32)
    labels[8:12, 8:12, 8:12] = 5
    points = _world(labels.shape, mni_affine) + np.array([6.0, 0, 0]).reshape(3, 1, 1, 1)
    got = labels_on_grid(labels, points, 2.0, labels.shape, mni_affine)
    assert np.array_equal(np.argwhere(got == 5), np.argwhere(np.roll(labels, 3, axis=0) == 5))


def test_native_points_apply_the_coregistration():
    points = np.zeros((3, 2, 2, 2))
    move = np.eye(4)
    move[:3, 3] = (1.0, -2.0, 3.0)
    assert np.allclose(native_points(points, move)[:, 0, 0, 0], (1.0, -2.0, 3.0))
    with pytest.raises(ValueError, match="4x4"):
        native_points(points, np.eye(3))


def test_each_label_is_eroded_on_its_own():
    labels = np.zeros((12, 12, 12), np.int32)
    labels[1:6, 1:6, 1:6] = 1
    labels[6:11, 1:6, 1:6] = 2  # touches label 1: each loses its own edge, including the shared face
    eroded = erode_labels(labels, 1)
    assert (eroded == 1).sum() == 27 and (eroded == 2).sum() == 27
    assert np.array_equal(erode_labels(labels, 0), labels)
    with pytest.raises(ValueError, match="0 or more"):
        erode_labels(labels, -1)


def test_region_statistics_agree_with_numpy():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(10, 10, 10))
    labels = rng.integers(0, 3, size=values.shape)
    valid = rng.random(values.shape) > 0.2
    values[0, 0, 0] = np.nan  # not finite: left out like an invalid voxel
    table = region_statistics(values, valid, labels, ["a", "b", "c"])
    for i in range(2):
        v = values[(labels == i + 1) & valid & np.isfinite(values)]
        assert table[i, 0] == v.size
        assert np.allclose(table[i, 1:], (v.mean(), np.median(v), v.std(ddof=1)))
    assert table[2, 0] == 0 and np.isnan(table[2, 1:]).all()  # no label 3: n = 0, no statistics
    with pytest.raises(ValueError, match="share a grid"):
        region_statistics(values[:5], valid, labels, ["a"])


@pytest.fixture(scope="module")
def template():
    return load_template(3.0)


def test_deep_grey_atlas_holds_both_sides_of_seven_nuclei(template):
    labels, names = deep_grey_atlas(template)
    assert names == [f"{n}_{s}" for n in ("Caudate", "Putamen", "Pallidum", "Thalamus", "SubstantiaNigra",
                                          "RedNucleus", "Dentate") for s in ("L", "R")]
    counts = np.bincount(labels.ravel(), minlength=15)[1:]
    assert (counts >= 5).all()
    assert counts[names.index("Thalamus_L")] > counts[names.index("Pallidum_L")]
    # where they are in MNI space: nigra and red nucleus in the midbrain, the dentate in the cerebellum
    xyz = {name: template.grid.voxel_to_world(np.argwhere(labels == i + 1)).mean(axis=0) for i, name in enumerate(names)}
    assert -25 < xyz["SubstantiaNigra_L"][1] < -10 and xyz["SubstantiaNigra_L"][0] < 0 < xyz["SubstantiaNigra_R"][0]
    assert xyz["RedNucleus_R"][2] > xyz["SubstantiaNigra_R"][2] - 2  # the red nucleus lies above the nigra
    assert xyz["Dentate_L"][1] < -45 and xyz["Dentate_L"][2] < -15


def test_a_subject_in_mni_space_reads_the_truth_of_each_nucleus(template):
    """χ painted with a known value per nucleus, on the MNI grid itself (identity normalisation):
    each nucleus's eroded mean is its painted value, n counts the eroded voxels, GM is read in MNI."""
    labels, names = deep_grey_atlas(template)
    chi = np.zeros(labels.shape, np.float32)
    truth = {name: 0.01 * (i + 1) for i, name in enumerate(names)}
    for i, name in enumerate(names):
        chi[labels == i + 1] = truth[name]
    points = _world(labels.shape, template.grid.affine).astype(np.float32)
    gm_mod = np.full(labels.shape, 0.5, np.float32)
    mask = np.ones(labels.shape, bool)
    table = subject_nuclei({"chi": chi, "r2star": 100 * chi}, {"chi": mask, "r2star": mask},
                           template.grid.affine, gm_mod, template, points, np.eye(4), erosion_vox=1)
    assert table.dims == ("region", "map", "statistic")
    assert list(table["statistic"].values) == list(STATISTICS)
    eroded = erode_labels(labels, 1)
    for i, name in enumerate(names):
        row = table.sel(region=name)
        n = (eroded == i + 1).sum()
        assert row.sel(map="chi", statistic="n") == n
        if n == 0:  # a nucleus smaller than the grid's erosion: no statistics, not a wrong one
            assert np.isnan(row.sel(map="chi", statistic="mean"))
            continue
        assert row.sel(map="chi", statistic="mean") == pytest.approx(truth[name], abs=1e-6)
        assert row.sel(map="chi", statistic="sd") == pytest.approx(0.0, abs=1e-6)  # eroded: no neighbour mixed in
        assert row.sel(map="r2star", statistic="median") == pytest.approx(100 * truth[name], rel=1e-5)
        assert row.sel(map="gm_mod", statistic="mean") == pytest.approx(0.5)
    assert (table.sel(map="chi", statistic="n") > 0).sum() >= 8
    frame = nuclei_frame(table.expand_dims(subject=["sub-01"]), pd.Series({"sub-01": "NC"}))
    assert list(frame.columns) == ["subject", "group", "region", "map", *STATISTICS]
    assert len(frame) == len(names) * 3 and set(frame["group"]) == {"NC"}


def _anat_in_mni(template):
    """An anatomy that is the template itself: tissue maps on a T1 grid equal to the MNI grid."""
    return {"csf": template.csf, "wm": template.wm, "gre_to_t1": np.eye(4),
            "t1_points": _world(template.csf.shape, template.grid.affine).astype(np.float32)}


def test_reference_regions_are_the_tissue_they_name(template):
    anat = _anat_in_mni(template)
    mask = template.brain_mask
    affine = template.grid.affine
    assert np.array_equal(reference_region("brain", mask, affine, anat, affine, template), mask)
    wm = reference_region("wm", mask, affine, anat, affine, template)
    assert (template.wm[wm] > 0.9).all() and wm.sum() > 500
    csf = reference_region("csf", mask, affine, anat, affine, template)
    assert (template.csf[csf] > 0.9).all() and csf.sum() >= 20
    assert not (csf & ~lateral_ventricles(template)).any()  # ventricles, not sulci
    y = template.grid.coords()["y"]
    assert -50 <= y[np.argwhere(csf)[:, 1]].min() and y[np.argwhere(csf)[:, 1]].max() <= 32


def test_reference_refuses_what_it_cannot_use(template):
    anat = _anat_in_mni(template)
    affine = template.grid.affine
    tiny = np.zeros(template.brain_mask.shape, bool)
    tiny[30, 40, 30] = True
    with pytest.raises(ValueError, match="the wm reference holds 0 voxels"):
        reference_region("wm", tiny, affine, anat, affine, template)
    with pytest.raises(ValueError, match="unknown susceptibility reference 'sulci'"):
        reference_region("sulci", tiny, affine, anat, affine, template)


def test_referenced_chi_is_zero_on_average_over_the_region():
    rng = np.random.default_rng(4)
    chi = rng.normal(0.02, 0.05, (8, 8, 8)).astype(np.float32)
    mask = np.ones(chi.shape, bool)
    mask[0] = False
    region = np.zeros(chi.shape, bool)
    region[2:5, 2:5, 2:5] = True
    out, offset = referenced(chi, mask, region)
    assert out[region].mean() == pytest.approx(0.0, abs=1e-6)
    assert offset == pytest.approx(chi[region].mean(), rel=1e-5)
    assert (out[~mask] == 0).all()
