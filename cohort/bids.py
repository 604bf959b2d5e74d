"""Read and validate a BIDS dataset of multi-echo GRE and T1w images.

Supported layouts (per subject, optionally inside one ``ses-*`` folder)::

    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-..]_echo-<n>_part-mag_MEGRE.nii[.gz]   (+ .json)
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-..]_echo-<n>_part-phase_MEGRE.nii[.gz] (+ .json)
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-..]_part-{mag,phase}_T2starw.nii[.gz]  (older: 4-D echoes)
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-..]_T1w.nii[.gz]
    participants.tsv (+ participants.json)

Discovery (:func:`discover`) only looks at file names and sidecars; loading
(:func:`load_subject`) reads the images and checks them against each other.
Both report problems as :class:`~cohort.errors.SubjectError` naming the subject
and the file, so the caller can exclude one subject and go on.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .errors import DatasetError, Problem, SubjectError
from .vocabulary import SEX_COLUMNS, check_categories, check_ranges

__all__ = [
    "SubjectFiles",
    "SubjectImages",
    "BIDSDataset",
    "discover",
    "read_participants",
    "load_subject",
    "validate_label",
]

LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_NII = r"\.nii(?:\.gz)?$"
_MEGRE_RE = re.compile(r"_echo-(?P<echo>\d+)_part-(?P<part>mag|phase)_MEGRE" + _NII)
_T2S_RE = re.compile(r"_part-(?P<part>mag|phase)_T2starw" + _NII)
_T1_RE = re.compile(r"_T1w" + _NII)

#: Echo times above this (in "seconds") can only be milliseconds.
_TE_MS_THRESHOLD = 0.5
_AFFINE_ATOL = 1e-4


def validate_label(label: str, what: str = "participant label") -> str:
    """Return the bare BIDS label of ``label`` (``"sub-01"`` → ``"01"``).

    Raises
    ------
    ValueError
        If the label is not alphanumeric, which also refuses labels that try
        to escape the dataset (``"../.."``).
    """
    bare = label[4:] if label.startswith("sub-") else label
    if not LABEL_RE.match(bare):
        raise ValueError(
            f"invalid {what} {label!r}: BIDS labels are letters and digits only"
        )
    return bare


@dataclass(frozen=True)
class EchoFiles:
    """The magnitude and phase image of one echo (or of all echoes, 4-D)."""

    echo: int
    mag: Path
    phase: Path


@dataclass(frozen=True)
class SubjectFiles:
    """The files found for one subject."""

    subject: str  # "sub-01"
    root: Path
    echoes: tuple[EchoFiles, ...]
    t1w: Path | None
    layout: str  # "MEGRE" or "T2starw"

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def all_files(self) -> list[Path]:
        """Every file whose content defines this subject's images."""
        out: list[Path] = []
        for e in self.echoes:
            for p in (e.mag, e.phase):
                out.append(p)
                sc = sidecar_of(p)
                if sc.exists():
                    out.append(sc)
        if self.t1w is not None:
            out.append(self.t1w)
            sc = sidecar_of(self.t1w)
            if sc.exists():
                out.append(sc)
        return sorted(set(out))


@dataclass
class SubjectImages:
    """One subject's images, loaded and checked.

    Arrays are in NIfTI voxel order (i, j, k); the GRE arrays have the echo
    axis first.  Phase is in radians, echo times in seconds, B0 in tesla.
    """

    subject: str
    mag: np.ndarray  # (echo, i, j, k) float32
    phase: np.ndarray  # (echo, i, j, k) float32, radians
    echo_times: np.ndarray  # (echo,) seconds
    gre_affine: np.ndarray  # (4, 4)
    b0: float  # tesla
    t1w: np.ndarray | None  # (i, j, k) float32
    t1w_affine: np.ndarray | None
    notes: list[str] = field(default_factory=list)


@dataclass
class BIDSDataset:
    """The result of :func:`discover`: usable subjects and the problems found."""

    root: Path
    subjects: dict[str, SubjectFiles]
    participants: pd.DataFrame
    descriptions: dict
    problems: list[Problem]

    @property
    def notes(self) -> list[str]:
        """How participants.tsv was read where it was not taken as written (e.g. ``male`` read as ``M``)."""
        return list(self.participants.attrs.get("notes", []))


def sidecar_of(path: Path) -> Path:
    """The JSON sidecar path of a NIfTI file."""
    name = Path(path).name
    stem = re.sub(_NII, "", name)
    return Path(path).with_name(stem + ".json")


def _read_json(path: Path, subject: str | None, rel: str) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SubjectError(subject, rel, f"cannot read sidecar: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubjectError(subject, rel, f"sidecar is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubjectError(subject, rel, f"sidecar is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SubjectError(subject, rel, "sidecar must hold a JSON object")
    return data


def read_participants(root: str | Path) -> tuple[pd.DataFrame, dict, list[Problem]]:
    """Read ``participants.tsv`` (and ``participants.json``).

    ``n/a`` is read as missing.  The table is indexed by ``subject``
    (``"sub-01"``).  Rows with invalid or duplicate labels are dropped and
    reported.

    Returns
    -------
    table : pandas.DataFrame
    descriptions : dict
        The content of participants.json (column descriptions), or ``{}``.
    problems : list of Problem
    """
    root = Path(root)
    tsv = root / "participants.tsv"
    problems: list[Problem] = []
    if not tsv.exists():
        raise DatasetError(f"{tsv}: participants.tsv is missing; it must list participant_id and group")
    try:
        text = tsv.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"participants.tsv: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DatasetError(f"participants.tsv: cannot be read: {exc.strerror or exc}") from exc
    if not text.strip():
        raise DatasetError("participants.tsv: the file is empty")
    table, row_problems = _parse_tsv(text)
    problems.extend(row_problems)
    if "participant_id" not in table.columns:
        raise DatasetError("participants.tsv: no participant_id column")
    if table.empty:
        raise DatasetError("participants.tsv: no participants listed")
    keep = []
    seen: set[str] = set()
    for row, pid in zip(table.index, table["participant_id"]):
        if pd.isna(pid):
            problems.append(Problem(None, "participants.tsv", f"row {row}: participant_id is empty; row ignored"))
            keep.append(False)
            continue
        pid = str(pid).strip()
        try:
            bare = validate_label(pid)
        except ValueError as exc:
            problems.append(Problem(None, "participants.tsv", f"row {row}: {exc}"))
            keep.append(False)
            continue
        sub = f"sub-{bare}"
        if sub in seen:
            problems.append(Problem(sub, "participants.tsv", f"row {row}: duplicate participant_id; all rows of {sub} ignored"))
            keep.append(False)
            continue
        seen.add(sub)
        keep.append(True)
    dup_subjects = {p.subject for p in problems if p.subject and "duplicate" in p.message}
    table = table[keep].copy()
    table["subject"] = ["sub-" + validate_label(str(p).strip()) for p in table["participant_id"]]
    table = table[~table["subject"].isin(dup_subjects)]
    row_of = dict(zip(table["subject"], table.index))
    table = table.drop(columns="participant_id").set_index("subject")
    table, bad_numbers = _check_numeric_columns(table, row_of)
    problems.extend(bad_numbers)
    table, implausible = check_ranges(table, row_of)
    problems.extend(implausible)
    table, unreadable, notes = check_categories(table, row_of)
    problems.extend(unreadable)
    table.attrs["notes"] = notes  # what was read as what: ingest prints them, the store and the report keep them
    descriptions: dict = {}
    js = root / "participants.json"
    if js.exists():
        try:
            descriptions = _read_json(js, None, "participants.json")
        except SubjectError as exc:
            problems.append(exc.problem)
    return table, descriptions, problems


#: Columns whose values are numbers wherever they are given (covariates and clinical scores).
NUMERIC_COLUMNS = ("age", "alsfrs_r", "umn", "dd", "dpr", "tiv")


def _parse_tsv(text: str) -> tuple[pd.DataFrame, list[Problem]]:
    """participants.tsv as a table of text, every row checked against the header.

    BIDS TSV has no quoting: fields are split on tabs only, so a stray quote is
    kept as a character instead of swallowing rows.  Spaces around names and
    values (spreadsheet exports) are removed; a trailing tab is an empty field
    and dropped; a row with more or fewer fields than the header is refused by
    its row number, since its columns cannot be matched to names.
    """
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    header = [h.strip() for h in lines[0].split("\t")]
    while header and header[-1] == "":
        header.pop()
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DatasetError(f"participants.tsv: column {dupes[0]!r} appears more than once in the header")
    if "" in header:
        raise DatasetError(f"participants.tsv: column {header.index('') + 1} of the header has no name")
    rows, numbers, problems = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        while len(fields) > len(header) and fields[-1] == "":
            fields.pop()  # trailing tabs
        if len(fields) != len(header):
            pid = fields[0] if fields else ""
            who = f"sub-{pid[4:] if pid.startswith('sub-') else pid}" if LABEL_RE.match(pid.removeprefix("sub-")) \
                else None
            problems.append(Problem(who, "participants.tsv", f"row {number}: {len(fields)} fields for "
                                                            f"{len(header)} columns; row ignored"))
            continue
        rows.append(fields)
        numbers.append(number)
    table = pd.DataFrame(rows, columns=header, index=pd.Index(numbers, name="row"), dtype=object)
    table = table.replace({"n/a": np.nan, "": np.nan})
    return table, problems


def _check_numeric_columns(table: pd.DataFrame, row_of: dict) -> tuple[pd.DataFrame, list[Problem]]:
    """Numbers where numbers belong: refuse a subject whose age or score is text, naming row and column.

    Columns named in :data:`NUMERIC_COLUMNS`, and any column whose given values are
    mostly numbers, are checked; a text value there would turn a covariate into a factor.
    """
    problems, bad_subjects = [], set()
    out = table.copy()
    for column in table.columns:
        given = table[column].dropna()
        if given.empty:
            continue
        numbers = pd.to_numeric(given, errors="coerce")
        if column.lower() in SEX_COLUMNS:
            continue  # read with its vocabulary, whose numeric codes are ambiguous (vocabulary.check_categories)
        if column.lower() not in NUMERIC_COLUMNS and numbers.notna().mean() < 0.5:
            continue  # a text column (group, site)
        for subject in numbers[numbers.isna()].index:
            problems.append(Problem(subject, "participants.tsv", f"row {row_of[subject]}, column {column!r}: "
                                                                 f"{given[subject]!r} is not a number"))
            bad_subjects.add(subject)
        out[column] = pd.to_numeric(table[column], errors="coerce")
    return out.drop(index=sorted(bad_subjects)), problems


def _find_subject_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))


_RUN_RE = re.compile(r"_run-(?P<run>[A-Za-z0-9]+)")


def _twice(first: Path, second: Path, what: str) -> str:
    """Why two files claim the same image, in the terms of their names."""
    runs = [m["run"] if (m := _RUN_RE.search(p.name)) else None for p in (first, second)]
    if runs[0] != runs[1]:
        shown = ", ".join(f"run-{r}" if r else "no run" for r in runs)
        return (f"{what} is given by two runs ({shown}: {first.name}, {second.name}); ferritin reads one run a "
                f"subject: move the others out of the dataset")
    if re.sub(_NII, "", first.name) == re.sub(_NII, "", second.name):
        return f"{what} appears twice, as {first.name} and {second.name}; keep one"
    return f"{what} appears twice ({first.name}, {second.name}); keep one"


def _subject_files(sub_dir: Path, root: Path) -> SubjectFiles:
    subject = sub_dir.name
    validate_label(subject)
    sessions = sorted(p for p in sub_dir.iterdir() if p.is_dir() and p.name.startswith("ses-"))
    anat_dirs = [sub_dir / "anat"] if (sub_dir / "anat").is_dir() else []
    anat_dirs += [s / "anat" for s in sessions if (s / "anat").is_dir()]
    with_data = [d for d in anat_dirs if any(_MEGRE_RE.search(f.name) or _T2S_RE.search(f.name) for f in d.iterdir())]
    if not with_data:
        raise SubjectError(subject, str(sub_dir.relative_to(root)), "no multi-echo GRE images (*_echo-<n>_part-mag_MEGRE.nii[.gz]) found")
    if len(with_data) > 1:
        names = ", ".join(str(d.relative_to(root)) for d in with_data)
        raise SubjectError(subject, names, "GRE images in more than one session; keep one session per subject")
    anat = with_data[0]
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    mags: dict[int, Path] = {}
    phases: dict[int, Path] = {}
    t2s: dict[str, Path] = {}
    t1: list[Path] = []
    for f in sorted(anat.iterdir()):
        if not f.name.startswith(subject + "_"):
            continue
        m = _MEGRE_RE.search(f.name)
        if m:
            echo = int(m["echo"])
            target = mags if m["part"] == "mag" else phases
            if echo in target:
                raise SubjectError(subject, rel(f), _twice(target[echo], f, f"echo {echo} {m['part']}"))
            target[echo] = f
            continue
        m = _T2S_RE.search(f.name)
        if m:
            t2s[m["part"]] = f
            continue
        if _T1_RE.search(f.name):
            t1.append(f)
    if len(t1) > 1:
        raise SubjectError(subject, ", ".join(rel(p) for p in t1), "more than one T1w image; keep one")
    t1w = t1[0] if t1 else None
    if t1w is None:
        raise SubjectError(subject, rel(anat), "no T1w image (*_T1w.nii[.gz]) found")
    if mags or phases:
        numbers = sorted(set(mags) | set(phases))
        for n in numbers:
            if n not in mags:
                raise SubjectError(subject, rel(phases[n]), f"echo {n} has a phase image but no magnitude image")
            if n not in phases:
                raise SubjectError(subject, rel(mags[n]), f"echo {n} has a magnitude image but no phase image")
        expected = list(range(1, len(numbers) + 1))
        if numbers[0] < 1:
            raise SubjectError(subject, rel(mags[numbers[0]]), f"echo numbers start at 1 in BIDS (echo-1 is the "
                                                                f"first echo); found echoes {numbers}")
        if numbers != expected:
            missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
            raise SubjectError(subject, rel(anat), f"echo(es) {missing} missing: found echoes {numbers}")
        echoes = tuple(EchoFiles(n, mags[n], phases[n]) for n in numbers)
        return SubjectFiles(subject, root, echoes, t1w, "MEGRE")
    for part in ("mag", "phase"):
        if part not in t2s:
            other = next(iter(t2s.values()))
            raise SubjectError(subject, rel(other), f"4-D T2starw {part} image is missing")
    return SubjectFiles(subject, root, (EchoFiles(0, t2s["mag"], t2s["phase"]),), t1w, "T2starw")


def discover(root: str | Path, participant_label: list[str] | None = None) -> BIDSDataset:
    """Find every usable subject in a BIDS dataset.

    Parameters
    ----------
    root : path
        The dataset root (holding ``participants.tsv`` and ``sub-*``).
    participant_label : list of str, optional
        Restrict to these subjects (``"01"`` or ``"sub-01"``).

    Returns
    -------
    BIDSDataset
        ``subjects`` holds subjects that have images *and* a participants row;
        every other subject is named in ``problems``.

    Raises
    ------
    DatasetError
        If the dataset root or participants.tsv cannot be used, or a
        participant label is invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    wanted: set[str] | None = None
    if participant_label:
        bad = []
        wanted = set()
        for lab in participant_label:
            try:
                wanted.add("sub-" + validate_label(lab))
            except ValueError as exc:
                bad.append(Problem(None, None, str(exc)))
        if bad:
            raise DatasetError(bad)
    table, descriptions, problems = read_participants(root)
    subjects: dict[str, SubjectFiles] = {}
    dirs = _find_subject_dirs(root)
    on_disk = set()
    reported = {p.subject for p in problems if p.subject}
    for d in dirs:
        try:
            validate_label(d.name)
        except ValueError as exc:
            problems.append(Problem(d.name, d.name, str(exc)))
            continue
        on_disk.add(d.name)
        if wanted is not None and d.name not in wanted:
            continue
        if d.name not in table.index:
            if d.name in reported:
                continue
            problems.append(Problem(d.name, "participants.tsv", "has images but no row in participants.tsv; not ingested"))
            continue
        try:
            subjects[d.name] = _subject_files(d, root)
        except SubjectError as exc:
            problems.append(exc.problem)
        except OSError as exc:  # an unreadable folder: this subject only
            problems.append(Problem(d.name, d.name, f"cannot read the folder: {exc.strerror or exc}"))
    for sub in table.index:
        if (wanted is None or sub in wanted) and sub not in on_disk:
            problems.append(Problem(sub, "participants.tsv", f"listed in participants.tsv but there is no {sub}/ folder with images"))
    if wanted is not None:
        for sub in sorted(wanted - on_disk - set(table.index)):
            problems.append(Problem(sub, None, "requested with --participant-label but not in the dataset"))
    return BIDSDataset(root, subjects, table, descriptions, problems)


# --------------------------------------------------------------------------
# loading


#: No MRI volume ferritin reads is larger than this; a header claiming more is broken.
MAX_IMAGE_BYTES = 2 * 1024**3


def _load_nifti(path: Path, subject: str, rel: str) -> nib.Nifti1Image:
    """The NIfTI image at ``path``, its header checked before any voxel is read."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken headers
        raise SubjectError(subject, rel, f"cannot read NIfTI header: {exc}") from exc
    _check_header(img, path, subject, rel)
    return img


def _check_header(img, path: Path, subject: str, rel: str) -> None:
    """Refuse what cannot be a usable image: impossible sizes, complex or RGB voxels, no orientation."""
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise SubjectError(subject, rel, f"voxels are complex ({dtype}); give the magnitude or phase image")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise SubjectError(subject, rel, f"voxels are of type {dtype} (RGB or another compound type); "
                                         "give a single-valued image")
    need = int(np.prod(img.shape, dtype=np.int64)) * dtype.itemsize
    if need > MAX_IMAGE_BYTES:
        raise SubjectError(subject, rel, f"the header claims a {'x'.join(map(str, img.shape))} image "
                                         f"({need / 1024**3:.1f} GiB), larger than any MRI volume")
    offset = int(getattr(img.dataobj, "offset", 0))
    try:
        size = Path(path).stat().st_size
        if str(path).endswith(".gz"):
            with open(path, "rb") as fh:  # gzip's trailer: the uncompressed size modulo 2**32
                fh.seek(-4, 2)
                stored = int.from_bytes(fh.read(4), "little")
            # (single-member gzip, as nibabel, dcm2niix and pigz write)
            if need + offset < 2**32 and stored < need + offset:
                raise SubjectError(subject, rel, f"the header claims {need} bytes of voxels but the file holds "
                                                 f"{max(stored - offset, 0)}: truncated or a wrong header")
        elif size < need + offset:
            raise SubjectError(subject, rel, f"the header claims {need} bytes of voxels but the file holds "
                                             f"{max(size - offset, 0)}: truncated or a wrong header")
    except OSError as exc:
        raise SubjectError(subject, rel, f"cannot read the file: {exc}") from exc
    header = img.header
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    if sform == 0 and qform == 0:
        raise SubjectError(subject, rel, "the header has no orientation (sform and qform codes are 0): the "
                                         "position and the B0 direction are unknown; fix the header "
                                         "(e.g. convert again with dcm2niix)")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise SubjectError(subject, rel, "the image affine is singular or not finite: voxel positions are unknown")


def _read_data(img, subject: str, rel: str) -> np.ndarray:
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise SubjectError(subject, rel, f"image data are truncated or corrupt: {exc}") from exc
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise SubjectError(subject, rel, f"{n} voxels are NaN or infinite")
    return data


def _number(value, what: str, subject: str, rel: str) -> float:
    """A finite JSON number (not a boolean, a string or Infinity), or an error naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise SubjectError(subject, rel, f"{what} {value!r} is not a finite number")
    return float(value)


def _echo_time(meta: dict, subject: str, rel: str, notes: list[str]) -> list[float]:
    if "EchoTime" not in meta:
        raise SubjectError(subject, rel, "sidecar has no EchoTime (seconds)")
    te = meta["EchoTime"]
    values = [_number(v, "EchoTime", subject, rel) for v in (te if isinstance(te, list) else [te])]
    if any(v <= 0 for v in values):
        raise SubjectError(subject, rel, f"EchoTime {te!r} must be positive")
    if any(v > _TE_MS_THRESHOLD for v in values):
        if any(v > 1000 * _TE_MS_THRESHOLD for v in values):
            raise SubjectError(subject, rel, f"EchoTime {te!r} is neither seconds nor milliseconds of a GRE echo")
        notes.append(f"{rel}: EchoTime {te!r} looks like milliseconds; converted to seconds")
        values = [v / 1000.0 for v in values]
    return values


def _phase_to_radians(phase: np.ndarray, units: str | None, subject: str, rel: str, notes: list[str]) -> np.ndarray:
    lo, hi = float(phase.min()), float(phase.max())
    in_range = lo >= -np.pi - 1e-3 and hi <= np.pi + 1e-3
    if units in ("rad", "radian", "radians") or (units is None and in_range):
        if not in_range:
            raise SubjectError(subject, rel, f"phase Units is rad but values span [{lo:.4g}, {hi:.4g}], outside [-pi, pi]")
        return phase.astype(np.float32, copy=False)
    if hi <= lo:
        raise SubjectError(subject, rel, "phase image is constant (all voxels equal); is it empty?")
    # Arbitrary units: map the observed range linearly onto one period.
    # Integer-coded phase (e.g. -4096..4095) spans one period of hi-lo+1 codes.
    integer_coded = bool(np.all(phase == np.round(phase))) and hi - lo >= 255
    period = (hi - lo + 1.0) if integer_coded else (hi - lo)
    notes.append(
        f"{rel}: phase in arbitrary units [{lo:.6g}, {hi:.6g}] rescaled to radians (period {period:.6g} units)"
    )
    rad = (phase.astype(np.float64) - lo) * (2 * np.pi / period) - np.pi
    return rad.astype(np.float32)


def _echo_sidecars(e: EchoFiles, files: SubjectFiles, sub: str) -> tuple[dict, str | None]:
    """The merged sidecar fields of one echo's magnitude and phase, and the phase's Units.

    Fields both sidecars give must agree: a magnitude saying TE 4.5 ms and its phase
    20 ms is a mix-up that no choice between them would fix.
    """
    metas = {}
    for part, path in (("mag", e.mag), ("phase", e.phase)):
        sc = sidecar_of(path)
        if sc.exists():
            metas[part] = _read_json(sc, sub, files.rel(sc))
    if not metas:
        raise SubjectError(sub, files.rel(sidecar_of(e.mag)), "JSON sidecar is missing (it must give EchoTime)")
    if len(metas) == 2:
        for key in ("EchoTime", "MagneticFieldStrength"):
            a, b = metas["mag"].get(key), metas["phase"].get(key)
            if a is not None and b is not None and a != b:
                raise SubjectError(sub, files.rel(sidecar_of(e.phase)),
                                   f"{key} {b!r} differs from {a!r} in {files.rel(sidecar_of(e.mag))}")
    units = metas.get("phase", {}).get("Units")
    return {**metas.get("phase", {}), **metas.get("mag", {})}, units


@dataclass
class _EchoHeader:
    """One echo file pair, its sidecar facts and NIfTI headers, before any voxel is read."""

    echo: object  # EchoFiles
    mag_img: object
    phase_img: object
    echo_times: list
    b0: float | None
    phase_units: str | None


def load_subject(files: SubjectFiles) -> SubjectImages:
    """Read one subject's images and check them against each other.

    Every header and sidecar is checked first (units, field strength, echo
    times, shapes, affines), then the voxels are read.

    Raises
    ------
    SubjectError
        Naming the subject and the file, for any unreadable, inconsistent or
        incomplete input.
    """
    sub = files.subject
    notes: list[str] = []
    headers = [_echo_header(e, files, notes) for e in files.echoes]
    b0, phase_units, phase_units_file = _check_echoes_agree(headers, files)
    mag_all, phase_all, tes_arr = _echo_data(headers, files)
    phase_all = _phase_to_radians(phase_all, phase_units, sub, phase_units_file, notes)
    t1_img = _load_nifti(files.t1w, sub, files.rel(files.t1w))
    if len(t1_img.shape) != 3 or min(t1_img.shape) < 2:
        raise SubjectError(sub, files.rel(files.t1w), f"expected a 3-D T1w image, got shape {t1_img.shape}")
    t1 = _read_data(t1_img, sub, files.rel(files.t1w))
    return SubjectImages(
        subject=sub,
        mag=mag_all,
        phase=phase_all,
        echo_times=tes_arr,
        gre_affine=np.asarray(headers[0].mag_img.affine, dtype=np.float64),
        b0=float(b0),
        t1w=t1,
        t1w_affine=np.asarray(t1_img.affine, dtype=np.float64),
        notes=notes,
    )


def _echo_header(e, files: SubjectFiles, notes: list[str]) -> _EchoHeader:
    """An echo's sidecars and NIfTI headers, checked on their own (magnitude against phase)."""
    sub = files.subject
    mag_rel, ph_rel, sidecar_rel = files.rel(e.mag), files.rel(e.phase), files.rel(sidecar_of(e.mag))
    meta, units = _echo_sidecars(e, files, sub)
    te = _echo_time(meta, sub, sidecar_rel, notes)
    b0 = None
    if "MagneticFieldStrength" in meta:
        b0 = _number(meta["MagneticFieldStrength"], "MagneticFieldStrength", sub, sidecar_rel)
    mag_img = _load_nifti(e.mag, sub, mag_rel)
    ph_img = _load_nifti(e.phase, sub, ph_rel)
    if mag_img.shape != ph_img.shape:
        raise SubjectError(sub, ph_rel, f"phase shape {ph_img.shape} differs from magnitude shape {mag_img.shape}")
    if not np.allclose(mag_img.affine, ph_img.affine, atol=_AFFINE_ATOL):
        raise SubjectError(sub, ph_rel, "phase affine differs from the magnitude affine")
    ndim_expected = 3 if files.layout == "MEGRE" else 4
    if len(mag_img.shape) != ndim_expected or min(mag_img.shape[:3]) < 2:
        raise SubjectError(sub, mag_rel, f"expected a {ndim_expected}-D image, got shape {mag_img.shape}")
    if files.layout == "MEGRE" and len(te) != 1:
        raise SubjectError(sub, sidecar_rel, f"EchoTime must be one number for a single echo, got {te}")
    if files.layout != "MEGRE" and len(te) != mag_img.shape[3]:
        raise SubjectError(sub, sidecar_rel, f"{len(te)} EchoTime values for {mag_img.shape[3]} echoes")
    return _EchoHeader(e, mag_img, ph_img, list(te), b0, units)


def _check_echoes_agree(headers: list[_EchoHeader], files: SubjectFiles):
    """Every echo has echo 1's grid, field strength and phase units; the echo times increase.

    Returns the field strength (T), the phase units and the sidecar that gave them.
    """
    sub = files.subject
    first = headers[0]
    first_sidecar = files.rel(sidecar_of(first.echo.mag))
    b0 = None
    for h in headers:
        sidecar_rel, mag_rel = files.rel(sidecar_of(h.echo.mag)), files.rel(h.echo.mag)
        phase_sidecar = files.rel(sidecar_of(h.echo.phase))
        if h.phase_units != first.phase_units:
            raise SubjectError(sub, phase_sidecar, f"phase Units {h.phase_units!r} differ from {first.phase_units!r} "
                                                   f"of {files.rel(sidecar_of(first.echo.phase))}; every echo's phase "
                                                   f"must have the same units")
        if h.b0 is not None:
            if b0 is not None and abs(h.b0 - b0) > 1e-6:
                raise SubjectError(sub, sidecar_rel, f"MagneticFieldStrength {h.b0} T differs from {b0} T of echo 1")
            b0 = h.b0
        if h.mag_img.shape[:3] != first.mag_img.shape[:3]:
            raise SubjectError(sub, mag_rel, f"echo {h.echo.echo} shape {h.mag_img.shape} differs from echo 1 shape "
                                             f"{first.mag_img.shape[:3]}")
        if not np.allclose(h.mag_img.affine, first.mag_img.affine, atol=_AFFINE_ATOL):
            raise SubjectError(sub, mag_rel, f"echo {h.echo.echo} affine differs from echo 1")
    if b0 is None:
        raise SubjectError(sub, first_sidecar, "sidecar has no MagneticFieldStrength (tesla)")
    if not 0.1 <= b0 <= 21.1:
        raise SubjectError(sub, first_sidecar, f"MagneticFieldStrength {b0} is not a field in tesla")
    tes = np.asarray([t for h in headers for t in h.echo_times], dtype=np.float64)
    if len(tes) > 1 and not np.all(np.diff(tes) > 0):
        raise SubjectError(sub, first_sidecar, f"echo times {tes.tolist()} are not strictly increasing")
    return b0, first.phase_units, files.rel(sidecar_of(headers[-1].echo.phase))


def _echo_data(headers: list[_EchoHeader], files: SubjectFiles):
    """The voxels: magnitude and phase as (echo, x, y, z), and the echo times (s)."""
    sub = files.subject
    mags, phases = [], []
    for h in headers:
        mag = _read_data(h.mag_img, sub, files.rel(h.echo.mag))
        ph = _read_data(h.phase_img, sub, files.rel(h.echo.phase))
        if files.layout == "MEGRE":
            mags.append(mag)
            phases.append(ph)
        else:
            mags.extend(np.moveaxis(mag, 3, 0))
            phases.extend(np.moveaxis(ph, 3, 0))
    mag_all = np.stack(mags).astype(np.float32, copy=False)
    if np.all(mag_all == 0):
        raise SubjectError(sub, files.rel(files.echoes[0].mag), "magnitude is all zeros")
    phase_all = np.stack(phases)
    if np.all(phase_all == 0):
        raise SubjectError(sub, files.rel(files.echoes[0].phase), "phase is all zeros")
    return mag_all, phase_all, np.asarray([t for h in headers for t in h.echo_times], dtype=np.float64)
