"""The simulator: physics, determinism, BIDS validity, planted effects as parameters."""

from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ferritin.cohort.bids import discover, load_subject
from ferritin.cohort.simulate import Effect, effect_maps, preset, sample_participants, simulate_subject
from ferritin.cohort.templates import load_template

pytestmark = pytest.mark.slow  # simulated subjects at several sizes


@pytest.fixture(scope="module")
def one_subject(tiny_spec):
    df = sample_participants(tiny_spec)
    return simulate_subject(tiny_spec, df.iloc[0].to_dict(), 0)


def test_wrapped_phase_in_range(one_subject):
    ph = one_subject.phase
    assert ph.min() >= -np.pi and ph.max() < np.pi
    # the background field wraps the phase of the late echoes inside the head
    brain = one_subject.brain_mask_native.astype(bool)
    assert np.abs(one_subject.total_field_ppm[brain]).max() > 0.5


def test_phase_follows_field_and_echo_time(one_subject, tiny_spec):
    """In high-SNR brain voxels, echo-to-echo phase differences equal 2π γ B0 ΔTE × field."""
    from ferritin.cohort.dipole import GAMMA_HZ_PER_T

    t = one_subject
    brain = t.brain_mask_native.astype(bool) & (t.mag[0] > np.percentile(t.mag[0][t.brain_mask_native > 0], 30))
    d = np.angle(np.exp(1j * (t.phase[1] - t.phase[0])))[brain]
    expected = 2 * np.pi * GAMMA_HZ_PER_T * tiny_spec.b0 * 1e-6 * t.total_field_ppm[brain] * tiny_spec.delta_te
    resid = np.angle(np.exp(1j * (d - expected)))
    assert np.median(np.abs(resid)) < 0.05


def test_deterministic_for_seed(tiny_spec, one_subject):
    df = sample_participants(tiny_spec)
    again = simulate_subject(tiny_spec, df.iloc[0].to_dict(), 0)
    np.testing.assert_array_equal(again.phase, one_subject.phase)
    np.testing.assert_array_equal(again.t1w, one_subject.t1w)
    other = simulate_subject(replace(tiny_spec, seed=tiny_spec.seed + 1), df.iloc[0].to_dict(), 0)
    assert not np.array_equal(other.phase, one_subject.phase)


def test_tiv_spread_like_adults():
    df = sample_participants(preset("reference-study", seed=3))
    # TIV follows head_scale^3 of the ~1880 ml template; check the derived distribution
    tiv = 1884 * df["head_scale"] ** 3
    assert 1300 < tiv.mean() < 1700 and 80 < tiv.std() < 250
    assert tiv[df.sex == "M"].mean() > tiv[df.sex == "F"].mean()


def test_clinical_scores_tied_to_severity():
    spec = preset("reference-study", n_per_group={"ALS": 400, "NC": 10}, seed=5)
    df = sample_participants(spec)
    als = df[df.group == "ALS"]
    assert als["alsfrs_r"].between(0, 48).all() and als["umn"].between(0, 16).all()
    assert np.corrcoef(als.severity, als.alsfrs_r)[0, 1] < -0.5
    assert np.corrcoef(als.severity, als.umn)[0, 1] > 0.5
    np.testing.assert_allclose(als.dpr, (48 - als.alsfrs_r) / als.dd, atol=1e-3)
    assert df[df.group == "NC"][["alsfrs_r", "umn", "dd", "dpr"]].isna().all().all()


def test_effects_are_where_the_parameters_say():
    template = load_template(3.0)
    moved = Effect("elsewhere", "Putamen_R", (26.0, 4.0, 2.0), radius_mm=10)
    maps = effect_maps(template, [moved])
    w = maps["elsewhere"]
    centre = template.grid.voxel_to_world(np.argwhere(w > 0.5).mean(0))[0]
    assert np.linalg.norm(centre - np.array([26.0, 4.0, 2.0])) < 8
    assert (template.atlas[w > 0.9] == 7012).mean() > 0.9  # Putamen_R
    with pytest.raises(ValueError, match="no voxel"):
        effect_maps(template, [Effect("bad", "Thalamus_L", (60.0, 60.0, 60.0), radius_mm=5)])
    with pytest.raises(KeyError, match="unknown AAL region"):
        template.region("Nowhere_L")


def test_patients_differ_from_controls_where_planted():
    from ferritin.cohort.simulate import subject_mni_maps

    spec = preset("tiny", seed=2)
    template = load_template(spec.voxel_size)
    base = {"age": spec.age_mean, "severity": 0.0}
    rng = lambda: np.random.default_rng(0)  # noqa: E731 (same texture in both)
    als = subject_mni_maps(template, spec, {**base, "group": "ALS"}, rng())
    nc = subject_mni_maps(template, spec, {**base, "group": "NC"}, rng())
    for e in spec.effects:
        w = als[f"effect_{e.name}"] > 0.8
        assert (als["chi_brain"] - nc["chi_brain"])[w].mean() == pytest.approx(e.chi_ppm, rel=0.25)
        # GM change is volume loss, planted when the subject is placed
        assert als["atrophy"][w].mean() == pytest.approx(-e.gm_fraction, rel=0.2)
    assert not nc["atrophy"].any()
    far = np.ones(template.grid.shape, bool)
    for e in spec.effects:
        far &= als[f"effect_{e.name}"] < 1e-3
    np.testing.assert_allclose(als["chi_brain"][far], nc["chi_brain"][far], atol=1e-4)


def test_written_dataset_is_valid_bids(tiny_bids, tiny_spec):
    root, table = tiny_bids
    ds = discover(root)
    assert not ds.problems and sorted(ds.subjects) == sorted(table.participant_id)
    img = load_subject(ds.subjects[table.participant_id[0]])
    assert img.mag.shape[0] == tiny_spec.n_echoes and img.b0 == tiny_spec.b0
    truth = pd.read_csv(root / "derivatives" / "ground-truth" / "participants.tsv", sep="\t")
    assert truth["tiv_ml"].between(1000, 2200).all()
    sub = table.participant_id[0]
    gt = root / "derivatives" / "ground-truth" / sub
    chi = nib.load(gt / f"{sub}_space-GRE_Chimap.nii.gz")
    assert chi.shape == img.mag.shape[1:]
    np.testing.assert_allclose(chi.affine, img.gre_affine, atol=1e-5)
    # oblique GRE and T1w on different grids, as real scans
    assert not np.allclose(img.gre_affine, img.t1w_affine)


def test_images_are_written_as_a_scanner_digitises_them(tiny_bids, tiny_spec):
    """12-bit integer codes with one slope per series (NIfTI scl_slope), phase in codes of pi/4096."""
    root, table = tiny_bids
    sub = table.participant_id[0]
    anat = root / sub / "anat"
    mags = [nib.load(anat / f"{sub}_echo-{n}_part-mag_MEGRE.nii.gz") for n in range(1, tiny_spec.n_echoes + 1)]
    assert all(m.get_data_dtype() == np.int16 for m in mags)
    assert len({float(m.dataobj.slope) for m in mags}) == 1  # one scaling for the whole series
    assert max(int(np.asanyarray(m.dataobj.get_unscaled()).max()) for m in mags) == 4095
    phase = nib.load(anat / f"{sub}_echo-2_part-phase_MEGRE.nii.gz")
    codes = np.asanyarray(phase.dataobj.get_unscaled())
    assert phase.get_data_dtype() == np.int16 and codes.min() >= -4096 and codes.max() <= 4095
    np.testing.assert_allclose(float(phase.dataobj.slope), np.pi / 4096, rtol=1e-7)
    t1 = nib.load(anat / f"{sub}_T1w.nii.gz")
    assert t1.get_data_dtype() == np.int16 and int(np.asanyarray(t1.dataobj.get_unscaled()).max()) == 4095


def test_the_simulated_subject_is_what_its_files_hold(one_subject, tiny_spec, tmp_path):
    from ferritin.cohort.simulate import write_bids_subject

    write_bids_subject(tmp_path, one_subject, tiny_spec, truth_maps=False)
    sub = one_subject.subject
    mag = nib.load(tmp_path / sub / "anat" / f"{sub}_echo-3_part-mag_MEGRE.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(mag, one_subject.mag[2])
    t1 = nib.load(tmp_path / sub / "anat" / f"{sub}_T1w.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(t1, one_subject.t1w)
    assert not (tmp_path / "derivatives" / "ground-truth" / sub).exists()


def test_an_interrupted_simulation_resumes_where_it_stopped(tmp_path):
    from ferritin.cohort.simulate import simulate_cohort

    spec = preset("tiny", seed=5, n_per_group={"ALS": 1, "NC": 1}, n_echoes=2)
    root = tmp_path / "bids"
    first = simulate_cohort(root, spec, truth_maps=False)
    subs = list(first.participant_id)
    kept = root / subs[0] / "anat" / f"{subs[0]}_T1w.nii.gz"
    redone = root / subs[1] / "anat" / f"{subs[1]}_T1w.nii.gz"
    before = nib.load(redone).get_fdata()
    kept_mtime = kept.stat().st_mtime_ns
    # a run killed while writing the second subject: its files exist, its completion record does not
    (root / "derivatives" / "ground-truth" / subs[1] / f"{subs[1]}_simulation.json").unlink()
    redone.write_bytes(redone.read_bytes()[:1000])
    again = simulate_cohort(root, spec, truth_maps=False)
    assert kept.stat().st_mtime_ns == kept_mtime  # the finished subject was not simulated again
    np.testing.assert_array_equal(nib.load(redone).get_fdata(), before)  # the unfinished one was, the same
    pd.testing.assert_frame_equal(again, first)
    # another simulation into the same folder does not keep the first one's subjects
    simulate_cohort(root, replace(spec, seed=6), truth_maps=False)
    assert kept.stat().st_mtime_ns != kept_mtime


def test_atrophy_shrinks_the_region_and_nothing_else():
    from scipy import ndimage

    from ferritin.cohort.simulate import atrophy_displacement

    step, n = 2.0, 48
    aff = np.diag([step, step, step, 1.0])
    aff[:3, 3] = -47.0
    x, y, z = np.meshgrid(*[np.arange(n) * step - 47.0] * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    loss = 0.2 * ndimage.gaussian_filter((r < 12).astype(float), 1.0)
    u, modulation = atrophy_displacement(loss, aff)
    assert modulation[r < 6].mean() == pytest.approx(0.8, abs=0.02)
    assert np.abs(modulation[r > 40] - 1).max() < 0.01
    # outward displacement: the subject's region is the smaller pre-image of the template's
    radial = (u[0] * x + u[1] * y + u[2] * z) / np.maximum(r, 1e-9)
    assert radial[(r > 10) & (r < 16)].min() > 0
    with pytest.raises(ValueError, match="below 1"):
        atrophy_displacement(np.ones((4, 4, 4)), aff)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_patient_truth_carries_the_planted_gm_loss(share):
    """The region keeps 1 + gm_fraction of its GM; its volume keeps only the contracted share of the loss."""
    from ferritin.cohort.simulate import simulate_subject

    # no anatomical variability: what is left is head size (global) and the planted loss
    spec = preset("tiny", seed=4, warp_mm=0.0, volume_sd=0.0)
    spec = replace(spec, effects=tuple(replace(e, gm_composition=share) for e in spec.effects))
    row = {"participant_id": "sub-001", "group": "ALS", "age": spec.age_mean, "sex": "F", "severity": 0.0,
           "head_scale": 1.0}
    t = simulate_subject(spec, row, 0)
    template = load_template(spec.voxel_size)
    maps = effect_maps(template, spec.effects)
    far = np.ones(template.grid.shape, bool)
    for w in maps.values():
        far &= w < 1e-3
    far &= t.mni["gm"] > 0.3
    volume = t.mni["gm_mod"] / np.maximum(t.mni["gm"], 1e-6)  # the subject's volume per MNI voxel
    head = np.median(volume[far])
    assert np.std(volume[far]) < 0.01
    for e in spec.effects:
        core = (maps[e.name] > 0.9) & (template.gm > 0.3)
        kept_gm = (t.mni["gm_mod"][core] / template.gm[core]).mean() / head
        kept_volume = volume[core].mean() / head
        assert kept_gm == pytest.approx(1 + e.gm_fraction, abs=0.03)
        assert kept_volume == pytest.approx(1 + e.gm_fraction * (1 - share), abs=0.03)


def test_effect_rejects_a_composition_share_outside_0_1():
    with pytest.raises(ValueError, match="thalamus_R.*gm_composition"):
        Effect("thalamus_R", "Thalamus_R", (20.0, -17.0, 7.0), gm_composition=1.5)


def test_truth_modulated_gm_is_the_subjects_gm_volume():
    """What Jacobian-modulated VBM measures: every mm³ of the subject's GM, once."""
    spec = preset("tiny", seed=2)
    df = sample_participants(spec)
    for i in (0, 3):  # a patient and a control
        t = simulate_subject(spec, df.iloc[i].to_dict(), i)
        native = t.gm_t1.sum()
        assert t.mni["gm_mod"].sum() == pytest.approx(native, rel=0.01)


def test_anatomical_warp_keeps_volume_and_volume_sd_sets_regional_spread():
    from ferritin.cohort.simulate import volume_fraction
    from ferritin.cohort.simulate.anatomy import _place_volume_change
    from ferritin.cohort.simulate.geometry import _placement

    template = load_template(3.0)
    brain = template.brain_mask
    zero = np.zeros(template.grid.shape, np.float32)
    shape_only = preset("tiny", volume_sd=0.0)
    for k in range(3):
        place = _placement(np.random.default_rng([7, k]), shape_only, 1.0)
        moved = np.abs(place.disp).max()
        vf = volume_fraction(place, template) * abs(np.linalg.det(place.affine[:3, :3]))
        assert moved > 4.0  # it does move structures by several mm
        assert vf[brain].std() < 0.05  # without changing their volume
    spread = preset("tiny", volume_sd=0.10)
    vfs = []
    for k in range(3):
        rng = np.random.default_rng([7, k])
        place = _place_volume_change(_placement(rng, spread, 1.0), zero, template, rng, spread)
        vfs.append(volume_fraction(place, template) * abs(np.linalg.det(place.affine[:3, :3])))
    sd = np.mean([v[brain].std() for v in vfs])
    assert 0.07 < sd < 0.13


def test_acquired_matrix_keeps_what_the_scanner_samples_and_rings_at_edges():
    """k-space truncation: a band-limited object comes back sampled at the voxel centres; a sharp edge rings
    with the Gibbs overshoot (~9 % of the step) a finite k-space gives."""
    from ferritin.cohort.simulate.acquisition import _acquired_matrix

    f, n = 3, 48
    x = np.arange(n * f) / f  # fine positions in acquired voxels; fine voxel f*i lies on voxel i
    smooth = np.exp(-0.5 * ((x - n / 2) / 4.0) ** 2)
    fine = smooth[:, None, None] * np.ones((1, 6, 6))
    acquired = _acquired_matrix(fine, (n, 2, 2), f)
    assert np.allclose(acquired.real[:, 0, 0], smooth[::f], atol=1e-6)
    step = ((x > n / 4 + 0.3) & (x < 3 * n / 4 + 0.3)).astype(float)[:, None, None] * np.ones((1, 6, 6))
    edge = _acquired_matrix(step, (n, 2, 2), f).real[:, 0, 0]
    overshoot = edge.max() - 1.0
    assert 0.04 < overshoot < 0.2
    assert edge[: n // 4 - 2].min() < -0.02  # ripples outside the object, where the untruncated one is 0


def test_kspace_truncation_one_is_the_plain_simulation():
    with pytest.raises(ValueError, match="kspace_truncation"):
        preset("tiny", kspace_truncation=0)
    assert preset("tiny").kspace_truncation == 1
