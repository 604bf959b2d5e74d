"""The declarative study spec: a tree of frozen dataclasses, read and checked once.

A spec file (YAML) is laid over the shipped ``default_study.yaml`` — the one
source of the study's defaults — and turned into a :class:`StudySpec`.  Every
key is checked when the file is read: an unknown key anywhere is refused with
the list of valid ones, a value of the wrong kind or out of range is refused
naming its key, and the classes check their own choices and ranges when
constructed, so code below reads attributes without fallbacks.

The ``qsm``, ``anat`` and ``qc`` sections are the processing stages' own
parameter classes (:class:`~ferritin.engine.qsm.chain.QSMParams`,
:class:`~ferritin.engine.anat.AnatParams`,
:class:`~ferritin.engine.qc.QCCriteria`); the shipped YAML restates the values
of theirs it shows, and a test keeps the two equal.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

import yaml

from ferritin.cohort.errors import FerritinError

from .anat import AnatParams
from .params import check_choices
from .qc import QCCriteria
from .qsm.chain import QSMParams
from .spec_yaml import read_spec_yaml, shown

__all__ = [
    "StudySpec", "Contrast", "Inference", "SmallVolume", "RegionOfInterest", "ROISpec", "Clinical",
    "load_spec", "complete_spec", "default_spec", "default_spec_text", "SpecError",
]


class SpecError(FerritinError, ValueError):
    """A study spec that cannot be used, with the key that is wrong."""


SIGNS = ("positive", "negative")
#: a name that is safe as a store node and a file name on every system
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Contrast:
    """A group contrast of one cohort map, e.g. ``"ALS - NC"`` on ``chi``."""

    choices: ClassVar[dict] = {"map": ("chi", "r2star", "gm_mod_s")}

    name: str  # names the outputs (stats/<name>, tables/<name>_*.csv)
    map: str  # the cohort map tested: chi, r2star (1/s), or gm_mod_s (smoothed modulated GM)
    weights: str | tuple[float, ...]  # "ALS - NC", or one weight per design column

    def __post_init__(self):
        check_choices(self)
        if not self.name:
            raise ValueError("name must not be empty")
        if not SAFE_NAME.fullmatch(self.name) or ".." in self.name:
            raise ValueError(f"name {shown(self.name)} names the contrast's store node and files: use letters, "
                             f"digits, '_', '-' and '.' only")


@dataclass(frozen=True)
class Inference:
    """Voxelwise inference: cluster-forming height, extent rule, SVC level, permutations."""

    height_p: float  # voxelwise uncorrected threshold
    extent_voxels: float  # cluster-extent rule, in voxels of 1 mm³
    svc_alpha: float  # family-wise level of small-volume correction and of ROIs from clusters
    #: Freedman–Lane permutations (max-T, cluster mass); 0: off.  With them a
    #: whole-brain cluster is significant by its permutation p (RFT cluster p runs
    #: above its nominal rate at liberal heights); peak and SVC p stay SPM's RFT.
    permutations: int
    permutation_seed: int  # seed of the permutations (results are repeatable)
    tfce: bool  # with permutations: TFCE (E 0.5, H 2, dh 0.1) as well

    def __post_init__(self):
        if not 0 < self.height_p < 1:
            raise ValueError(f"height_p must be in (0, 1), got {self.height_p!r}")
        if not 0 < self.svc_alpha < 1:
            raise ValueError(f"svc_alpha must be in (0, 1), got {self.svc_alpha!r}")
        if self.extent_voxels < 0:
            raise ValueError(f"extent_voxels must be >= 0, got {self.extent_voxels!r}")
        if self.permutations < 0 or self.permutations == 1:
            raise ValueError(f"permutations must be 0 (off) or an integer >= 2, got {self.permutations!r}")


def _check_place(entry) -> None:
    if entry.region is None and entry.centre_mm is None:
        raise ValueError("needs a 'region' (AAL name) and/or 'centre_mm'")
    if entry.region is not None and entry.region not in _aal_names():
        folded = {name.casefold(): name for name in _aal_names()}
        near = [folded[n] for n in difflib.get_close_matches(str(entry.region).casefold(), list(folded), n=3)]
        hint = f"; did you mean {', '.join(near)}?" if near else " (AAL2 names such as Thalamus_L, Precentral_R)"
        raise ValueError(f"region {shown(entry.region)} is not a region of the atlas{hint}")
    if entry.centre_mm is not None and len(entry.centre_mm) != 3:
        raise ValueError(f"centre_mm must be three numbers (x, y, z in mm), got {list(entry.centre_mm)}")
    if not entry.radius_mm > 0:
        raise ValueError(f"radius_mm must be positive, got {entry.radius_mm!r}")


@functools.lru_cache(maxsize=1)
def _aal_names() -> tuple[str, ...]:
    from ferritin.cohort.templates import atlas_labels

    return tuple(atlas_labels()["name"])


@dataclass(frozen=True)
class SmallVolume:
    """A small volume for correction: an AAL region, or a sphere (fixed in advance) within it."""

    name: str  # names the SVC table's rows and the ROI made from it
    region: str | None = None  # AAL region name, e.g. Thalamus_R
    radius_mm: float = 20.0  # radius of the sphere around centre_mm
    #: MNI (mm) centre of a sphere fixed in advance (e.g. from the literature); without
    #: it the whole region is the small volume (a sphere around the map's own peak is circular)
    centre_mm: tuple[float, ...] | None = None

    def __post_init__(self):
        _check_place(self)


@dataclass(frozen=True)
class RegionOfInterest:
    """An ROI given by the spec: an AAL region, a sphere, or the sphere within the region."""

    name: str  # the ROI's name in the tables
    region: str | None = None  # AAL region name
    centre_mm: tuple[float, ...] | None = None  # MNI (mm) centre of a sphere
    radius_mm: float = 10.0  # radius of that sphere

    def __post_init__(self):
        _check_place(self)


@dataclass(frozen=True)
class ROISpec:
    """Where ROIs come from: surviving clusters of some contrasts, and regions given outright."""

    from_contrasts: tuple[str, ...]  # contrasts whose clusters surviving correction become ROIs
    regions: tuple[RegionOfInterest, ...]  # ROIs given outright


@dataclass(frozen=True)
class Clinical:
    """The clinical statistics: scores to correlate, covariates and hypothesised signs."""

    patient_group: str  # the group whose clinical scores are correlated
    scores: tuple[str, ...]  # participants.tsv columns correlated with the ROI values
    partial_covariates: tuple[str, ...]  # partial correlations control for these
    roi_covariates: tuple[str, ...]  # covariates of the ANCOVA of ROI values by group
    chi_vs_gm: str  # hypothesised sign of the χ–GM correlation (one-tailed p in this direction)
    #: map -> score -> "positive" or "negative": the one-tailed direction of each correlation
    expected_sign: dict[str, dict[str, str]]

    def __post_init__(self):
        signs = {"chi_vs_gm": self.chi_vs_gm}
        signs.update({f"expected_sign.{m}.{s}": v for m, per in self.expected_sign.items() for s, v in per.items()})
        for key, value in signs.items():
            if value not in SIGNS:
                raise ValueError(f"{key} must be one of {', '.join(SIGNS)}; got {value!r}")


@dataclass(frozen=True)
class StudySpec:
    """A whole study: design, processing parameters, inference, ROIs and clinical statistics.

    Build one with :func:`load_spec` or :func:`complete_spec`; change one with
    :func:`dataclasses.replace` (checked again) or through :meth:`to_dict`.
    """

    name: str  # the study's name in the report
    groups: tuple[str, ...]  # participants.tsv "group" values, in design-column order
    covariates: tuple[str, ...]  # of no interest; tiv is the one the anatomy stage measures
    mni_voxel_size: float  # mm: grid of the normalised maps and the group statistics
    qsm: QSMParams  # the QSM chain's parameters
    anat: AnatParams  # the anatomy chain's parameters
    #: (written inside ``anat``) normalise to MNI, average the cohort into a study
    #: template (DARTEL's idea), normalise every subject again to it; twice the time
    study_template: bool
    qc: QCCriteria  # limits a subject's anatomy must meet to enter the group statistics
    contrasts: tuple[Contrast, ...]  # the voxelwise group contrasts
    inference: Inference  # thresholds, extent rule, SVC level, permutations
    svc: tuple[SmallVolume, ...]  # small volumes for correction
    roi: ROISpec  # where the ROIs come from
    clinical: Clinical = field(repr=False)  # clinical correlations and ANCOVA

    def __post_init__(self):
        if isinstance(self.mni_voxel_size, bool) or not 0.5 <= self.mni_voxel_size <= 8:
            raise ValueError(f"mni_voxel_size must be a number of mm between 0.5 and 8, got {self.mni_voxel_size!r}")
        if len(self.groups) < 2 or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups needs at least two groups, each named once; got {list(self.groups)}")
        names = [c.name for c in self.contrasts]
        if len(set(names)) != len(names):
            raise ValueError(f"contrasts must have distinct names, got {names}")
        for c in self.roi.from_contrasts:
            if c not in names:
                raise ValueError(f"roi.from_contrasts names {c!r}; the contrasts are {sorted(names)}")
        if self.clinical.patient_group not in self.groups:
            raise ValueError(f"clinical.patient_group {self.clinical.patient_group!r} is not one of the groups "
                             f"{list(self.groups)}")

    def to_dict(self) -> dict:
        """The spec as plain YAML-able values, in the layout of a spec file."""
        out = _plain(self)
        out["anat"]["study_template"] = out.pop("study_template")
        order = [f.name for f in dataclasses.fields(self) if f.name != "study_template"]
        return {k: out[k] for k in order}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# reading


def default_spec_text() -> str:
    return resources.files("ferritin.engine").joinpath("default_study.yaml").read_text()


def default_spec() -> dict:
    """The shipped default study as a plain dict (the layout of a spec file)."""
    return yaml.safe_load(default_spec_text())


def load_spec(path: str | Path | None = None) -> StudySpec:
    """The study spec at ``path`` laid over the default (the reference study).

    Raises
    ------
    SpecError
        Naming the key and what is wrong.
    """
    if path is None:
        return complete_spec({})
    try:
        user = read_spec_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the study spec: {exc}") from exc
    if not isinstance(user, dict):
        raise SpecError(f"{path}: the study spec must be a mapping of keys to values")
    return complete_spec(user)


def complete_spec(spec: dict | StudySpec) -> StudySpec:
    """A whole or partial spec (plain dict) laid over the default study, checked and typed.

    A Python caller passing a partial dict gets the analysis the command line
    would run with the same keys.  A :class:`StudySpec` is returned as it is.

    Raises
    ------
    SpecError
        Naming the key and what is wrong.
    """
    if isinstance(spec, StudySpec):
        return spec
    if not isinstance(spec, dict):
        raise SpecError(f"the study spec must be a mapping of keys to values, got {type(spec).__name__}")
    merged = _merge(default_spec(), spec)
    # a file spells the study template inside ``anat``; the tree keeps it beside the stage parameters
    _refuse_unknown(merged, {f.name for f in dataclasses.fields(StudySpec)} - {"study_template"}, "")
    if isinstance(merged.get("anat"), dict):
        _refuse_unknown(merged["anat"], {f.name for f in dataclasses.fields(AnatParams)} | {"study_template"}, "anat")
    anat = merged.get("anat")
    if isinstance(anat, dict) and "study_template" in anat:
        merged = {**merged, "anat": {k: v for k, v in anat.items() if k != "study_template"},
                  "study_template": anat["study_template"]}
    return _build(StudySpec, merged, "")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _build(cls, data, where: str):
    """``cls`` from a mapping, every key known and every value of its field's kind."""
    if not isinstance(data, dict):
        raise SpecError(f"spec key {where!r} must be a mapping of keys to values, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown(data, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{_key(where, name)} is missing")
            continue
        where_key = "anat.study_template" if name == "study_template" else _key(where, name)
        kwargs[name] = _convert(hints[name], data[name], where_key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if where and not message.startswith(where):
            # "radius_mm must be ..." names a key of this entry; other messages are about the entry
            names_a_key = message.split(" ", 1)[0].split(".", 1)[0] in fields
            message = f"{where}.{message}" if names_a_key else f"{where}: {message}"
        raise SpecError(message) from None


def _refuse_unknown(data: dict, valid, where: str) -> None:
    for key in data:
        if key not in valid:
            section = f" of {where}" if where else ""
            raise SpecError(f"{_key(where, key)} is not a spec key; the keys{section} are {', '.join(sorted(valid))}")


def _convert(kind, value, where: str):
    """``value`` as ``kind`` (a field's type), or a :class:`SpecError` naming ``where``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for inner in options[:-1]:
            try:
                return _convert(inner, value, where)
            except SpecError:
                pass
        return _convert(options[-1], value, where)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if kind is tuple or origin is tuple:
        item = args[0] if args else int
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where} must be a list of {_plural_kind_name(item)}, got {shown(value)}")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a mapping, got {shown(value)}")
        inner = args[1] if args else typing.Any
        return {str(k): _convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    if kind is typing.Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {shown(value)}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise SpecError(f"{where} must be {_kind_name(kind)}, got {shown(value)}")
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {shown(value)}")
        return value
    raise TypeError(f"no conversion for {kind!r} at {where}")  # a field type this reader does not know


def _kind_name(kind) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(kind, "a value")


def _plural_kind_name(kind) -> str:
    return {float: "numbers", int: "integers", bool: "booleans", str: "strings"}.get(kind, "entries")
