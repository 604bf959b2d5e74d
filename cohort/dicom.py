"""DICOM → BIDS for one subject: dcm2niix converts, ferritin classifies and names.

dcm2niix (the ``dcm2niix`` wheel ships the binary) turns a folder of DICOM files
into NIfTI images with JSON sidecars.  This module reads those sidecars and
decides, from the acquisition itself rather than from file names, which series
is the T1-weighted anatomy and which is the multi-echo GRE (magnitude and phase
of every echo), in the way dcm2bids and heudiconv map series:

* magnitude / phase from ``ImageType`` (``M``/``MAGNITUDE``, ``P``/``PHASE``);
* echoes from ``EchoNumber`` and ``EchoTime``;
* the T1w from a 3-D single-echo magnitude with an inversion-prepared
  gradient-echo signature (``MPRAGE``, ``TFL``, ``TFE``, ``IR-FSPGR``, ``BRAVO``,
  ``SPGR``, ``InversionTime`` ...);
* the GRE from a gradient-echo (not EPI) series with two or more echo times
  and both magnitude and phase.

What the rules cannot decide is settled by a small mapping file (YAML or
JSON) of ``SeriesNumber: T1w | MEGRE | ignore``.  Everything found, and why a
series was not used, is reported so that a folder that gives nothing usable
says why (no phase, a single echo, a phase-difference-only field map,
several subjects mixed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .bids import validate_label
from .errors import FerritinError

__all__ = ["ConversionError", "ConvertedImage", "Series", "ConversionPlan", "ConversionResult", "convert_dicom",
           "plan_conversion",
           "dcm2niix_path", "read_mapping"]

#: Sidecar fields that identify a person; never copied into the BIDS dataset.
IDENTIFYING_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
                      "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
                      "StationName", "DeviceSerialNumber", "AcquisitionDateTime", "AcquisitionDate", "SeriesDate",
                      "StudyDate", "StudyID")

ROLES = ("T1w", "MEGRE", "ignore")

_T1_WORDS = re.compile(r"t1|mprage|mp-rage|mp_rage|mprag|tfl|tfe|spgr|bravo|ir[-_ ]?fspgr|mpr\b", re.IGNORECASE)
_NOT_T1_WORDS = re.compile(r"inv1|inv2|localizer|scout|survey|loc\b|t2|flair|dwi|bold", re.IGNORECASE)


class ConversionError(FerritinError):
    """A DICOM folder that cannot be turned into a usable BIDS subject; the message says why."""


@dataclass(frozen=True)
class ConvertedImage:
    """One NIfTI image written by dcm2niix and what its sidecar says about it."""

    nifti: Path
    meta: dict
    shape: tuple[int, ...]

    @property
    def series_number(self) -> int:
        return int(self.meta.get("SeriesNumber", -1))

    @property
    def image_type(self) -> tuple[str, ...]:
        it = self.meta.get("ImageType", ())
        return tuple(str(t).upper() for t in (it if isinstance(it, list) else [it]))

    @property
    def part(self) -> str:
        """``mag``, ``phase``, ``real``, ``imag`` or ``other`` (from ImageType)."""
        it = set(self.image_type)
        if "EchoTime1" in self.meta and "EchoTime2" in self.meta:
            return "phasediff"
        if it & {"P", "PHASE"}:
            return "phase"
        if it & {"REAL", "R"} and not it & {"M", "MAGNITUDE"}:
            return "real"
        if it & {"IMAGINARY", "I"} and not it & {"M", "MAGNITUDE"}:
            return "imag"
        if it & {"M", "MAGNITUDE"} or not it:
            return "mag"
        return "other"

    @property
    def echo_time(self) -> float | None:
        te = self.meta.get("EchoTime")
        return float(te) if isinstance(te, int | float) and not isinstance(te, bool) else None

    @property
    def derived(self) -> bool:
        return "DERIVED" in self.image_type


@dataclass
class Series:
    """The images of one acquisition (magnitude and phase series of one protocol are one acquisition)."""

    key: str
    images: list[ConvertedImage]
    role: str | None = None
    reason: str = ""

    @property
    def numbers(self) -> list[int]:
        return sorted({im.series_number for im in self.images})

    @property
    def description(self) -> str:
        m = self.images[0].meta
        return str(m.get("SeriesDescription") or m.get("ProtocolName") or "?")

    @property
    def echo_times(self) -> list[float]:
        return sorted({round(im.echo_time, 6) for im in self.images if im.echo_time is not None})

    def parts(self) -> set[str]:
        return {im.part for im in self.images}

    def label(self) -> str:
        nums = "+".join(str(n) for n in self.numbers)
        return f"series {nums} '{self.description}'"


@dataclass
class ConversionPlan:
    """What :func:`plan_conversion` decided: the T1w, the GRE, and every series with its reason."""

    series: list[Series]
    t1w: Series | None
    megre: Series | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = []
        for s in self.series:
            tes = ", ".join(f"{te * 1e3:.2f}" for te in s.echo_times)
            shape = "x".join(str(n) for n in s.images[0].shape)
            what = s.role or "not used"
            lines.append(f"  {s.label()}: {len(s.images)} image(s) {shape}, parts {'/'.join(sorted(s.parts()))}, "
                         f"TE {tes or '?'} ms -> {what}{': ' + s.reason if s.reason else ''}")
        return "\n".join(lines)


def dcm2niix_path() -> str:
    """The dcm2niix executable: the one the ``dcm2niix`` package ships, else one on PATH."""
    try:
        import dcm2niix as pkg

        exe = Path(pkg.bin)  # the wheel exposes the path of its binary
        if exe.exists():
            return str(exe)
    except (ImportError, AttributeError):
        pass
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise ConversionError("dcm2niix is not installed (pip install dcm2niix)")
    return exe


def run_dcm2niix(dicom_dir: Path, out_dir: Path) -> list[ConvertedImage]:
    """Convert every series under ``dicom_dir`` into ``out_dir`` and read what was written."""
    cmd = [dcm2niix_path(), "-b", "y", "-ba", "n", "-z", "y", "-f", "%s_%e_%p_%t", "-o", str(out_dir), str(dicom_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    images = []
    for js in sorted(out_dir.glob("*.json")):
        nii = js.with_suffix(".nii.gz")
        if not nii.exists():
            continue
        meta = json.loads(js.read_text())
        images.append(ConvertedImage(nii, meta, tuple(int(n) for n in nib.load(nii).shape)))
    if not images:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise ConversionError(f"{dicom_dir}: dcm2niix found no convertible DICOM images"
                              + (f" (it said: {tail})" if tail else ""))
    return images


def read_mapping(path: str | Path) -> dict[int, str]:
    """Read a ``SeriesNumber: role`` mapping (YAML or JSON), role one of T1w, MEGRE, ignore."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConversionError(f"{path}: cannot read the series mapping: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: the series mapping must be 'SeriesNumber: role' lines")
    mapping = {}
    for k, v in raw.items():
        try:
            number = int(k)
        except (TypeError, ValueError):
            raise ConversionError(f"{path}: {k!r} is not a series number") from None
        if v not in ROLES:
            raise ConversionError(f"{path}: series {number}: role {v!r} is not one of {', '.join(ROLES)}")
        mapping[number] = v
    return mapping


def _group_series(images: list[ConvertedImage]) -> list[Series]:
    """Magnitude and phase of one acquisition: same protocol and the same voxel grid.

    Siemens writes magnitude and phase as two series numbers, Philips and GE as one;
    grouping on protocol and geometry treats them alike.
    """
    groups: dict[str, list[ConvertedImage]] = {}
    for im in images:
        m = im.meta
        proto = str(m.get("ProtocolName") or m.get("SeriesDescription") or im.series_number)
        affine = np.round(nib.load(im.nifti).affine, 2).tolist()
        key = json.dumps([proto, im.shape[:3], affine, m.get("AcquisitionTime", "")[:5] if m.get("AcquisitionTime")
                          else ""])
        groups.setdefault(key, []).append(im)
    out = [Series(key, sorted(ims, key=lambda i: (i.series_number, i.echo_time or 0.0, i.part)))
           for key, ims in groups.items()]
    return sorted(out, key=lambda s: s.numbers[0])


def _t1w_problem(s: Series) -> str | None:
    """Why ``s`` is not a T1-weighted anatomical scan, or None if it is one."""
    m = s.images[0].meta
    words = " ".join(str(m.get(k, "")) for k in ("SeriesDescription", "ProtocolName", "SequenceName",
                                                  "PulseSequenceName", "ScanningSequence", "SequenceVariant"))
    if _NOT_T1_WORDS.search(str(m.get("SeriesDescription", "")) + " " + str(m.get("ProtocolName", ""))):
        return "named as a localizer, T2, FLAIR, DWI, BOLD or an MP2RAGE inversion"
    if s.parts() != {"mag"} or len(s.echo_times) > 1 or len(s.images) > 1:
        return "not a single-echo magnitude image"
    if len(s.images[0].shape) > 3 and s.images[0].shape[3] > 1:
        return "a 4-D series"
    if min(s.images[0].shape[:3]) < 64:
        return f"too few slices for a 3-D T1w ({min(s.images[0].shape[:3])})"
    is_3d = str(m.get("MRAcquisitionType", "3D")).upper() == "3D"
    inversion = "InversionTime" in m or "IR" in str(m.get("ScanningSequence", "")).upper()
    if not is_3d:
        return "a 2-D acquisition"
    if not (_T1_WORDS.search(words) or inversion):
        return "no T1-weighted sequence signature (MPRAGE, TFL, TFE, SPGR, BRAVO, inversion time)"
    return None


def _megre_problem(s: Series) -> str | None:
    """Why ``s`` is not a usable multi-echo GRE (magnitude and phase of >= 2 echoes), or None."""
    m = s.images[0].meta
    parts = s.parts()
    seq = str(m.get("ScanningSequence", "")).upper()
    if "EP" in seq.replace("\\", " ").split() or "EP" == seq:
        return "an echo-planar series"
    if "phasediff" in parts:
        return "a phase-difference field map (only the difference of two echoes' phase); QSM needs each echo's phase"
    if "GR" not in seq and seq:
        return f"not a gradient-echo sequence (ScanningSequence {seq})"
    if len(s.echo_times) < 2:
        return "a single echo; QSM here needs two or more echoes"
    if "phase" not in parts:
        return "magnitude only: no phase images (switch on phase reconstruction on the scanner)"
    if "mag" not in parts:
        return "phase only: no magnitude images"
    for part in ("mag", "phase"):
        tes = [round(im.echo_time, 6) for im in s.images if im.part == part and im.echo_time is not None]
        if len(tes) != len(set(tes)):
            return f"several {part} images share an echo time (repeated runs?); pick one with a mapping file"
        if sorted(tes) != s.echo_times:
            return f"{part} images do not cover every echo time"
    if any(len(im.shape) > 3 and im.shape[3] > 1 for im in s.images):
        return "echoes stored as one 4-D image without per-echo times"
    return None


def plan_conversion(images: list[ConvertedImage], mapping: dict[int, str] | None = None) -> ConversionPlan:
    """Decide which series is the T1w and which the multi-echo GRE.

    Raises
    ------
    ConversionError
        If images of several people are mixed, or a role has several candidates the
        rules cannot choose between (a mapping file decides), or a mapping names an
        unknown series.
    """
    mapping = mapping or {}
    people = {str(im.meta.get("PatientID") or im.meta.get("PatientName") or "") for im in images} - {""}
    if len(people) > 1:
        raise ConversionError(f"the folder mixes {len(people)} people (different PatientID); "
                              "convert one subject's folder at a time")
    series = _group_series(images)
    known = {n for s in series for n in s.numbers}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ConversionError(f"the mapping names series {unknown} that are not in the folder (found {sorted(known)})")
    candidates: dict[str, list[Series]] = {"T1w": [], "MEGRE": []}
    for s in series:
        forced = {mapping[n] for n in s.numbers if n in mapping}
        if len(forced) > 1:
            raise ConversionError(f"{s.label()}: the mapping gives it two roles {sorted(forced)}")
        if forced:
            role = forced.pop()
            s.reason = "set by the mapping file"
            if role != "ignore":
                problem = _t1w_problem(s) if role == "T1w" else _megre_problem(s)
                if role == "MEGRE" and problem:
                    raise ConversionError(f"{s.label()} is mapped to MEGRE but is {problem}")
                candidates[role].append(s)
            continue
        t1_problem, gre_problem = _t1w_problem(s), _megre_problem(s)
        if t1_problem is None:
            candidates["T1w"].append(s)
        elif gre_problem is None:
            candidates["MEGRE"].append(s)
        else:
            s.reason = gre_problem if len(s.echo_times) > 1 or "phase" in s.parts() else t1_problem
    chosen = {}
    for role, found in candidates.items():
        if len(found) > 1 and role == "T1w":
            # prefer the original over a derived reconstruction (e.g. a normalised copy)
            original = [s for s in found if not any(im.derived for im in s.images)]
            found = original or found
        if len(found) > 1:
            names = "; ".join(s.label() for s in found)
            raise ConversionError(f"several {role} candidates ({names}); choose one with --mapping "
                                  f"('SERIES: {role}' and 'SERIES: ignore' lines)")
        chosen[role] = found[0] if found else None
        if found:
            found[0].role = role
    return ConversionPlan(series, chosen["T1w"], chosen["MEGRE"])


def _phase_units(data: np.ndarray) -> str:
    """``rad`` if dcm2niix already scaled the phase onto [-pi, pi], else ``arbitrary``."""
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    return "rad" if -np.pi - 1e-3 <= lo and hi <= np.pi + 1e-3 and hi - lo > 3.0 else "arbitrary"


def _bids_sidecar(meta: dict, **extra) -> dict:
    out = {k: v for k, v in meta.items() if k not in IDENTIFYING_FIELDS}
    out.update(extra)
    return out


def _entities(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def _files_to_write(plan: ConversionPlan, subject: str, session: str | None) -> list[tuple[ConvertedImage, str, dict]]:
    """(image, BIDS file stem, sidecar) for every image that goes into the dataset."""
    stem = _entities(subject, session)
    out = []
    if plan.t1w is not None:
        im = plan.t1w.images[0]
        out.append((im, f"{stem}_T1w", _bids_sidecar(im.meta)))
    if plan.megre is not None:
        tes = plan.megre.echo_times
        for im in plan.megre.images:
            if im.part not in ("mag", "phase"):
                continue
            echo = tes.index(round(im.echo_time, 6)) + 1
            extra = {"EchoTime": im.echo_time, "EchoNumber": echo}
            if im.part == "phase":
                extra["Units"] = _phase_units(np.asanyarray(nib.load(im.nifti).dataobj))
            out.append((im, f"{stem}_echo-{echo}_part-{im.part}_MEGRE", _bids_sidecar(im.meta, **extra)))
    return out


def _add_participant(bids_dir: Path, subject: str) -> bool:
    """Add ``sub-<subject>`` to participants.tsv (other columns n/a); False if it was there."""
    tsv = bids_dir / "participants.tsv"
    pid = f"sub-{subject}"
    if not tsv.exists():
        tsv.write_text(f"participant_id\tgroup\tage\tsex\n{pid}\tn/a\tn/a\tn/a\n")
        return True
    lines = tsv.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t")
    if any(line.split("\t")[0].strip() == pid for line in lines[1:]):
        return False
    row = [pid] + ["n/a"] * (len(header) - 1)
    text = "\n".join([*lines, "\t".join(row)]) + "\n"
    tmp = tsv.with_name(".participants.tsv.tmp")
    tmp.write_text(text)
    tmp.replace(tsv)
    return True


def _write_dataset_description(bids_dir: Path) -> None:
    desc = bids_dir / "dataset_description.json"
    if not desc.exists():
        from ferritin import __version__

        desc.write_text(json.dumps({"Name": bids_dir.name, "BIDSVersion": "1.10.0", "DatasetType": "raw",
                                    "GeneratedBy": [{"Name": "ferritin convert", "Version": __version__},
                                                    {"Name": "dcm2niix"}]}, indent=2) + "\n")


@dataclass
class ConversionResult:
    """What :func:`convert_dicom` wrote."""

    plan: ConversionPlan
    written: list[Path]
    participant_added: bool
    subject_dir: Path


def convert_dicom(dicom_dir: str | Path, bids_dir: str | Path, subject: str, session: str | None = None,
                  mapping: dict[int, str] | None = None, force: bool = False,
                  progress: bool = False) -> ConversionResult:
    """Convert one subject's DICOM folder into ``bids_dir`` as ``sub-<subject>[/ses-<session>]/anat``.

    The subject's files are written into a hidden folder first and moved into place
    in one rename, so an interrupted conversion leaves nothing half-written; an
    existing subject (or session) folder is only replaced with ``force``.

    Raises
    ------
    ConversionError
        If the folder holds no usable multi-echo GRE (with the reason for each
        series) or no T1w, mixes people, is ambiguous, or the subject exists.
    """
    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    try:
        subject = validate_label(subject, "subject label")
        session = validate_label(session, "session label") if session else None
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    if not dicom_dir.is_dir():
        raise ConversionError(f"{dicom_dir}: not a folder")
    target = bids_dir / f"sub-{subject}" / (f"ses-{session}" if session else "")
    target = target / "anat" if session is None else target
    final = target if session else target.parent  # the folder that is replaced as a whole
    if final.exists() and any(final.iterdir()) and not force:
        raise ConversionError(f"{final} exists; use --force to replace it")
    with tempfile.TemporaryDirectory(prefix="ferritin-dcm2niix-") as tmp:
        images = run_dcm2niix(dicom_dir, Path(tmp))
        plan = plan_conversion(images, mapping)
        if plan.megre is None:
            raise ConversionError(f"{dicom_dir}: no usable multi-echo GRE (magnitude and phase of two or more "
                                  f"echoes) was found:\n{plan.describe()}")
        if plan.t1w is None:
            raise ConversionError(f"{dicom_dir}: no T1-weighted series was found (set one with a mapping file):\n"
                                  f"{plan.describe()}")
        bids_dir.mkdir(parents=True, exist_ok=True)
        staging = bids_dir / f".sub-{subject}{'_ses-' + session if session else ''}.converting"
        shutil.rmtree(staging, ignore_errors=True)
        anat = staging / "anat"
        anat.mkdir(parents=True)
        written = []
        todo = _files_to_write(plan, subject, session)
        from tqdm.auto import tqdm

        for im, stem, sidecar in tqdm(todo, desc=f"sub-{subject}", unit="image", disable=not progress):
            shutil.copyfile(im.nifti, anat / f"{stem}.nii.gz")
            (anat / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
            written.append(final / "anat" / f"{stem}.nii.gz")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    staging.replace(final)
    _write_dataset_description(bids_dir)
    added = _add_participant(bids_dir, subject)
    return ConversionResult(plan, written, added, final)
