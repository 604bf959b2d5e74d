"""BIDS discovery and loading: every bad input names the subject and the file."""

import json
import shutil

import numpy as np
import pytest

from ferritin.cohort.bids import discover, load_subject, read_participants, validate_label
from ferritin.cohort.errors import DatasetError, SubjectError


def _problems(ds):
    return {p.subject: str(p) for p in ds.problems}


def test_valid_dataset_loads(bids_factory):
    f = bids_factory
    f.subject("sub-01", group="ALS")
    f.subject("sub-02")
    f.write_participants()
    ds = discover(f.root)
    assert sorted(ds.subjects) == ["sub-01", "sub-02"] and not ds.problems
    img = load_subject(ds.subjects["sub-01"])
    assert img.mag.shape == (3, *f.shape) and img.phase.dtype == np.float32
    np.testing.assert_allclose(img.echo_times, [0.004, 0.008, 0.012])
    assert img.b0 == 3.0
    np.testing.assert_array_equal(img.gre_affine, f.affine)


def test_participant_label_selection(bids_factory):
    f = bids_factory
    for s in ("sub-01", "sub-02", "sub-03"):
        f.subject(s)
    f.write_participants()
    ds = discover(f.root, ["02", "sub-03"])
    assert sorted(ds.subjects) == ["sub-02", "sub-03"]
    with pytest.raises(DatasetError, match="invalid participant label"):
        discover(f.root, ["../.."])


@pytest.mark.parametrize("label", ["../..", "sub-../..", "01/..", "a b", ""])
def test_labels_refuse_path_traversal(label):
    with pytest.raises(ValueError, match="invalid"):
        validate_label(label)


def test_traversal_label_in_participants_is_reported(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants(f.rows + [{"participant_id": "sub-../..", "group": "NC", "age": 1, "sex": "M"}])
    ds = discover(f.root)
    assert list(ds.subjects) == ["sub-01"]
    assert any("invalid participant label" in str(p) and "participants.tsv" in str(p) for p in ds.problems)


def test_rows_without_images_and_images_without_rows(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.subject("sub-02", row=False)
    f.write_participants(f.rows + [{"participant_id": "sub-03", "group": "NC", "age": 40, "sex": "F"}])
    ds = discover(f.root)
    probs = _problems(ds)
    assert list(ds.subjects) == ["sub-01"]
    assert "no row in participants.tsv" in probs["sub-02"]
    assert "no sub-03/ folder" in probs["sub-03"]


def test_duplicate_subjects(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.subject("sub-02")
    f.write_participants(f.rows + [{"participant_id": "sub-01", "group": "ALS", "age": 40, "sex": "F"}])
    ds = discover(f.root)
    assert "sub-01" not in ds.subjects and "sub-02" in ds.subjects
    assert "duplicate participant_id" in _problems(ds)["sub-01"]


def test_missing_echo(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.subject("sub-02")
    f.write_participants()
    f.path("sub-01", 2, "mag").unlink()
    f.path("sub-01", 2, "phase").unlink()
    ds = discover(f.root)
    msg = _problems(ds)["sub-01"]
    assert "echo(es) [2] missing" in msg and "sub-01" in msg
    assert "sub-02" in ds.subjects


def test_missing_phase_of_one_echo(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    f.path("sub-01", 3, "phase").unlink()
    ds = discover(f.root)
    msg = _problems(ds)["sub-01"]
    assert "echo 3 has a magnitude image but no phase image" in msg
    assert "sub-01_echo-3_part-mag_MEGRE.nii.gz" in msg


def _load_error(f, sub="sub-01") -> str:
    ds = discover(f.root)
    with pytest.raises(SubjectError) as exc:
        load_subject(ds.subjects[sub])
    assert exc.value.subject == sub
    return str(exc.value)


def test_truncated_nifti(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    p = f.path("sub-01", 2, "mag")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    msg = _load_error(f)
    assert "sub-01_echo-2_part-mag_MEGRE.nii.gz" in msg and ("truncated" in msg or "cannot read" in msg)


def test_corrupt_gzip(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    p = f.path("sub-01", 1, "phase")
    p.write_bytes(b"\x1f\x8b" + b"not really gzip data" * 10)
    msg = _load_error(f)
    assert "sub-01_echo-1_part-phase_MEGRE.nii.gz" in msg


def test_echo_shape_mismatch(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    bad = np.ones((8, 9, 6), np.float32)
    f.save(bad, f.path("sub-01", 2, "mag"))
    f.save(bad, f.path("sub-01", 2, "phase"))
    msg = _load_error(f)
    assert "echo 2 shape" in msg and "echo-2_part-mag" in msg


def test_echo_affine_mismatch(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    aff = f.affine.copy()
    aff[0, 3] += 5
    data = np.ones(f.shape, np.float32)
    f.save(data, f.path("sub-01", 3, "mag"), affine=aff)
    f.save(data, f.path("sub-01", 3, "phase"), affine=aff)
    assert "echo 3 affine differs" in _load_error(f)


def test_mag_phase_shape_mismatch(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    f.save(np.ones((8, 9, 8), np.float32), f.path("sub-01", 1, "phase"))
    msg = _load_error(f)
    assert "phase shape" in msg and "echo-1_part-phase" in msg


def test_missing_echo_time(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    for part in ("mag", "phase"):
        sc = f.path("sub-01", 2, part, ext=".json")
        meta = json.loads(sc.read_text())
        meta.pop("EchoTime")
        sc.write_text(json.dumps(meta))
    msg = _load_error(f)
    assert "no EchoTime" in msg and "echo-2" in msg


def test_echo_time_in_ms_is_converted(bids_factory):
    f = bids_factory
    f.subject("sub-01", te=(4.0, 8.0, 12.0))
    f.write_participants()
    img = load_subject(discover(f.root).subjects["sub-01"])
    np.testing.assert_allclose(img.echo_times, [0.004, 0.008, 0.012])
    assert any("milliseconds" in n for n in img.notes)


def test_arbitrary_phase_is_rescaled(bids_factory):
    f = bids_factory
    f.subject("sub-01", units="arbitrary")
    f.write_participants()
    rng = np.random.default_rng(1)
    for n in (1, 2, 3):
        f.save(rng.integers(-4096, 4096, f.shape).astype(np.int16), f.path("sub-01", n, "phase"))
    img = load_subject(discover(f.root).subjects["sub-01"])
    assert img.phase.min() >= -np.pi and img.phase.max() < np.pi
    assert any("rescaled to radians" in n for n in img.notes)


def test_nan_voxels_are_refused(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    data = np.ones(f.shape, np.float32)
    data[1, 1, 1] = np.nan
    f.save(data, f.path("sub-01", 1, "mag"))
    assert "NaN or infinite" in _load_error(f)


def test_non_utf8_sidecar(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    f.path("sub-01", 1, "mag", ext=".json").write_bytes(b'{"EchoTime": 0.004, "Note": "\xff\xfe"}')
    assert "not UTF-8" in _load_error(f)


def test_participants_missing_and_empty(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    with pytest.raises(DatasetError, match="participants.tsv is missing"):
        discover(f.root)
    (f.root / "participants.tsv").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        discover(f.root)
    (f.root / "participants.tsv").write_text("participant_id\tgroup\n")
    with pytest.raises(DatasetError, match="no participants"):
        discover(f.root)


def test_na_is_missing(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    (f.root / "participants.tsv").write_text("participant_id\tgroup\tage\tumn\nsub-01\tALS\t50\tn/a\n")
    table, _, problems = read_participants(f.root)
    assert np.isnan(table.loc["sub-01", "umn"]) and table.loc["sub-01", "age"] == 50 and not problems


def test_older_4d_t2starw_layout(bids_factory):
    import nibabel as nib

    f = bids_factory
    d = f.anat("sub-01")
    mag = np.random.default_rng(0).uniform(1, 2, (*f.shape, 4)).astype(np.float32)
    ph = np.random.default_rng(1).uniform(-3, 3, (*f.shape, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(mag, f.affine), str(d / "sub-01_part-mag_T2starw.nii.gz"))
    nib.save(nib.Nifti1Image(ph, f.affine), str(d / "sub-01_part-phase_T2starw.nii.gz"))
    (d / "sub-01_part-mag_T2starw.json").write_text(json.dumps(
        {"EchoTime": [0.003, 0.006, 0.009, 0.012], "MagneticFieldStrength": 7}))
    f.save(np.ones((5, 5, 5), np.float32), d / "sub-01_T1w.nii.gz")
    f.write_participants([{"participant_id": "sub-01", "group": "NC"}])
    img = load_subject(discover(f.root).subjects["sub-01"])
    assert img.mag.shape == (4, *f.shape) and img.b0 == 7
    np.testing.assert_array_equal(img.mag[2], mag[..., 2])


def test_two_runs_of_the_gre_are_named_as_runs(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    for part in ("mag", "phase"):
        src = f.path("sub-01", 1, part)
        shutil.copy(src, src.with_name(src.name.replace("_echo-1", "_run-2_echo-1")))
    msg = _problems(discover(f.root))["sub-01"]
    assert "two runs (no run, run-2" in msg and "one run a subject" in msg


def test_echo_numbers_that_start_at_0_are_named_as_such(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    for echo in sorted({p for p in range(1, 10) if f.path("sub-01", p, "mag").exists()}):
        for part in ("mag", "phase"):
            src = f.path("sub-01", echo, part)
            src.rename(src.with_name(src.name.replace(f"_echo-{echo}_", f"_echo-{echo - 1}_")))
    msg = _problems(discover(f.root))["sub-01"]
    assert "echo numbers start at 1 in BIDS" in msg and "found echoes [0, 1" in msg
