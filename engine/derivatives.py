"""BIDS-derivative NIfTI outputs, for SPM/FSL/AFNI users.

The output folder of ``ferritin run`` is a BIDS derivative dataset::

    dataset_description.json
    sub-<label>/anat/sub-<label>_Chimap.nii.gz                      χ (ppm), GRE space
    sub-<label>/anat/sub-<label>_desc-qsm_mask.nii.gz              QSM mask, GRE space
    sub-<label>/anat/sub-<label>_space-<tpl>_res-<vs>mm_Chimap.nii.gz
    sub-<label>/anat/sub-<label>_space-<tpl>_res-<vs>mm_label-GM_desc-modulated_probseg.nii.gz
    sub-<label>/anat/sub-<label>_space-<tpl>_res-<vs>mm_label-GM_desc-modulatedsmoothed_probseg.nii.gz
    group/contrast-<name>_stat-t_statmap.nii.gz, …_mask.nii.gz, desc-roi_dseg.nii.gz

Each subject file has a JSON sidecar carrying the completion digest of the
store node it came from; a file whose digest already matches is not
rewritten, so exporting again after a partial re-run only touches what
changed.  Files are written under a temporary name and renamed, so a killed
export never leaves a truncated NIfTI behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ferritin import __version__
from ferritin.cohort.store import CohortStore

__all__ = ["write_dataset_description", "export_subject", "save_nifti", "TEMPLATE_SPACE"]

TEMPLATE_SPACE = "MNI152NLin2009cSym"


def save_nifti(data, affine, path: Path, sidecar: dict | None = None) -> None:
    """Write ``data`` as float32 (or int) NIfTI atomically, with an optional JSON sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        data = data.astype(np.float32)
    tmp = path.with_name(f".part-{path.name}")  # keeps the .nii.gz ending nibabel needs
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    if sidecar is not None:
        side = path.with_name(path.name.replace(".nii.gz", ".json"))
        tmp = side.with_name(f".{side.name}.part")
        tmp.write_text(json.dumps(sidecar, indent=2, default=_plain))
        os.replace(tmp, side)


def _plain(v):
    """numpy scalars and arrays in sidecars as plain JSON numbers and lists."""
    return v.tolist() if hasattr(v, "tolist") else str(v)


def write_dataset_description(out: Path, source: str | None = None) -> None:
    desc = {
        "Name": "ferritin derivatives (QSM, VBM, group statistics)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "ferritin", "Version": __version__}],
    }
    if source:
        desc["SourceDatasets"] = [{"URL": str(source)}]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "dataset_description.json").write_text(json.dumps(desc, indent=2))


def _current(path: Path, digest: str) -> bool:
    side = path.with_name(path.name.replace(".nii.gz", ".json"))
    if not (path.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text()).get("FerritinDigest") == digest
    except (OSError, ValueError):
        return False


def export_subject(store: CohortStore, subject: str, out: Path, voxel_size: float) -> list[Path]:
    """Write one subject's native and MNI maps as BIDS-derivative NIfTIs; return the paths written."""
    anat_dir = Path(out) / subject / "anat"
    written = []
    stem = f"{subject}_space-{TEMPLATE_SPACE}_res-{voxel_size:g}mm"
    qrec = store.record(f"derived/{subject}/qsm")
    if qrec is not None:
        chi_path = anat_dir / f"{subject}_Chimap.nii.gz"
        if not _current(chi_path, qrec["digest"]):
            q = store.open_node(f"derived/{subject}/qsm").load()
            aff = np.asarray(q.attrs["gre_affine"])
            meta = {"Units": "ppm", "Sources": [f"cohort.zarr/derived/{subject}/qsm"], "FerritinDigest": qrec["digest"],
                    "QSMParameters": qrec.get("params", {})}
            save_nifti(q["qsm_mask"].values > 0, aff, anat_dir / f"{subject}_desc-qsm_mask.nii.gz",
                       {"FerritinDigest": qrec["digest"]})
            save_nifti(q["chi"].values, aff, chi_path, meta)
            mni_path = anat_dir / f"{stem}_Chimap.nii.gz"
            save_nifti(q["chi_mni"].values, np.asarray(q.attrs["mni_affine"]), mni_path, meta)
            written += [chi_path, mni_path]
    arec = store.record(f"derived/{subject}/anat")
    if arec is not None:
        gm_path = anat_dir / f"{stem}_label-GM_desc-modulated_probseg.nii.gz"
        if not _current(gm_path, arec["digest"]):
            a = store.open_node(f"derived/{subject}/anat").load()
            aff = np.asarray(a.attrs["mni_affine"])
            meta = {"Sources": [f"cohort.zarr/derived/{subject}/anat"], "FerritinDigest": arec["digest"]}
            save_nifti(a["gm_mod"].values, aff, gm_path, meta)
            save_nifti(a["gm_mod_s"].values, aff, anat_dir / f"{stem}_label-GM_desc-modulatedsmoothed_probseg.nii.gz",
                       meta)
            written += [gm_path]
    return written
