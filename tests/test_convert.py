"""``ferritin convert``: one subject's DICOM folder into BIDS, on a real Philips 3 T volunteer."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ferritin.cohort.bids import discover, load_subject
from ferritin.cohort.dicom import ConversionError, convert_dicom, read_mapping
from ferritin.engine.cli import main

pytestmark = pytest.mark.slow  # dcm2niix on the real DICOM folder

PHILIPS = Path(__file__).parent / "data" / "real-philips-3t" / "dicom"


def _subset(tmp_path: Path, keep) -> Path:
    """A copy of the Philips folder with only the DICOM files for which ``keep(dataset)`` is true."""
    out = tmp_path / "dicom"
    for f in sorted(PHILIPS.rglob("IM_*")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if keep(ds):
            dest = out / f.parent.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return out


def _is_phase(ds) -> bool:
    return "P" in [str(t).upper() for t in ds.ImageType]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    bids = tmp_path_factory.mktemp("bids")
    result = convert_dicom(PHILIPS, bids, "01")
    return bids, result


def test_philips_folder_gives_t1w_and_two_echoes(converted):
    bids, result = converted
    anat = bids / "sub-01" / "anat"
    names = sorted(p.name for p in anat.glob("*.nii.gz"))
    assert names == ["sub-01_T1w.nii.gz"] + [f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in (1, 2)
                                             for p in ("mag", "phase")]
    assert result.plan.t1w.numbers == [1301] and result.plan.megre.numbers == [2001]
    te = [json.loads((anat / f"sub-01_echo-{e}_part-mag_MEGRE.json").read_text())["EchoTime"] for e in (1, 2)]
    assert te == pytest.approx([0.0023, 0.0046])  # seconds
    phase_meta = json.loads((anat / "sub-01_echo-2_part-phase_MEGRE.json").read_text())
    assert phase_meta["Units"] == "rad" and phase_meta["MagneticFieldStrength"] == 3
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(phase_meta)
    assert nib.load(anat / "sub-01_T1w.nii.gz").shape == (170, 256, 256)
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert table.participant_id.tolist() == ["sub-01"]


def test_converted_subject_loads_with_phase_in_radians(converted):
    bids, _ = converted
    images = load_subject(discover(bids).subjects["sub-01"])
    assert images.phase.shape == (2, 80, 80, 53) and images.b0 == 3.0
    assert -np.pi - 1e-3 <= images.phase.min() and images.phase.max() <= np.pi + 1e-3
    np.testing.assert_allclose(images.echo_times, [0.0023, 0.0046])


def test_existing_subject_is_kept_without_force(converted, tmp_path):
    bids, _ = converted
    before = (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").stat().st_mtime_ns
    with pytest.raises(ConversionError, match="exists; use --force"):
        convert_dicom(PHILIPS, bids, "01")
    assert (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").stat().st_mtime_ns == before


def test_force_replaces_and_session_goes_under_ses(tmp_path):
    bids = tmp_path / "bids"
    convert_dicom(PHILIPS, bids, "02", session="base")
    assert (bids / "sub-02" / "ses-base" / "anat" / "sub-02_ses-base_T1w.nii.gz").exists()
    convert_dicom(PHILIPS, bids, "02", session="base", force=True)
    assert not list(bids.glob(".*converting"))
    assert pd.read_csv(bids / "participants.tsv", sep="\t").participant_id.tolist() == ["sub-02"]


@pytest.mark.parametrize("keep, reason", [
    (lambda ds: not _is_phase(ds), "magnitude only: no phase images"),
    (lambda ds: int(getattr(ds, "EchoNumbers", 1)) == 1 or "MPRAGE" in str(ds.SeriesDescription), "a single echo"),
], ids=["no-phase", "single-echo"])
def test_folder_without_usable_gre_says_why(tmp_path, keep, reason):
    folder = _subset(tmp_path, keep)
    with pytest.raises(ConversionError, match="no usable multi-echo GRE") as err:
        convert_dicom(folder, tmp_path / "bids", "01")
    assert reason in str(err.value) and "series 1301" in str(err.value)
    assert not (tmp_path / "bids" / "sub-01").exists()


def test_mixed_subjects_are_refused(tmp_path):
    folder = _subset(tmp_path, lambda ds: True)
    for f in sorted((folder / "1301_ADNI_Sag3D_MPRAGE").iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientID = "someone-else"
        ds.save_as(f)
    with pytest.raises(ConversionError, match="mixes 2 people"):
        convert_dicom(folder, tmp_path / "bids", "01")


def test_mapping_file_decides(tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text("1301: ignore\n")
    with pytest.raises(ConversionError, match="no T1-weighted series"):
        convert_dicom(PHILIPS, tmp_path / "bids", "01", mapping=read_mapping(mapping))
    mapping.write_text("1301: MEGRE\n")
    with pytest.raises(ConversionError, match="mapped to MEGRE but is a single echo"):
        convert_dicom(PHILIPS, tmp_path / "bids", "01", mapping=read_mapping(mapping))
    mapping.write_text("99: T1w\n")
    with pytest.raises(ConversionError, match=r"series \[99\] that are not in the folder"):
        convert_dicom(PHILIPS, tmp_path / "bids", "01", mapping=read_mapping(mapping))
    mapping.write_text("1301: T2w\n")
    with pytest.raises(ConversionError, match="role 'T2w' is not one of"):
        read_mapping(mapping)


def test_cli_reports_what_it_found(tmp_path, capsys):
    assert main(["convert", str(PHILIPS), str(tmp_path / "bids"), "--subject", "sub-07", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "series 1301 'ADNI_Sag3D MPRAGE'" in out and "-> T1w" in out and "-> MEGRE" in out
    assert main(["convert", str(PHILIPS), str(tmp_path / "bids"), "--subject", "07", "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "bids"), "--subject", "08"]) == 2
    assert main(["convert", str(PHILIPS), str(tmp_path / "bids"), "--subject", "../x"]) == 2
