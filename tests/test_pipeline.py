"""Pipeline orchestration: stage records, resume, downstream-only recompute, failure isolation."""

import copy

import numpy as np
import pytest

pytest.importorskip("ants")

from conftest import FAST_STUDY  # noqa: E402

from ferritin.cohort.store import CohortStore  # noqa: E402
from ferritin.cohort.templates import load_template  # noqa: E402
from ferritin.engine import pipeline  # noqa: E402
from ferritin.engine.ingest import ingest  # noqa: E402
from ferritin.engine.spec import SpecError, load_spec  # noqa: E402


def _fast_spec():
    return copy.deepcopy(FAST_STUDY)


@pytest.fixture(scope="module")
def processed(tiny_bids, client, tmp_path_factory):
    root, table = tiny_bids
    store = tmp_path_factory.mktemp("pipe") / "cohort.zarr"
    ingest(root, store, client, progress=False)
    subjects = sorted(table["participant_id"])[:2]
    spec = _fast_spec()
    summary = pipeline.run_participants(store, spec, client, subjects, progress=False)
    return store, spec, subjects, summary


@pytest.mark.slow
def test_stages_write_records(processed):
    store, spec, subjects, summary = processed
    assert sorted(summary.done["qsm"]) == subjects and sorted(summary.done["anat"]) == subjects
    s = CohortStore(store)
    for sub in subjects:
        assert s.record(f"derived/{sub}/qsm")["stage"] == "qsm"
        # each computed node records how long it took (provenance, reported as processing time)
        assert all(s.record(f"derived/{sub}/{stage}")["seconds"] > 0 for stage in ("anat", "qsm"))
        # ... and where it went: the steps' times add up to no more than the whole
        for node, step in ((anat_node := s.open_node(f"derived/{sub}/anat"), "segmentation (Atropos)"),
                           (s.open_node(f"derived/{sub}/qsm"), "QSM chain")):
            steps = node.attrs["seconds"]
            assert steps[step] > 0
            assert sum(steps.values()) <= node.attrs["ferritin_record"]["seconds"] + 0.5
        assert "normalisation (SyN)" in anat_node.attrs["seconds"]
        anat = s.open_node(f"derived/{sub}/anat")
        qsm = s.open_node(f"derived/{sub}/qsm")
        assert qsm["chi_mni"].dims == ("x", "y", "z") and 1000 < anat.attrs["tiv_ml"] < 2500
        brain = load_template(3.0).brain_mask
        assert np.isfinite(qsm["chi_mni"].values)[brain].mean() > 0.5
        # the QSM mask lies within the T1's brain mask carried to the GRE grid
        assert qsm.attrs["mask_source"] == "t1"
        assert anat["brain_mask"].dims == ("t1_i", "t1_j", "t1_k") and anat["t1_points"].shape[0] == 3
        # R2* of the same magnitudes: the simulated brain's tissues lie at 17 (GM) to 21/s (WM), more with iron
        r2 = qsm["r2star"].values[qsm["qsm_mask"].values > 0]
        assert 15.0 < np.nanmedian(r2) < 24.0 and np.isfinite(r2).mean() > 0.95
        assert np.isfinite(qsm["r2star_mni"].values)[brain].mean() > 0.5


def test_qsm_node_keeps_the_deep_grey_table_and_what_the_chain_decided(processed):
    """Pallidum above thalamus in χ and R2* (simulated: 0.16 and 0.03 ppm), every structure read; the
    simulated images never rang, so nothing was filtered; χ referenced to the whole brain."""
    store, spec, subjects, _ = processed
    s = CohortStore(store)
    for sub in subjects:
        qsm = s.open_node(f"derived/{sub}/qsm")
        nuclei = qsm["nuclei"]
        assert nuclei.sizes["region"] == 14
        assert (nuclei.sel(statistic="n").isel(region=slice(0, 8)) > 0).all()  # AAL2's; the small nuclei may vanish
        mean = nuclei.sel(statistic="mean")
        for m in ("chi", "r2star"):
            for side in ("L", "R"):
                assert mean.sel(map=m, region=f"Pallidum_{side}") > mean.sel(map=m, region=f"Thalamus_{side}")
        chain = qsm.attrs["chain"]
        assert chain["ringing"] == "auto" and chain["tapered_axes"] == []
        assert chain["reference"]["region"] == "brain"
        assert chain["reference"]["voxels"] == int(qsm["qsm_mask"].values.sum())
        assert chain["r2star_warning"] is None  # four echoes, the last late enough


@pytest.mark.slow
def test_chosen_reference_is_the_tissue_it_names(processed, client):
    """With the lateral ventricles' CSF as reference, χ there averages zero and the record says so."""
    store, spec, subjects, _ = processed
    s = CohortStore(store)
    brain = s.open_node(f"derived/{subjects[0]}/qsm")["chi"].values
    changed = {**spec, "qsm": {**spec["qsm"], "reference": "csf"}}
    out = pipeline.run_participants(store, changed, client, subjects[:1], progress=False)
    assert out.done["qsm"] == subjects[:1]
    qsm = s.open_node(f"derived/{subjects[0]}/qsm")
    ref = qsm.attrs["chain"]["reference"]
    assert ref["region"] == "csf" and ref["voxels"] >= 20
    mask = qsm["qsm_mask"].values > 0
    # the same map, shifted by the CSF's mean: differences between voxels are unchanged
    shift = (brain - qsm["chi"].values)[mask]
    assert np.ptp(shift) < 1e-5 and shift.mean() == pytest.approx(ref["offset_ppm"], abs=1e-5)
    pipeline.run_participants(store, spec, client, subjects[:1], progress=False)  # back to the module's spec


@pytest.mark.slow
def test_rerun_skips_everything(processed, client):
    store, spec, subjects, _ = processed
    again = pipeline.run_participants(store, spec, client, subjects, progress=False)
    assert sorted(again.skipped["qsm"]) == subjects and sorted(again.skipped["anat"]) == subjects
    assert not again.done


@pytest.mark.slow
def test_changed_qsm_parameter_recomputes_only_qsm(processed, client):
    store, spec, subjects, _ = processed
    s = CohortStore(store)
    before = s.record(f"derived/{subjects[0]}/anat")
    changed = {**spec, "qsm": {**spec["qsm"], "tv_iterations": 12}}
    out = pipeline.run_participants(store, changed, client, subjects[:1], progress=False)
    assert out.skipped["anat"] == subjects[:1] and out.done["qsm"] == subjects[:1]
    assert s.record(f"derived/{subjects[0]}/anat") == before
    assert s.record(f"derived/{subjects[0]}/qsm")["params"]["tv_iterations"] == 12


@pytest.mark.slow
def test_changed_anat_parameter_recomputes_anat_and_qsm(processed, client):
    store, spec, subjects, _ = processed
    s = CohortStore(store)
    changed = {**spec, "anat": {**spec["anat"], "vbm_fwhm_mm": 6.0}}
    out = pipeline.run_participants(store, changed, client, subjects[:1], progress=False)
    # QSM reads the anatomy's brain mask and point map: it follows the anatomy
    assert out.done["anat"] == subjects[:1] and out.done["qsm"] == subjects[:1]
    assert s.record(f"derived/{subjects[0]}/anat")["params"]["vbm_fwhm_mm"] == 6.0


@pytest.mark.slow
def test_failing_subject_is_recorded_and_isolated(processed, client, monkeypatch):
    store, spec, subjects, _ = processed
    bad = subjects[1]
    from ferritin.engine import participant

    real = participant.reconstruct_qsm

    def flaky(mag, *a, **k):
        if mag.shape[0] and np.isclose(mag.sum(), flaky.target):
            raise RuntimeError("simulated scanner artefact")
        return real(mag, *a, **k)

    s = CohortStore(store)
    flaky.target = float(s.open_node(f"native/{bad}")["megre_mag"].sum().values)
    monkeypatch.setattr(participant, "reconstruct_qsm", flaky)
    changed = {**spec, "qsm": {**spec["qsm"], "tkd_threshold": 0.2}}
    out = pipeline.run_participants(store, changed, client, subjects, progress=False)
    assert "simulated scanner artefact" in out.failed["qsm"][bad]
    assert subjects[0] in out.done["qsm"] and bad not in out.failed.get("anat", {})
    assert bad in s.failures()["qsm"]


def test_spec_validation(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("groups: [ALS]\n")
    with pytest.raises(SpecError, match="at least two groups"):
        load_spec(p)
    p.write_text("contrasts:\n  - name: x\n    map: t2\n    weights: 'ALS - NC'\n")
    with pytest.raises(SpecError, match="map must be"):
        load_spec(p)
    p.write_text(": not yaml : [")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(p)


@pytest.mark.parametrize("text, message", [
    ("anat:\n  syn_metrc: CC\n", r"anat.syn_metrc is not a spec key; the keys of anat are .*syn_metric"),
    ("qsm:\n  inversion: medi\n", r"qsm.inversion must be one of tv, star, tkd, ilsqr; got 'medi'"),
    ("anat:\n  normalise_on: t2\n", r"anat.normalise_on must be one of t1, tissue"),
    ("anat:\n  vbm_fwhm_mm: wide\n", r"anat.vbm_fwhm_mm must be a number"),
    ("qsm:\n  tv_iterations: 5.5\n", r"qsm.tv_iterations must be an integer"),
    ("anat:\n  syn_iterations: 40\n", r"anat.syn_iterations must be a list of integers"),
    ("anat:\n  study_template: yes please\n", r"anat.study_template must be true or false"),
    ("qsm: [tv]\n", r"spec key 'qsm' must be a mapping"),
    ("grups: [ALS, NC]\n", r"grups is not a spec key; the keys are .*groups"),
    ("inference:\n  heigth_p: 0.01\n", r"inference.heigth_p is not a spec key; the keys of inference are .*height_p"),
    ("qc:\n  min_gm_corelation: 0.5\n", r"qc.min_gm_corelation is not a spec key; the keys of qc are .*min_gm_correlation"),
    ("svc:\n  - {name: a, regoin: Thalamus_L}\n", r"svc\[0\].regoin is not a spec key"),
    ("mni_voxel_size: three\n", r"mni_voxel_size must be a number, got 'three'"),
    ("mni_voxel_size: -2\n", r"mni_voxel_size must be a number of mm between 0.5 and 8, got -2"),
    ("mni_voxel_size: 0\n", r"mni_voxel_size must be a number"),
    ("qc:\n  min_tiv_ml: 2500\n", r"qc.min_tiv_ml \(2500.0\) must be below max_tiv_ml"),
    ("qsm:\n  ringing: gibbs\n", r"qsm.ringing must be one of auto, unring, taper, none"),
])
def test_spec_rejects_unknown_or_mistyped_stage_parameters(tmp_path, text, message):
    # Caught when the spec is read, not by every subject's task failing on it.
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(p)


def test_spec_stage_parameters_reach_the_stages(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("qsm:\n  inversion: star\n  mask_erode_mm: 2\nanat:\n  normalise_on: tissue\n"
                 "  syn_iterations: [20, 10, 0]\n  tissue_iterations: [30, 20, 40]\n  study_template: true\n")
    spec = load_spec(p)
    assert spec.qsm.inversion == "star" and spec.study_template is True
    anat = spec.anat
    assert anat.normalise_on == "tissue" and anat.syn_iterations == (20, 10, 0)
    assert anat.tissue_iterations == (30, 20, 40)


@pytest.mark.slow
def test_study_template_map_reduce_map(tiny_bids, client, tmp_path):
    root, table = tiny_bids
    store = tmp_path / "cohort.zarr"
    ingest(root, store, client, progress=False)
    subjects = sorted(table["participant_id"])[:2]
    spec = _fast_spec()
    spec["anat"] = {**spec["anat"], "study_template": True}
    out = pipeline.run_participants(store, spec, client, subjects, progress=False)
    assert not out.failed, out.text()
    assert sorted(out.done["anat_init"]) == subjects and out.done["template"] == ["template"]
    s = CohortStore(store)
    tpl = s.open_node("template")
    assert sorted(tpl.attrs["subjects"]) == subjects
    # the template is the mean of the subjects' first-pass T1, GM and WM in MNI space
    for name in ("t1", "gm", "wm"):
        mean = np.mean([s.open_node(f"derived/{x}/anat_init")[f"{name}_mni"].values for x in subjects], axis=0)
        np.testing.assert_allclose(tpl[name].values, mean, rtol=1e-6, atol=1e-7)
    brain = tpl["gm"].values + tpl["wm"].values > 0.5
    for sub in subjects:
        anat = s.open_node(f"derived/{sub}/anat")
        init = s.open_node(f"derived/{sub}/anat_init")
        assert anat.attrs["fixed"] == "study" and anat.attrs["qc_dice"] > 0.6
        # the second pass reuses the first's segmentation and affine; only the tissue SyN runs again
        # (that it follows its targets is tested in test_anat)
        np.testing.assert_array_equal(anat["gm"].values, init["gm"].values)
        assert anat.attrs["affine_itk"] == init.attrs["affine_itk"]
        assert anat.attrs["preparation"] == init.attrs["preparation"] and init.attrs["preparation"]
        assert np.nanmean(np.abs(anat["jacobian"].values - init["jacobian"].values)[brain]) > 0.01
    again = pipeline.run_participants(store, spec, client, subjects, progress=False)
    assert not again.done and again.skipped["template"] == ["template"]


@pytest.mark.slow
def test_a_subject_whose_folder_is_gone_is_not_processed_from_what_the_store_kept(tiny_bids, client, tmp_path):
    """Its ingest fails (no folder); the participant level does not run it from the old native node, and the
    summary counts it instead of saying '0 failed'."""
    import shutil

    from ferritin import run_study

    root, table = tiny_bids
    bids = tmp_path / "bids"
    shutil.copytree(root, bids)
    keep = sorted(table["participant_id"])[:2]
    lines = (bids / "participants.tsv").read_text().splitlines()
    (bids / "participants.tsv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                                                   if ln.split("\t")[0] in keep]) + "\n")
    for folder in bids.glob("sub-*"):
        if folder.name not in keep:
            shutil.rmtree(folder)
    out = tmp_path / "out"
    run_study(bids, out, _fast_spec(), client, levels=("participant",), progress=False)
    shutil.rmtree(bids / keep[1])
    again = run_study(bids, out, _fast_spec(), client, levels=("participant",), progress=False)
    assert keep[1] in again.ingest.failed
    ran = set().union(*again.participants.done.values(), *again.participants.skipped.values())
    assert ran == {keep[0]}
    assert "1 done, 0 failed (and 1 failed at ingest)" in again.participants.text()
