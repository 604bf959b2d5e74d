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

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ferritin import __version__
from ferritin.cohort.store import CohortStore

from .cluster import subject_task
from .nuclei import nuclei_frame

__all__ = ["write_dataset_description", "export_subject", "export_subjects", "save_nifti", "nifti_gz", "TEMPLATE_SPACE"]

TEMPLATE_SPACE = "MNI152NLin2009cSym"


def t2star(r2star: np.ndarray) -> np.ndarray:
    """T2* (s) of an R2* map (1/s): NaN where R2* is not positive and finite."""
    r2star = np.asarray(r2star, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(r2star) & (r2star > 0), 1.0 / r2star, np.nan).astype(np.float32)


def nifti_gz(data, affine) -> bytes:
    """``data`` as the bytes of a gzipped NIfTI-1 file: float32 for floats, uint8 for bools.

    The gzip header carries no time stamp, so the same map gives the same bytes
    (nibabel's own writer stamps the time of writing).
    """
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=nib.openers.Opener.default_compresslevel, mtime=0)


def write_nifti_bytes(content: bytes, path: Path, sidecar: dict | None = None) -> None:
    """Write an encoded NIfTI (:func:`nifti_gz`) atomically, with an optional JSON sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part-{path.name}")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    if sidecar is not None:
        side = _sidecar_path(path)
        tmp = side.with_name(f".{side.name}.part")
        tmp.write_text(json.dumps(sidecar, indent=2, default=_plain))
        os.replace(tmp, side)


def save_nifti(data, affine, path: Path, sidecar: dict | None = None) -> None:
    """Write ``data`` as float32 (or int) NIfTI atomically, with an optional JSON sidecar."""
    write_nifti_bytes(nifti_gz(data, affine), path, sidecar)


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


def _sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a BIDS file: its name with the extension (``.nii.gz``, ``.tsv``) replaced."""
    name = path.name
    for ext in (".nii.gz", ".tsv"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"{path}: not a file with a BIDS sidecar (.nii.gz, .tsv)")


def _current(path: Path, digest: str) -> bool:
    side = _sidecar_path(path)
    if not (path.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text()).get("FerritinDigest") == digest
    except (OSError, ValueError):
        return False


def export_subject(store: CohortStore, subject: str, out: Path, voxel_size: float) -> list[Path]:
    """Write one subject's native and MNI maps as BIDS-derivative NIfTIs; return the paths written."""
    return export_subjects(store, [subject], out, voxel_size)


def export_subjects(store: CohortStore, subjects: list[str], out: Path, voxel_size: float, client=None) -> list[Path]:
    """:func:`export_subject` for many subjects; with a Dask ``client`` the maps are encoded on its workers.

    Reading a subject's maps and compressing them is the work; the workers
    return the files' bytes and this process writes them, so the output folder
    need not be one the workers can reach (an object-store run writes to a local
    folder first).  Files are written as each subject arrives.
    """
    out = Path(out)
    todo = []
    for sub in subjects:
        parts = _stale_parts(store, sub, out, voxel_size)
        if parts:
            todo.append((sub, parts))
    if client is None:
        results = (_encode_subject(str(store.path), sub, voxel_size, parts) for sub, parts in todo)
    else:
        from distributed import as_completed

        futures = [client.submit(_encode_subject, str(store.path), sub, voxel_size, parts, pure=False,
                                 key=f"export-{sub}") for sub, parts in todo]
        results = (f.result() for f in as_completed(futures))
    written = []
    for files in results:
        for rel, content, sidecar in files:
            write_nifti_bytes(content, out / rel, sidecar)
            written.append(out / rel)
    return sorted(written)


def _stem(subject: str, voxel_size: float) -> str:
    return f"{subject}_space-{TEMPLATE_SPACE}_res-{voxel_size:g}mm"


def _stale_parts(store: CohortStore, subject: str, out: Path, voxel_size: float) -> tuple[str, ...]:
    """Which of the subject's ``qsm`` and ``anat`` nodes have files missing or older than the node."""
    anat_dir = out / subject / "anat"
    stale = []
    qrec = store.record(f"derived/{subject}/qsm")
    if qrec is not None and not _current(anat_dir / f"{subject}_Chimap.nii.gz", qrec["digest"]):
        stale.append("qsm")
    arec = store.record(f"derived/{subject}/anat")
    gm_path = anat_dir / f"{_stem(subject, voxel_size)}_label-GM_desc-modulated_probseg.nii.gz"
    if arec is not None and not _current(gm_path, arec["digest"]):
        stale.append("anat")
    return tuple(stale)


@subject_task
def _encode_subject(store_path: str, subject: str, voxel_size: float, parts) -> list[tuple[str, bytes, dict | None]]:
    """The subject's files of ``parts`` as (path relative to the output folder, NIfTI bytes, sidecar or None)."""
    store = CohortStore(store_path)
    anat_dir = f"{subject}/anat"
    stem = _stem(subject, voxel_size)
    files = []
    if "qsm" in parts:
        qrec = store.record(f"derived/{subject}/qsm")
        node = store.open_node(f"derived/{subject}/qsm")
        q = node.load()
        aff = np.asarray(node.attrs["gre_affine"])
        meta = {"Units": "ppm", "Sources": [f"cohort.zarr/derived/{subject}/qsm"], "FerritinDigest": qrec["digest"],
                "QSMParameters": qrec.get("params", {})}
        files += [(f"{anat_dir}/{subject}_desc-qsm_mask.nii.gz", nifti_gz(q["qsm_mask"].values > 0, aff),
                   {"FerritinDigest": qrec["digest"]})]
        if "r2star" in q:  # stores written before R2* have none
            r2_meta = {**meta, "Units": "1/s", "Description": "R2* by a weighted log-linear fit above the noise "
                                                            "floor; T2* = 1/R2*"}
            t2_meta = {**r2_meta, "Units": "s", "Description": "T2* = 1/R2* of the R2starmap beside it"}
            files += [(f"{anat_dir}/{subject}_R2starmap.nii.gz", nifti_gz(q["r2star"].values, aff), r2_meta),
                      (f"{anat_dir}/{subject}_T2starmap.nii.gz", nifti_gz(t2star(q["r2star"].values), aff), t2_meta),
                      (f"{anat_dir}/{stem}_R2starmap.nii.gz",
                       nifti_gz(q["r2star_mni"].values, np.asarray(node.attrs["mni_affine"])), r2_meta)]
        if "nuclei" in q:  # the deep-grey table of this subject, as QSMxT writes one per subject
            frame = nuclei_frame(q["nuclei"].expand_dims(subject=[subject]))
            files += [(f"{anat_dir}/{subject}_desc-nuclei_stats.tsv",
                       frame.to_csv(sep="\t", index=False, na_rep="n/a").encode(),
                       {"Units": q["nuclei"].attrs.get("units", ""), "Atlas": q["nuclei"].attrs.get("atlas", ""),
                        "ErosionVoxels": q["nuclei"].attrs.get("erosion_vox"), "FerritinDigest": qrec["digest"]})]
        # the native χ last among its files: its sidecar's digest marks the set complete
        files += [(f"{anat_dir}/{stem}_Chimap.nii.gz",
                   nifti_gz(q["chi_mni"].values, np.asarray(node.attrs["mni_affine"])), meta),
                  (f"{anat_dir}/{subject}_Chimap.nii.gz", nifti_gz(q["chi"].values, aff), meta)]
    if "anat" in parts:
        arec = store.record(f"derived/{subject}/anat")
        node = store.open_node(f"derived/{subject}/anat")
        a = node[["gm_mod", "gm_mod_s"]].load()
        aff = np.asarray(node.attrs["mni_affine"])
        meta = {"Sources": [f"cohort.zarr/derived/{subject}/anat"], "FerritinDigest": arec["digest"]}
        files += [(f"{anat_dir}/{stem}_label-GM_desc-modulatedsmoothed_probseg.nii.gz",
                   nifti_gz(a["gm_mod_s"].values, aff), meta),
                  (f"{anat_dir}/{stem}_label-GM_desc-modulated_probseg.nii.gz", nifti_gz(a["gm_mod"].values, aff), meta)]
    return files
