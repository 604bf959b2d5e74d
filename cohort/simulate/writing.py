"""Writing a simulated cohort as a BIDS dataset with its ground truth, resumably and in parallel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..store import digest_params
from ..templates import load_template
from .acquisition import SubjectTruth, simulate_subject
from .anatomy import effect_maps
from .geometry import _world_coords
from .participants import sample_participants
from .spec import SimulationSpec
from .tissue import PHASE_STEP, SIMULATOR_VERSION

__all__ = ["write_bids_subject", "unfinished_simulation", "simulate_cohort"]

def _save(data, affine, path: Path, dtype=np.float32, step: float | None = None):
    """Write an image; one held as multiples of ``step`` as a scanner does, int16 codes with ``scl_slope``."""
    if step is None:
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    else:
        img = nib.Nifti1Image(np.rint(np.asarray(data, dtype=np.float64) / step).astype(np.int16), affine)
        img.header.set_slope_inter(step, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_bids_subject(root: Path, truth: SubjectTruth, spec: SimulationSpec, truth_maps: bool = True) -> None:
    """Write one subject's images and sidecars, and (``truth_maps``) its ground-truth images."""
    root = Path(root)
    sub = truth.subject
    anat = root / sub / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for n, te in enumerate(truth.echo_times, start=1):
        for part, data, step in (("mag", truth.mag[n - 1], truth.mag_step), ("phase", truth.phase[n - 1], PHASE_STEP)):
            base = anat / f"{sub}_echo-{n}_part-{part}_MEGRE"
            _save(data, truth.gre_affine, base.with_name(base.name + ".nii.gz"), step=step)
            meta = {"EchoTime": float(te), "MagneticFieldStrength": spec.b0, "FlipAngle": 20,
                    "RepetitionTime": 0.0311, "Manufacturer": "ferritin-simulator"}
            if part == "phase":
                meta["Units"] = "rad"
            base.with_name(base.name + ".json").write_text(json.dumps(meta, indent=2))
    _save(truth.t1w, truth.t1w_affine, anat / f"{sub}_T1w.nii.gz", step=truth.t1w_step)
    (anat / f"{sub}_T1w.json").write_text(json.dumps(
        {"MagneticFieldStrength": spec.b0, "RepetitionTime": 0.00666, "EchoTime": 0.00293, "InversionTime": 0.45,
         "FlipAngle": 12, "Manufacturer": "ferritin-simulator"}, indent=2))
    if truth_maps:
        _write_truth_maps(root / "derivatives" / "ground-truth" / sub, truth, spec)


def _write_truth_maps(gt: Path, truth: SubjectTruth, spec: SimulationSpec) -> None:
    sub = truth.subject
    _save(truth.chi_native, truth.gre_affine, gt / f"{sub}_space-GRE_Chimap.nii.gz")
    _save(truth.brain_mask_native, truth.gre_affine, gt / f"{sub}_space-GRE_desc-brain_mask.nii.gz", np.uint8)
    _save(truth.local_field_ppm, truth.gre_affine, gt / f"{sub}_space-GRE_desc-local_fieldmap.nii.gz")
    _save(truth.total_field_ppm, truth.gre_affine, gt / f"{sub}_space-GRE_desc-total_fieldmap.nii.gz")
    for lab, data in (("GM", truth.gm_t1), ("WM", truth.wm_t1), ("CSF", truth.csf_t1)):
        _save(data, truth.t1w_affine, gt / f"{sub}_space-T1w_label-{lab}_probseg.nii.gz")
    grid = load_template(spec.voxel_size).grid
    _save(truth.mni["chi_brain"], grid.affine, gt / f"{sub}_space-MNI152NLin2009cSym_Chimap.nii.gz")
    for lab in ("gm", "wm", "csf"):
        _save(truth.mni[lab], grid.affine, gt / f"{sub}_space-MNI152NLin2009cSym_label-{lab.upper()}_probseg.nii.gz")
    _save(truth.mni["gm_mod"], grid.affine, gt / f"{sub}_space-MNI152NLin2009cSym_label-GM_desc-modulated_probseg.nii.gz")
    # The T1w-scanner → MNI mapping, sampled on the T1w grid (mm coordinates).
    t1_mni = truth.placement.to_mni(_world_coords(truth.t1w.shape, truth.t1w_affine))
    _save(np.moveaxis(t1_mni, 0, -1), truth.t1w_affine, gt / f"{sub}_from-T1w_to-MNI152NLin2009cSym_mode-points_xfm.nii.gz")
    (gt / f"{sub}_from-GRE_to-T1w_mode-scanner_xfm.json").write_text(json.dumps(
        {"matrix": truth.placement.motion.tolist(),
         "description": "4x4 rigid map from GRE scanner mm to T1w scanner mm (head motion between scans)"}, indent=2))


def write_dataset_files(root: Path, spec: SimulationSpec, participants: pd.DataFrame, truths: dict) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "ferritin simulated cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "ferritin simulate"}]}, indent=2))
    cols = ["participant_id", "group", "age", "sex", "alsfrs_r", "umn", "dd", "dpr"]
    participants[cols].to_csv(root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    (root / "participants.json").write_text(json.dumps({
        "group": {"Description": "diagnostic group",
                  "Levels": {g: ("patients" if g == spec.patient_group else "controls") for g in spec.n_per_group}},
        "age": {"Description": "age at scan", "Units": "years"},
        "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
        "alsfrs_r": {"Description": "ALS Functional Rating Scale - Revised (0-48)"},
        "umn": {"Description": "Penn upper motor neuron score"},
        "dd": {"Description": "disease duration", "Units": "months"},
        "dpr": {"Description": "disease progression rate (48 - ALSFRS-R) / DD", "Units": "points/month"},
    }, indent=2))
    gt = root / "derivatives" / "ground-truth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "dataset_description.json").write_text(json.dumps({
        "Name": "ferritin ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "ferritin simulate"}]}, indent=2))
    truth_tab = participants[["participant_id", "group", "severity", "head_scale"]].copy()
    truth_tab["tiv_ml"] = [truths[s]["tiv_ml"] for s in truth_tab["participant_id"]]
    truth_tab.to_csv(gt / "participants.tsv", sep="\t", index=False, float_format="%.6g")
    (gt / "simulation.json").write_text(json.dumps(spec.to_json(), indent=2, default=float))
    template = load_template(spec.voxel_size)
    for name, w in effect_maps(template, spec.effects).items():
        _save(w, template.grid.affine, gt / f"effect-{name}_space-MNI152NLin2009cSym_mask.nii.gz")


def _subject_digest(spec: SimulationSpec, row: dict, index: int, truth_maps: bool) -> str:
    return digest_params(spec.to_json(), row, index, truth_maps, SIMULATOR_VERSION)


def _done_marker(root: Path, subject: str) -> Path:
    return root / "derivatives" / "ground-truth" / subject / f"{subject}_simulation.json"


def _finished_subject(root: Path, subject: str, digest: str) -> dict | None:
    """The record of a subject already written by this very simulation, or None."""
    try:
        done = json.loads(_done_marker(root, subject).read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("digest") == digest else None


def _simulate_and_write(spec: SimulationSpec, row: dict, index: int, root: str, truth_maps: bool = True) -> dict:
    root = Path(root)
    digest = _subject_digest(spec, row, index, truth_maps)
    if (done := _finished_subject(root, row["participant_id"], digest)) is not None:
        return done
    truth = simulate_subject(spec, row, index)
    write_bids_subject(root, truth, spec, truth_maps=truth_maps)
    done = {"subject": truth.subject, "tiv_ml": truth.tiv_ml, "digest": digest}
    marker = _done_marker(root, truth.subject)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=2))
    os.replace(tmp, marker)  # written last: a subject without it is simulated again
    return done


def unfinished_simulation(folder: str | Path) -> bool:
    """Whether ``folder`` holds a simulation that was stopped before it wrote its participants table."""
    folder = Path(folder)
    if (folder / "participants.tsv").exists():
        return False
    return any((folder / "derivatives" / "ground-truth").glob("sub-*/sub-*_simulation.json"))


def simulate_cohort(out: str | Path, spec: SimulationSpec, client=None, progress: bool = False,
                    truth_maps: bool = True) -> pd.DataFrame:
    """Simulate a cohort and write it as a BIDS dataset at ``out``.

    Subjects are generated in parallel on ``client`` (a distributed Client)
    when given, else one after another.  A subject this same simulation has
    already written completely (an interrupted run) is kept, not simulated
    again.  ``truth_maps=False`` leaves out each subject's ground-truth images
    (the dataset's planted effects and truth table are always written), which
    at 1 mm take about a third of the dataset.  Returns the participants table
    with the hidden truth columns (severity, head scale, TIV).
    """
    out = Path(out)
    participants = sample_participants(spec)
    rows = participants.to_dict("records")
    truths: dict = {}
    if client is None:
        for i, row in enumerate(rows):
            r = _simulate_and_write(spec, row, i, str(out), truth_maps)
            truths[r["subject"]] = r
    else:
        from ..progress import track

        n = len(rows)
        futures = client.map(_simulate_and_write, [spec] * n, rows, list(range(n)), [str(out)] * n, [truth_maps] * n,
                             pure=False, key=[f"simulate-{r['participant_id']}" for r in rows])
        for fut in track(futures, "simulate", enabled=progress):
            r = fut.result()
            truths[r["subject"]] = r
    write_dataset_files(out, spec, participants, truths)
    participants["tiv_ml"] = [truths[s]["tiv_ml"] for s in participants["participant_id"]]
    return participants
