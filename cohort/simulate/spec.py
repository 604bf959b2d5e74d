"""What a simulated cohort is: its design, effects, clinical scores and presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..calibration import calibrated_effects, power_matched_part, score_noise, severity_loadings
from ..effects import REFERENCE_EFFECTS, REFERENCE_N_PER_GROUP, Effect
from ..errors import SimulationSpecError

__all__ = ["SimulationSpec", "severity_factor", "power_matched_effects", "CALIBRATED_EFFECTS", "PRESETS", "preset", "read_effects"]

@dataclass(frozen=True)
class ClinicalScore:
    """A patient's clinical score as a line in the latent severity, rounded and clipped to the scale."""

    intercept: float
    slope: float
    limits: tuple[int, int]

    def at(self, severity):
        return self.intercept + self.slope * np.asarray(severity, dtype=float)


#: ALSFRS-R (0-48) falls and the Penn UMN score (0-16) rises with the severity.
CLINICAL_SCORES = {
    "alsfrs_r": ClinicalScore(39.0, -4.0, (0, 48)),
    "umn": ClinicalScore(7.0, 3.0, (0, 16)),
}


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that defines a simulated cohort."""

    n_per_group: dict = field(default_factory=lambda: {"ALS": 34, "NC": 34})
    patient_group: str = "ALS"
    voxel_size: float = 1.0
    seed: int = 0
    effects: tuple[Effect, ...] = ()
    # demographics
    age_mean: float = 51.0
    age_sd: float = 9.0
    male_fraction: dict = field(default_factory=lambda: {"ALS": 0.65, "NC": 0.55})
    #: SD of each clinical score about its line in the severity (:data:`CLINICAL_SCORES`); the default
    #: makes each score correlate with the severity as the reference study's correlations imply
    #: (:func:`~ferritin.cohort.calibration.severity_loadings`)
    clinical_noise: dict = field(default_factory=lambda: dict(CALIBRATED_CLINICAL_NOISE))
    # anatomy
    head_scale_sd: float = 0.035
    #: RMS (mm) and smoothness (FWHM, mm) of the random anatomical warp: a
    #: volume-preserving (divergence-free) displacement, so it moves
    #: structures without changing their size
    warp_mm: float = 3.0
    warp_smooth_mm: float = 20.0
    #: SD and smoothness (FWHM, mm) of local volume between subjects beyond
    #: head size (healthy adults: regional GM volume varies ~5-10 % after TIV
    #: adjustment); this is what VBM's modulated GM sees besides the effects
    volume_sd: float = 0.08
    volume_smooth_mm: float = 20.0
    rotation_deg: float = 6.0
    shift_mm: float = 6.0
    motion_deg: float = 2.0
    motion_mm: float = 2.0
    gm_loss_per_year: float = 0.003
    iron_gain_per_year: float = 0.0008
    texture_ppm: float = 0.006
    # acquisition
    b0: float = 3.0
    n_echoes: int = 12
    te1: float = 2.1e-3
    delta_te: float = 2.4e-3
    #: first-echo white-matter SNR of a 1 mm isotropic voxel; scaled by the
    #: voxel volume at other resolutions (thermal noise is fixed, signal grows)
    snr: float = 40.0
    t1_snr: float = 40.0  # at the simulated resolution
    fov_mm: tuple[float, float, float] = (240.0, 240.0, 192.0)
    oblique_deg: float = 10.0
    #: A scanner measures a finite part of k-space, so every sharp edge of the
    #: object rings (Gibbs), most of all the bright scalp against air.  With a
    #: factor ``f > 1`` the GRE object is built on a grid ``f`` times finer,
    #: with a sharp head-air edge, and only the acquired matrix's k-space is
    #: kept; 1 samples the object at the voxel centres (no truncation).
    kspace_truncation: int = 1

    def __post_init__(self):
        if self.voxel_size <= 0:
            raise ValueError("voxel_size must be positive")
        if self.n_echoes < 1:
            raise ValueError("n_echoes must be >= 1")
        if self.patient_group not in self.n_per_group:
            raise ValueError(f"patient_group {self.patient_group!r} is not one of {list(self.n_per_group)}")
        if self.snr <= 0:
            raise ValueError("snr must be positive")
        if set(self.clinical_noise) != set(CLINICAL_SCORES) or any(v < 0 for v in self.clinical_noise.values()):
            raise ValueError(f"clinical_noise needs a non-negative SD for each of {sorted(CLINICAL_SCORES)}, "
                             f"got {self.clinical_noise}")
        if int(self.kspace_truncation) != self.kspace_truncation or self.kspace_truncation < 1:
            raise ValueError(f"kspace_truncation must be a whole number >= 1, got {self.kspace_truncation}")

    @property
    def echo_times(self) -> np.ndarray:
        return self.te1 + self.delta_te * np.arange(self.n_echoes)

    def to_json(self) -> dict:
        d = asdict(self)
        d["effects"] = [asdict(e) for e in self.effects]
        return d


def severity_factor(effect: Effect, severity, modality: str = "chi"):
    """How much of ``effect``'s χ or GM part a patient of latent ``severity`` (standard normal) carries:
    ``max(0, 1 + gain * s)``."""
    return np.maximum(0.0, 1.0 + effect.gain(modality) * np.asarray(severity, dtype=float))


def power_matched_effects(effects, n_per_group: int, reference_n: int = REFERENCE_N_PER_GROUP,
                          max_gm_loss: float = 0.5):
    """Effects scaled so that ``n_per_group`` per group has the expected T of ``reference_n``.

    A two-sample t statistic is the group difference over the pooled
    between-subject spread, times the square root of half the group size.  A
    planted effect adds to both: its mean is the group difference, and its
    variation with each patient's severity (:func:`severity_factor`) adds to
    the patients' spread.  So each part of an effect (χ, GM) gets the
    amplitude and gain of :func:`~ferritin.cohort.calibration.power_matched_part`
    with ``k = sqrt(reference_n / n)``: the difference grows by ``k``, the
    severity-driven spread stays that of the reference study, and the expected
    T (and within the patients every correlation with the clinical scores)
    stays the reference study's, whatever the effect's size against the
    noise.  Multiplying the effect alone would multiply the severity-driven
    spread too, and an effect whose spread comes mostly from the patients'
    severity would keep barely more than its reference T / k.  The demo uses
    this, so that 10 + 10 subjects show what 34 + 34 would.
    What it cannot carry over is the degrees of freedom: at 18 against 66
    the same T is less significant (an SVC threshold 0.6–0.8 higher); nor a GM
    loss beyond ``max_gm_loss`` of the region, which is planted at that
    (a smaller expected T).
    """
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be >= 1, got {n_per_group}")
    k = float(np.sqrt(reference_n / n_per_group))
    out = []
    for e in effects:
        chi_scale, chi_gain = power_matched_part(e.gain("chi"), k)
        gm_scale, gm_gain = power_matched_part(e.gain("gm"), k)
        out.append(replace(e, chi_ppm=e.chi_ppm * chi_scale, severity_gain=chi_gain,
                           gm_fraction=max(e.gm_fraction * gm_scale, -max_gm_loss),
                           gm_severity_gain=None if e.gm_severity_gain is None else gm_gain))
    return tuple(out)


#: The reference effects with amplitudes and severity gains calibrated so that ferritin measures the
#: published statistics and correlations (:mod:`ferritin.cohort.calibration`).
CALIBRATED_EFFECTS = calibrated_effects(REFERENCE_EFFECTS)

#: Each clinical score's SD about its line, such that it correlates with the severity as the published
#: correlations imply (:func:`~ferritin.cohort.calibration.severity_loadings`).
CALIBRATED_CLINICAL_NOISE = {k: round(score_noise(c.slope, severity_loadings()[k]), 3)
                             for k, c in CLINICAL_SCORES.items()}

PRESETS = {
    "reference-study": SimulationSpec(effects=CALIBRATED_EFFECTS),
    # 10 + 10 at 3 mm with the calibrated reference study's expected T (see power_matched_effects).
    "demo": SimulationSpec(n_per_group={"ALS": 10, "NC": 10}, voxel_size=3.0,
                           effects=power_matched_effects(CALIBRATED_EFFECTS, 10), n_echoes=6),
    "tiny": SimulationSpec(n_per_group={"ALS": 2, "NC": 2}, voxel_size=3.0, effects=REFERENCE_EFFECTS, n_echoes=4),
    "null": SimulationSpec(effects=()),
}


def preset(name: str, **overrides) -> SimulationSpec:
    """A named preset with fields overridden (``preset("tiny", seed=3)``)."""
    if name not in PRESETS:
        raise SimulationSpecError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    try:
        return replace(PRESETS[name], **overrides)
    except ValueError as exc:  # the spec's own checks of the overridden fields
        raise SimulationSpecError(f"preset {name!r}: {exc}") from None


def read_effects(path: str | Path) -> tuple[Effect, ...]:
    """Planted effects from a YAML or JSON file: a list of :class:`Effect` fields (or ``{effects: [...]}``).

    Every entry needs ``name``, ``region`` (an AAL region) and ``peak_mni``; the other fields of
    :class:`Effect` are optional.  Unknown keys, unknown regions and malformed values are refused
    with the entry and the key named.
    """
    import yaml

    from ..templates import atlas_labels

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimulationSpecError(f"{path}: cannot read the effects: {exc}") from exc
    if isinstance(raw, dict) and set(raw) == {"effects"}:
        raw = raw["effects"]
    if not isinstance(raw, list) or not raw:
        raise SimulationSpecError(f"{path}: expected a non-empty list of effects (or 'effects: [...]')")
    fields = {f.name: f for f in Effect.__dataclass_fields__.values()}
    regions = set(atlas_labels()["name"])
    out = []
    for n, entry in enumerate(raw, start=1):
        where = f"{path}: effect {n}"
        if not isinstance(entry, dict):
            raise SimulationSpecError(f"{where}: expected a mapping of Effect fields, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise SimulationSpecError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        missing = [k for k in ("name", "region", "peak_mni") if k not in entry]
        if missing:
            raise SimulationSpecError(f"{where}: missing {missing}")
        if entry["region"] not in regions:
            raise SimulationSpecError(f"{where}: region {entry['region']!r} is not an AAL region (e.g. Putamen_R, "
                             f"Caudate_L, Precentral_L)")
        peak = entry["peak_mni"]
        if not (isinstance(peak, (list, tuple)) and len(peak) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in peak)):
            raise SimulationSpecError(f"{where}: peak_mni must be three numbers (mm), got {peak!r}")
        values = {**entry, "peak_mni": tuple(float(v) for v in peak)}
        for key in set(values) - {"name", "region", "peak_mni"}:
            if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
                raise SimulationSpecError(f"{where}: {key} must be a number, got {values[key]!r}")
            values[key] = float(values[key])
        if values.get("radius_mm", 1.0) <= 0 or values.get("smooth_mm", 0.0) < 0:
            raise SimulationSpecError(f"{where}: radius_mm must be positive and smooth_mm non-negative")
        try:
            out.append(Effect(**values))
        except ValueError as exc:
            raise SimulationSpecError(f"{where}: {exc}") from None
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise SimulationSpecError(f"{path}: effect names must be unique, got {names}")
    return tuple(out)
