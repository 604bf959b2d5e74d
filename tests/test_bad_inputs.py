"""The bad-input corpus: every kind of broken subject goes through the real ingest
(Dask tasks, store writes) next to a good subject.  Each must give an error naming
the subject and the file, leave no node and no staging debris for that subject, and
let the good subject through.  Corrections that are applied instead of errors
(ms echo times, arbitrary phase units, oblique and anisotropic voxels) are tested
at the end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ferritin.cohort.errors import DatasetError
from ferritin.cohort.store import CohortStore
from ferritin.engine.ingest import ingest

BAD = "sub-02"


def _sidecar(f, sub, echo, part):
    return f.path(sub, echo, part, ext=".json")


def _edit_sidecar(f, sub, echo, part, **changes):
    p = _sidecar(f, sub, echo, part)
    meta = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    p.write_text(json.dumps(meta))


def _edit_every_sidecar(f, sub, **changes):
    for e in (1, 2, 3):
        for part in ("mag", "phase"):
            _edit_sidecar(f, sub, e, part, **changes)


def _rewrite(f, sub, echo, part, fn):
    p = f.path(sub, echo, part)
    img = nib.load(p)
    data = fn(np.asarray(img.dataobj).astype(np.float32))
    nib.save(nib.Nifti1Image(data, img.affine), p)


def corrupt_gzip(f):
    f.path(BAD, 2, "phase").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    return "echo-2_part-phase_MEGRE.nii.gz"


def truncated(f):
    p = f.path(BAD, 1, "mag")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return "echo-1_part-mag_MEGRE.nii.gz"


def nan_voxels(f):
    _rewrite(f, BAD, 2, "mag", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 5, np.nan, d))
    return "echo-2_part-mag_MEGRE.nii.gz"


def inf_voxels(f):
    _rewrite(f, BAD, 1, "phase", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 7, np.inf, d))
    return "echo-1_part-phase_MEGRE.nii.gz"


def zero_phase(f):
    for e in (1, 2, 3):
        _rewrite(f, BAD, e, "phase", np.zeros_like)
    return "part-phase_MEGRE.nii.gz"


def degrees_labelled_rad(f):
    for e in (1, 2, 3):
        _rewrite(f, BAD, e, "phase", lambda d: d * 180 / np.pi)
    return "part-phase_MEGRE"  # the sidecar that claims radians


def missing_sidecar(f):
    # one missing sidecar of an echo is fine (its pair gives EchoTime); both is an error
    _sidecar(f, BAD, 1, "mag").unlink()
    _sidecar(f, BAD, 1, "phase").unlink()
    return "echo-1_part-mag_MEGRE.json"


def no_echo_time(f):
    _edit_sidecar(f, BAD, 2, "mag", EchoTime=None)
    _edit_sidecar(f, BAD, 2, "phase", EchoTime=None)
    return "echo-2_part-mag_MEGRE.json"


def echo_time_text(f):
    _edit_sidecar(f, BAD, 2, "mag", EchoTime="eight")
    return "echo-2_part-mag_MEGRE.json"


def echo_times_not_increasing(f):
    _edit_sidecar(f, BAD, 3, "mag", EchoTime=0.006)
    return "MEGRE.json"


def two_d_image(f):
    p = f.path(BAD, 2, "mag")
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 0], img.affine), p)
    return "echo-2_part-"  # named through the mag/phase pair that no longer matches


def echo_shape_mismatch(f):
    p = f.path(BAD, 3, "mag")
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), img.affine), p)
    return "echo-3_part-"


def echo_affine_mismatch(f):
    p = f.path(BAD, 2, "mag")
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 7
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    return "echo-2_part-"


def non_utf8_sidecar(f):
    _sidecar(f, BAD, 1, "phase").write_bytes(b'{"EchoTime": 0.004, "Units": "\xff\xfe rad"}')
    return "echo-1_part-phase_MEGRE.json"


def no_field_strength(f):
    _edit_every_sidecar(f, BAD, MagneticFieldStrength=None)
    return "MEGRE.json"


def field_strength_differs(f):
    _edit_sidecar(f, BAD, 2, "mag", MagneticFieldStrength=1.5)
    return "echo-2_part-mag_MEGRE.json"


def missing_t1w(f):
    (f.anat(BAD) / f"{BAD}_T1w.nii.gz").unlink()
    return BAD


def four_d_t1w(f):
    p = f.anat(BAD) / f"{BAD}_T1w.nii.gz"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, -1), img.affine), p)
    return "T1w.nii.gz"


def missing_phase_echo(f):
    f.path(BAD, 3, "phase").unlink()
    return "echo-3_part-mag_MEGRE.nii.gz"


def echo_time_infinite(f):
    p = _sidecar(f, BAD, 2, "mag")
    p.write_text(p.read_text().replace('"EchoTime": 0.008', '"EchoTime": Infinity'))
    return "echo-2_part-mag_MEGRE.json"


def echo_time_huge(f):
    _edit_sidecar(f, BAD, 2, "mag", EchoTime=1e300)
    _edit_sidecar(f, BAD, 2, "phase", EchoTime=1e300)
    return "echo-2_part-mag_MEGRE.json"


def echo_time_boolean(f):
    _edit_sidecar(f, BAD, 1, "mag", EchoTime=True)
    _edit_sidecar(f, BAD, 1, "phase", EchoTime=True)
    return "echo-1_part-mag_MEGRE.json"


def field_strength_boolean(f):
    _edit_every_sidecar(f, BAD, MagneticFieldStrength=True)
    return "echo-1_part-mag_MEGRE.json"


def sidecars_disagree_on_echo_time(f):
    _edit_sidecar(f, BAD, 1, "phase", EchoTime=0.020)
    return "echo-1_part-phase_MEGRE.json"


def sidecars_disagree_on_field(f):
    _edit_sidecar(f, BAD, 2, "phase", MagneticFieldStrength=7.0)
    return "echo-2_part-phase_MEGRE.json"


def mixed_phase_units(f):
    for e in (2, 3):
        _rewrite(f, BAD, e, "phase", lambda d: np.round((d + np.pi) / (2 * np.pi) * 4095).astype(np.int16))
        _edit_sidecar(f, BAD, e, "phase", Units="arbitrary")
    return "part-phase_MEGRE.json"


def complex_magnitude(f):
    p = f.path(BAD, 1, "mag")
    img = nib.load(p)
    data = np.asarray(img.dataobj).astype(np.complex64) * np.exp(1j * 0.3)
    nib.save(nib.Nifti1Image(data, img.affine), p)
    return "echo-1_part-mag_MEGRE.nii.gz"


def rgb_t1w(f):
    p = f.anat(BAD) / f"{BAD}_T1w.nii.gz"
    img = nib.load(p)
    rgb = np.zeros(img.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, img.affine), p)
    return "T1w.nii.gz"


def no_orientation(f):
    p = f.path(BAD, 1, "mag")
    img = nib.load(p)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, p)
    return "echo-1_part-"


def singular_affine(f):
    for part in ("mag", "phase"):
        p = f.path(BAD, 2, part)
        img = nib.load(p)
        hdr = img.header.copy()
        hdr["srow_z"] = [0.0, 0.0, 0.0, -8.75]  # the third axis collapses onto a point
        hdr["sform_code"], hdr["qform_code"] = 1, 0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), p)
    return "echo-2_part-"


def _claim_shape(f, echo, part, shape):
    """Rewrite an image's header to claim ``shape`` while the file keeps 40 bytes of voxels."""
    p = f.path(BAD, echo, part)
    img = nib.load(p)
    img.header.set_data_shape(shape)
    import gzip

    p.write_bytes(gzip.compress(img.header.binaryblock + b"\0" * 4 + np.zeros(10, np.float32).tobytes()))
    return "echo-3_part-"


def header_claims_huge_image(f):
    return _claim_shape(f, 3, "mag", (4000, 4000, 4000))


def header_claims_more_than_the_file(f):
    return _claim_shape(f, 3, "phase", (200, 200, 100))


CASES = [corrupt_gzip, truncated, nan_voxels, inf_voxels, zero_phase, degrees_labelled_rad, missing_sidecar,
         no_echo_time, echo_time_text, echo_times_not_increasing, two_d_image, echo_shape_mismatch,
         echo_affine_mismatch, non_utf8_sidecar, no_field_strength, field_strength_differs, missing_t1w,
         four_d_t1w, missing_phase_echo, echo_time_infinite, echo_time_huge, echo_time_boolean,
         field_strength_boolean, sidecars_disagree_on_echo_time, sidecars_disagree_on_field, mixed_phase_units,
         complex_magnitude, rgb_t1w, no_orientation, singular_affine, header_claims_huge_image,
         header_claims_more_than_the_file]


@pytest.mark.parametrize("breaks", CASES, ids=lambda fn: fn.__name__)
def test_bad_subject_is_named_and_isolated(breaks, bids_factory, client, tmp_path):
    f = bids_factory
    f.subject("sub-01")
    f.subject(BAD)
    f.write_participants()
    names_file = breaks(f)
    store = tmp_path / "cohort.zarr"
    result = ingest(f.root, store, client, progress=False)
    assert result.written == ["sub-01"], result.summary()
    reason = result.failed[BAD]
    assert reason.startswith(BAD) and names_file in reason, reason
    s = CohortStore(store)
    assert not s.exists(f"native/{BAD}") and s.record(f"native/{BAD}") is None
    assert BAD in s.failures()["ingest"]
    assert not any(s.staging.glob("*")) if s.staging.exists() else True


def test_corpus_has_at_least_fifteen_kinds():
    assert len(CASES) >= 15


@pytest.mark.parametrize("content", ["", "participant_id\tgroup\n"], ids=["empty-file", "header-only"])
def test_empty_participants_is_a_dataset_error(content, bids_factory, client, tmp_path):
    f = bids_factory
    f.subject("sub-01", row=False)
    (f.root / "participants.tsv").write_text(content)
    with pytest.raises(DatasetError, match="participants.tsv"):
        ingest(f.root, tmp_path / "c.zarr", client, progress=False)
    assert not (tmp_path / "c.zarr").exists()  # nothing half-made


def test_documented_corrections(bids_factory, client, tmp_path):
    """ms echo times -> s, arbitrary phase units -> rad, oblique anisotropic voxels kept with their affine."""
    f = bids_factory
    f.affine = np.array([[1.8, 0.2, 0.0, -8.0], [-0.2, 1.9, 0.1, -9.0], [0.0, -0.1, 2.6, -8.0], [0, 0, 0, 1.0]])
    f.subject("sub-01", te=(4.0, 8.0, 12.0), units="arbitrary")
    f.write_participants()
    for e in (1, 2, 3):
        _rewrite(f, "sub-01", e, "phase", lambda d: np.round((d + np.pi) / (2 * np.pi) * 4095))
    result = ingest(f.root, tmp_path / "c.zarr", client, progress=False)
    assert result.written == ["sub-01"], result.summary()
    ds = CohortStore(tmp_path / "c.zarr").open_node("native/sub-01").load()
    np.testing.assert_allclose(ds["echo_time"].values, [0.004, 0.008, 0.012])
    assert ds["megre_phase"].values.min() >= -np.pi - 1e-6 and ds["megre_phase"].values.max() <= np.pi + 1e-6
    np.testing.assert_allclose(np.array(ds.attrs["gre_affine"]), f.affine)
    assert any("milliseconds" in n or "ms" in n for n in ds.attrs["notes"])


# --------------------------------------------------------------------------
# participants.tsv as spreadsheets write it


def _two_subjects_with_table(f, text):
    f.subject("sub-01")
    f.subject("sub-02")
    (f.root / "participants.tsv").write_text(text)


@pytest.mark.parametrize("text", [
    "participant_id\tgroup\tage\tsex\nsub-01\tNC\t50\tF\t\nsub-02\tALS\t60\tM\t\n",
    " participant_id \t group \tage\tsex\n sub-01 \t NC \t50\tF\nsub-02\tALS \t 60\tM\n",
], ids=["trailing-tabs", "spaces"])
def test_spreadsheet_exports_are_read_as_meant(text, bids_factory, client, tmp_path):
    _two_subjects_with_table(bids_factory, text)
    result = ingest(bids_factory.root, tmp_path / "c.zarr", client, progress=False)
    assert result.written == ["sub-01", "sub-02"] and not result.failed, result.summary()
    table = CohortStore(tmp_path / "c.zarr").open_node("participants").load()
    assert list(table["group"].values) == ["NC", "ALS"]
    np.testing.assert_allclose(table["age"].values, [50, 60])


@pytest.mark.parametrize("row, message", [
    ("sub-02\tALS\t60\tM\textra", "row 3: 5 fields for 4 columns"),
    ("sub-02\tALS\tfifty\tM", "row 3, column 'age': 'fifty' is not a number"),
], ids=["extra-field", "text-age"])
def test_bad_row_refuses_its_subject_only(row, message, bids_factory, client, tmp_path):
    _two_subjects_with_table(bids_factory, f"participant_id\tgroup\tage\tsex\nsub-01\tNC\t50\tF\n{row}\n")
    result = ingest(bids_factory.root, tmp_path / "c.zarr", client, progress=False)
    assert result.written == ["sub-01"]
    assert message in result.failed["sub-02"] and "participants.tsv" in result.failed["sub-02"]
    assert "FAILED sub-02: participants.tsv" in result.summary()  # the subject is named once


def test_reingest_with_a_shifted_table_keeps_no_phantom_rows(bids_factory, client, tmp_path):
    _two_subjects_with_table(bids_factory, "participant_id\tgroup\tage\tsex\nsub-01\tNC\t50\tF\nsub-02\tALS\t60\tM\n")
    store = tmp_path / "c.zarr"
    ingest(bids_factory.root, store, client, progress=False)
    (bids_factory.root / "participants.tsv").write_text(
        "participant_id\tgroup\tage\tsex\nsub-01\tNC\t50\tF\textra\nsub-02\tALS\t60\tM\n")
    ingest(bids_factory.root, store, client, progress=False)
    subjects = list(CohortStore(store).open_node("participants").load()["subject"].values)
    assert "sub-NC" not in subjects and "sub-ALS" not in subjects


def test_unbalanced_quote_is_a_character_not_a_crash(bids_factory, client, tmp_path):
    _two_subjects_with_table(bids_factory, 'participant_id\tgroup\tage\tsex\nsub-01\t"NC\t50\tF\nsub-02\tALS\t60\tM\n')
    result = ingest(bids_factory.root, tmp_path / "c.zarr", client, progress=False)
    assert result.written == ["sub-01", "sub-02"]


def test_duplicate_column_is_a_dataset_error(bids_factory, client, tmp_path):
    _two_subjects_with_table(bids_factory, "participant_id\tgroup\tgroup\nsub-01\tNC\tNC\nsub-02\tALS\tALS\n")
    with pytest.raises(DatasetError, match="column 'group' appears more than once"):
        ingest(bids_factory.root, tmp_path / "c.zarr", client, progress=False)
    assert not (tmp_path / "c.zarr").exists()


# --------------------------------------------------------------------------
# where the store goes


@pytest.mark.slow
def test_store_paths_that_cannot_be_a_store_are_refused(bids_factory, tmp_path, capsys):
    from ferritin.engine.cli import main

    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("x")
    cases = {str(f.root): "must not be the BIDS dataset", str(f.root / "sub-store.zarr"): "among its raw data",
             str(a_file): "is a file, not a cohort store", str(foreign): "not a cohort store"}
    for store, message in cases.items():
        assert main(["ingest", str(f.root), store, "--workers", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert a_file.read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]
    assert not (f.root / "sub-store.zarr").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", str(f.root), str(tmp_path / "c.zarr"), "--workers", "-1"])
    assert exit_info.value.code == 2


def test_a_run_leaves_no_staging_folder(bids_factory, client, tmp_path):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    ingest(f.root, tmp_path / "c.zarr", client, progress=False)
    ingest(f.root, tmp_path / "derivatives-like" / "c.zarr", client, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unreadable_subject_folder_fails_that_subject_only(bids_factory, client, tmp_path, monkeypatch):
    """(Permissions cannot be taken from root, who runs CI, so the folder's listing fails instead.)"""
    from pathlib import Path

    f = bids_factory
    f.subject("sub-01")
    f.subject(BAD)
    f.write_participants()
    real_iterdir = Path.iterdir
    unreadable = (f.root / BAD / "anat").resolve()

    def iterdir(self):
        if self.resolve() == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    result = ingest(f.root, tmp_path / "c.zarr", client, progress=False)
    assert result.written == ["sub-01"]
    assert "cannot read the folder: Permission denied" in result.failed[BAD]
