"""A physically grounded simulator of cohort QSM + T1 studies, written as BIDS.

For every subject the simulator

1. builds the subject's anatomy in MNI space from the ICBM 2009 tissue priors
   (age-related GM loss, group effects in named atlas regions around given
   peaks, scaled by a latent disease severity: χ added, volume lost by a
   local contraction of the tissue),
2. builds a whole-head susceptibility map (ppm, relative to CSF/water):
   literature values per tissue and deep-grey nucleus, age-related iron gain,
   smooth texture, skull, scalp, air outside the head and in the sinuses,
3. places the head in the scanner: an affine (head size → TIV spread of
   adults, small rotation, shift) composed with a smooth random diffeomorphic
   warp of a few mm, and a small rigid head motion between the GRE and the
   T1w acquisitions,
4. acquires a multi-echo GRE (dipole forward model in k-space with padding,
   B0 along scanner z whatever the slice obliquity, T2* decay, receiver phase
   offset, complex Gaussian noise at a set SNR, wrapped phase) and a T1w
   image (tissue contrast, bias field, Rician noise) on its own grid,
5. writes everything as a BIDS dataset plus ``derivatives/ground-truth``.

All effect locations, sizes and group sizes are parameters of a
:class:`SimulationSpec`; the preset ``reference-study`` reproduces the design
of the reference study (see ``PRESETS``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.fft as sfft
from nibabel.affines import voxel_sizes
from scipy import ndimage

from .calibration import calibrated_effects, power_matched_part, score_noise, severity_loadings
from .dipole import GAMMA_HZ_PER_T, b0_direction, forward_field
from .effects import REFERENCE_EFFECTS, REFERENCE_N_PER_GROUP, Effect
from .errors import SimulationSpecError
from .store import digest_params
from .templates import Template, load_template

__all__ = [
    "Effect",
    "SimulationSpec",
    "SubjectTruth",
    "atrophy_displacement",
    "PRESETS",
    "REFERENCE_EFFECTS",
    "CALIBRATED_EFFECTS",
    "read_effects",
    "power_matched_effects",
    "preset",
    "sample_participants",
    "severity_factor",
    "simulate_subject",
    "simulate_cohort",
    "unfinished_simulation",
    "write_bids_subject",
]

# ---------------------------------------------------------------------------
# parameters


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

    from .templates import atlas_labels

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


# ---------------------------------------------------------------------------
# literature tissue properties (3 T)

#: Susceptibility relative to CSF (ppm): cortical GM, WM, deep nuclei, head.
CHI = {
    "gm": 0.015, "wm": -0.025, "csf": 0.0,
    "Caudate": 0.06, "Putamen": 0.07, "Pallidum": 0.16, "Thalamus": 0.03,
    "skull": -2.0, "scalp": -0.1, "air": 9.4,
}
#: R2* (1/s) and proton density per tissue.
R2S = {"gm": 17.0, "wm": 21.0, "csf": 4.0, "scalp": 30.0, "skull": 200.0}
PD = {"gm": 0.85, "wm": 0.70, "csf": 1.0, "scalp": 0.6, "skull": 0.05}
T1W = {"gm": 0.55, "wm": 0.85, "csf": 0.15, "scalp": 0.65, "skull": 0.08}
#: Anti-aliasing of strong background sources before the FFT forward model (voxels).
ANTIALIAS_SIGMA_VOX = 0.7
# A scanner digitises its images: magnitude and T1w to 12-bit codes scaled by
# one slope per series, phase to 12-bit codes over one period (the scaled
# integers DICOM and dcm2niix write).
ADC_LEVELS = 4095
PHASE_STEP = float(np.float32(np.pi / 4096))
#: Bumped when the images a given spec produces change: an interrupted cohort then starts afresh.
SIMULATOR_VERSION = 1
#: R2* per ppm of iron-related chi (Yao 2009-like order of magnitude).
R2S_PER_PPM = 150.0
NUCLEI = ("Caudate", "Putamen", "Pallidum", "Thalamus")


# ---------------------------------------------------------------------------
# participants


def sample_participants(spec: SimulationSpec) -> pd.DataFrame:
    """Sample group, age, sex, severity and clinical scores for every subject.

    Clinical scores of patients are tied to a latent severity ``s ~ N(0, 1)``:
    ALSFRS-R falls, the UMN score rises with ``s``, and DPR = (48 − ALSFRS-R)/DD.
    Controls have no clinical scores (``n/a``).
    """
    rng = np.random.default_rng([spec.seed, 0])
    rows = []
    n = 0
    for group, count in spec.n_per_group.items():
        for _ in range(int(count)):
            n += 1
            patient = group == spec.patient_group
            sev = float(rng.standard_normal()) if patient else 0.0
            male = rng.random() < spec.male_fraction.get(group, 0.5)
            age = float(np.clip(rng.normal(spec.age_mean, spec.age_sd), 25, 85))
            row = {
                "participant_id": f"sub-{n:03d}",
                "group": group,
                "age": round(age, 1),
                "sex": "M" if male else "F",
                "severity": sev,
            }
            if patient:
                dd = round(float(np.clip(np.exp(rng.normal(np.log(14), 0.5)), 3, 96)), 1)
                alsfrs, umn = (int(np.clip(np.round(CLINICAL_SCORES[k].at(sev) + rng.normal(0, spec.clinical_noise[k])),
                                           *CLINICAL_SCORES[k].limits)) for k in ("alsfrs_r", "umn"))
                row.update(alsfrs_r=alsfrs, umn=umn, dd=dd, dpr=round((48 - alsfrs) / dd, 4))
            else:
                row.update(alsfrs_r=np.nan, umn=np.nan, dd=np.nan, dpr=np.nan)
            rows.append(row)
    df = pd.DataFrame(rows)
    # Head size: men larger on average (TIV ~1600 vs ~1400 ml).
    base = np.where(df["sex"] == "M", 0.955, 0.915)
    df["head_scale"] = base * (1 + spec.head_scale_sd * rng.standard_normal(len(df)))
    return df


# ---------------------------------------------------------------------------
# geometry helpers


def _rotation(angles_rad) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rigid(rng, deg: float, mm: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(np.deg2rad(rng.uniform(-deg, deg, 3)))
    m[:3, 3] = rng.uniform(-mm, mm, 3)
    return m


def _grid_affine(fov_mm, vs: float, rotation: np.ndarray, center=(0.0, 0.0, 0.0)):
    shape = tuple(int(round(f / vs)) for f in fov_mm)
    aff = np.eye(4)
    aff[:3, :3] = rotation * vs
    c = (np.asarray(shape) - 1) / 2.0
    aff[:3, 3] = np.asarray(center) - aff[:3, :3] @ c
    return shape, aff


def _world_coords(shape, affine) -> np.ndarray:
    """World coordinates (3, *shape) of every voxel."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


@dataclass
class Placement:
    """Where a subject's head is: scanner world (mm) → MNI (mm).

    ``mni = warp(A @ p)`` where ``A`` is affine (scale, rotation, shift) and
    ``warp`` adds a smooth displacement field given on a coarse MNI lattice.
    GRE scanner points are first moved by the rigid head ``motion``.
    """

    affine: np.ndarray  # scanner → pre-warp MNI
    motion: np.ndarray  # GRE scanner → T1 scanner (head motion between scans)
    disp_grid_affine: np.ndarray
    disp: np.ndarray  # (3, nx, ny, nz) displacement (mm) on the coarse MNI lattice
    #: planted atrophy (see :func:`atrophy_displacement`): lattice affine and (3, ...) displacement, or None
    atrophy_grid_affine: np.ndarray | None = None
    atrophy: np.ndarray | None = None

    def to_mni(self, xyz: np.ndarray, gre: bool = False) -> np.ndarray:
        """Map world points (3, ...) of the T1 (or GRE, ``gre=True``) scanner frame to MNI."""
        shp = xyz.shape[1:]
        p = xyz.reshape(3, -1).astype(np.float64)
        if gre:
            p = self.motion[:3, :3] @ p + self.motion[:3, 3:4]
        q = self.affine[:3, :3] @ p + self.affine[:3, 3:4]
        q = q + _sample_field(self.disp, self.disp_grid_affine, q, order=3)
        if self.atrophy is not None:
            q = q + _sample_field(self.atrophy, self.atrophy_grid_affine, q, order=1)
        return q.reshape((3, *shp)).astype(np.float32)

    def mni_preimages(self, mni: np.ndarray, iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """MNI points (3, n) with the atrophy undone, then the warp too, by fixed-point iteration.

        Returns the points after the warp (before the atrophy) and after the
        affine (before the warp); the displacements are smooth and a few mm,
        so a few iterations converge.
        """
        after_warp = mni
        if self.atrophy is not None:
            for _ in range(iterations):
                after_warp = mni - _sample_field(self.atrophy, self.atrophy_grid_affine, after_warp, order=1)
        after_affine = after_warp
        for _ in range(iterations):
            after_affine = after_warp - _sample_field(self.disp, self.disp_grid_affine, after_affine, order=3)
        return after_warp, after_affine


def _sample_field(field: np.ndarray, grid_affine: np.ndarray, points: np.ndarray, order: int) -> np.ndarray:
    """A (3, ...) vector field on a lattice, sampled at world points (3, n)."""
    inv = np.linalg.inv(grid_affine)
    ijk = inv[:3, :3] @ points + inv[:3, 3:4]
    return np.stack([ndimage.map_coordinates(field[c], ijk, order=order, mode="nearest") for c in range(3)])


def atrophy_displacement(loss: np.ndarray, grid_affine: np.ndarray, pad: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (mm) that shrinks tissue by the fraction ``loss`` at each voxel, and its modulation.

    Atrophy is volume loss: a patient's region occupies less space than the
    template's, and VBM sees it through the Jacobian of the normalisation.
    The subject → MNI map ``x + u(x)`` must then expand the region by
    ``1 / (1 - loss)``, so ``u`` is the gradient of a potential whose
    Laplacian is that expansion (Poisson, solved with FFTs on a padded
    lattice): curl-free, and divergence-free outside the region, so the
    tissue around it moves in without changing volume (sulci and ventricles
    widen, as in real atrophy).

    Parameters
    ----------
    loss : (x, y, z) array
        Fractional volume loss (< 1; negative values grow the tissue), e.g. the
        effect maps each times its GM change and the patient's severity.
    grid_affine : 4x4 of the lattice (isotropic)
    pad : lattice voxels of zero padding on every side

    Returns
    -------
    u : (3, x, y, z) displacement in mm
    modulation : (x, y, z) ``1 / det(I + grad u)``: the volume fraction the
        subject keeps at each MNI voxel (what a modulated GM map measures)
    """
    w = np.asarray(loss, dtype=np.float64)
    if w.ndim != 3 or not np.isfinite(w).all() or w.max() >= 1:
        raise ValueError(f"loss must be a finite 3-D fraction below 1, got shape {w.shape}, max {np.nanmax(w):.3f}")
    step = float(voxel_sizes(np.asarray(grid_affine, dtype=float))[0])
    source = np.pad(1.0 / (1.0 - w) - 1.0, pad)
    k = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n, d=step) for n in source.shape], indexing="ij", sparse=True)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    k2[0, 0, 0] = 1.0
    phi_k = -np.fft.fftn(source) / k2
    phi_k[0, 0, 0] = 0.0
    core = tuple(slice(pad, pad + n) for n in w.shape)
    u = np.stack([np.fft.ifftn(1j * kk * phi_k).real[core] for kk in k])
    grad = np.stack([np.stack(np.gradient(u[a], step), axis=0) for a in range(3)])  # grad[a, b] = du_a/dx_b
    jac = np.linalg.det(np.moveaxis(grad, (0, 1), (-2, -1)) + np.eye(3))
    return u.astype(np.float32), (1.0 / np.clip(jac, 1e-3, None)).astype(np.float32)


def _exponentiate(velocity: np.ndarray, grid_affine: np.ndarray, squarings: int = 6) -> np.ndarray:
    """Displacement of the unit-time flow of a stationary velocity field (scaling and squaring)."""
    points = _world_coords(velocity.shape[1:], grid_affine).reshape(3, -1).astype(np.float64)
    disp = velocity.reshape(3, -1).astype(np.float64) / 2**squarings
    for _ in range(squarings):
        field = disp.reshape(velocity.shape)
        disp = disp + _sample_field(field, grid_affine, points + disp, order=1)
    return disp.reshape(velocity.shape)


def _placement(rng, spec: SimulationSpec, head_scale: float) -> Placement:
    # Scanner head of size head_scale × MNI → MNI divides by the scale.
    scale = head_scale * (1 + 0.02 * rng.standard_normal(3))
    rot = _rotation(np.deg2rad(rng.uniform(-spec.rotation_deg, spec.rotation_deg, 3)))
    a = np.eye(4)
    a[:3, :3] = np.diag(1.0 / scale) @ rot
    a[:3, 3] = rng.uniform(-spec.shift_mm, spec.shift_mm, 3) + np.array([0.0, -18.0, 18.0])
    # Smooth random warp on a 6 mm lattice that changes shape but not volume
    # (regional volume differences are drawn separately, see volume_sd): the
    # flow of a divergence-free velocity, the curl of a smoothed white-noise
    # vector potential.  A divergence-free *displacement* would not do: with
    # strains of ~25 % its second-order terms change local volume by ~12 %.
    step = 6.0
    lattice = tuple(int(np.ceil(e / step)) + 1 for e in (200, 240, 200))
    g_aff = np.diag([step, step, step, 1.0])
    g_aff[:3, 3] = (-100.0, -136.0, -80.0)
    sigma = spec.warp_smooth_mm / 2.3548 / step
    potential = [ndimage.gaussian_filter(rng.standard_normal(lattice), sigma, mode="wrap") for _ in range(3)]
    grads = [np.gradient(a, step) for a in potential]  # grads[a][b] = dA_a/dx_b
    velocity = np.stack([grads[2][1] - grads[1][2], grads[0][2] - grads[2][0], grads[1][0] - grads[0][1]])
    velocity *= spec.warp_mm / max(float(np.sqrt(np.mean(velocity**2))), 1e-12)
    disp = _exponentiate(velocity, g_aff)
    motion = _rigid(rng, spec.motion_deg, spec.motion_mm)
    return Placement(a, motion, g_aff, disp.astype(np.float32))


# ---------------------------------------------------------------------------
# anatomy in MNI space


def effect_maps(template: Template, effects) -> dict[str, np.ndarray]:
    """Smooth effect weights (0..1) of each planted effect on the template grid."""
    grid = template.grid
    out = {}
    xyz = _world_coords(grid.shape, grid.affine)
    for e in effects:
        region = template.region(e.region)
        r2 = sum((xyz[c] - e.peak_mni[c]) ** 2 for c in range(3))
        core = (region & (r2 <= e.radius_mm**2)).astype(np.float32)
        if core.sum() == 0:
            raise ValueError(f"effect {e.name}: no voxel of {e.region} within {e.radius_mm} mm of {e.peak_mni}")
        sigma = e.smooth_mm / 2.3548 / grid.voxel_size
        w = ndimage.gaussian_filter(core, sigma) if sigma > 0 else core
        out[e.name] = (w / w.max()).astype(np.float32)
    return out


def _head_layers(template: Template):
    """Skull, scalp and air-sinus masks (float) around the template brain."""
    vs = template.grid.voxel_size
    brain = template.brain_mask | (template.gm + template.wm + template.csf > 0.3)
    dist = ndimage.distance_transform_edt(~brain, sampling=vs)
    xyz = _world_coords(template.grid.shape, template.grid.affine)
    # Below the brain the head continues as the neck/face: extend the layers
    # downwards so the head has no artificial bottom edge near the brain.
    low = xyz[2] < -40
    skull = (dist > 2.0) & (dist <= 8.0)
    scalp = (dist > 8.0) & (dist <= 14.0)
    neck = low & (np.hypot(xyz[0] / 65.0, (xyz[1] + 20.0) / 80.0) <= 1.0) & ~brain
    skull |= neck & (dist <= 8.0)
    scalp |= neck & (dist > 8.0)
    csf_rim = (dist > 0) & (dist <= 2.0)
    # Frontal sinus and sphenoid sinus (air pockets close to the brain).
    sinus = np.zeros(template.grid.shape, bool)
    for c, r in (((0.0, 62.0, 4.0), (14.0, 7.0, 9.0)), ((0.0, 12.0, -32.0), (13.0, 11.0, 9.0))):
        e = sum(((xyz[a] - c[a]) / r[a]) ** 2 for a in range(3))
        # a bony wall and the meninges keep air pockets a few mm from the brain
        sinus |= (e <= 1.0) & (dist > 6.0)
    return skull.astype(np.float32), scalp.astype(np.float32), csf_rim.astype(np.float32), sinus.astype(np.float32)


def subject_mni_maps(template: Template, spec: SimulationSpec, row: dict, rng) -> dict[str, np.ndarray]:
    """The subject's anatomy and susceptibility on the template (MNI) grid."""
    effects = effect_maps(template, spec.effects)
    age_dev = row["age"] - spec.age_mean
    gm = template.gm.copy()
    wm = template.wm.copy()
    csf = template.csf.copy()
    loss = np.full(gm.shape, spec.gm_loss_per_year * age_dev, np.float32)
    patient = row["group"] == spec.patient_group
    sev_factor = {}
    # Planted GM changes are volume changes (the region shrinks, see
    # atrophy_displacement), applied when the subject is placed, except for
    # the share gm_composition of each, which is like the age effect:
    # diffuse thinning, GM replaced by CSF where it is.
    atrophy = np.zeros(gm.shape, np.float32)
    for e in spec.effects:
        sev_factor[e.name] = {m: float(severity_factor(e, row["severity"], m)) if patient else 0.0
                              for m in ("chi", "gm")}
        lost_gm = -e.gm_fraction * sev_factor[e.name]["gm"] * effects[e.name]
        if e.gm_composition > 0:
            contracted = lost_gm * (1 - e.gm_composition)
            # (1 - replaced) * (1 - contracted) = 1 - lost_gm: the region keeps 1 + gm_fraction of its GM
            loss = loss + (1 - (1 - lost_gm) / (1 - contracted))
            lost_gm = contracted
        atrophy += lost_gm
    loss = np.clip(loss, -0.3, 0.6)
    lost = gm * loss
    gm = gm - lost
    csf = csf + lost  # atrophy: tissue replaced by CSF
    chi = CHI["gm"] * gm + CHI["wm"] * wm + CHI["csf"] * csf
    for nucleus in NUCLEI:
        for side in ("L", "R"):
            m = template.region(f"{nucleus}_{side}").astype(np.float32)
            m = ndimage.gaussian_filter(m, 1.0 / template.grid.voxel_size)
            iron = CHI[nucleus] + spec.iron_gain_per_year * age_dev * (CHI[nucleus] / 0.1)
            chi = chi * (1 - m) + iron * m * (gm + wm + csf)
    for e in spec.effects:
        chi = chi + e.chi_ppm * sev_factor[e.name]["chi"] * effects[e.name]
    tex_sigma = 2.0 / template.grid.voxel_size
    tex = ndimage.gaussian_filter(rng.standard_normal(gm.shape).astype(np.float32), tex_sigma)
    tex *= spec.texture_ppm / max(float(tex.std()), 1e-12)
    tissue = np.clip(gm + wm + csf, 0, 1)
    chi = chi + tex * (gm + wm)
    brain_chi = (chi * tissue).astype(np.float32)
    skull, scalp, rim, sinus = _head_layers(template)
    head_chi = CHI["skull"] * skull + CHI["scalp"] * scalp + CHI["csf"] * rim
    head = (tissue > 0.05) | (skull + scalp + rim > 0)
    air = (~head).astype(np.float32)
    head_chi = head_chi * (1 - sinus) + CHI["air"] * sinus
    # Air outside the head is added on each subject's own grid (it continues
    # beyond the template box), so it is not part of this map.
    full_chi = np.where(tissue > 0, brain_chi + (1 - tissue) * head_chi, head_chi)
    return {
        "gm": gm.astype(np.float32), "wm": wm.astype(np.float32), "csf": csf.astype(np.float32),
        "chi_brain": brain_chi, "chi_full": full_chi.astype(np.float32),
        "skull": skull * (1 - sinus), "scalp": scalp, "rim": rim, "sinus": sinus, "air": air,
        "atrophy": np.clip(atrophy, -0.5, 0.5),
        **{f"effect_{k}": v for k, v in effects.items()},
    }


#: Lattice spacing (mm) of the atrophy displacement: planted effects are
#: smoothed by several mm, and a finer FFT solve would cost a gigabyte at 1 mm.
ATROPHY_STEP_MM = 2.0


def _place_volume_change(place: Placement, atrophy: np.ndarray, template: Template, rng,
                         spec: SimulationSpec) -> Placement:
    """The placement with the planted atrophy and the subject's own regional volume differences.

    Both are local volume losses (negative: gains), so one Poisson solve
    (:func:`atrophy_displacement`) on a lattice of ``ATROPHY_STEP_MM`` gives
    their displacement.  The regional differences are smoothed white noise
    with SD ``spec.volume_sd``.
    """
    vs = template.grid.voxel_size
    k = max(1, int(round(ATROPHY_STEP_MM / vs)))
    aff = template.grid.affine.copy()
    aff[:3, :3] *= k
    loss = atrophy[::k, ::k, ::k].astype(np.float64)
    noise = rng.standard_normal(loss.shape)  # drawn whatever volume_sd, so later draws do not depend on it
    if spec.volume_sd > 0:
        natural = ndimage.gaussian_filter(noise, spec.volume_smooth_mm / 2.3548 / (k * vs), mode="wrap")
        loss = loss + natural * (spec.volume_sd / max(float(natural.std()), 1e-12))
    if not np.any(loss):
        return place
    u, _ = atrophy_displacement(np.clip(loss, -0.6, 0.6), aff)
    return replace(place, atrophy_grid_affine=aff, atrophy=u)


def _field_jacobian_det(field: np.ndarray, grid_affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """det(I + grad u) of a (3, ...) lattice displacement ``u`` at world points (3, n)."""
    step = float(voxel_sizes(np.asarray(grid_affine, dtype=float))[0])
    # row a of grad u is the gradient of component a, sampled like any (3, ...) field
    rows = [_sample_field(np.stack(np.gradient(field[a].astype(np.float64), step)), grid_affine, points, order=1)
            for a in range(3)]
    return np.linalg.det(np.stack(rows, axis=1).transpose(2, 0, 1) + np.eye(3))


def volume_fraction(place: Placement, template: Template, iterations: int = 6) -> np.ndarray:
    """Native volume per MNI volume at every template voxel: what Jacobian modulation measures.

    The subject → MNI map is ``atrophy ∘ warp ∘ affine``; a template voxel
    holds ``1 / |det D|`` of the subject's tissue, with ``D`` taken at the
    voxel's pre-image.  Head size (the affine), the random anatomical warp
    and the planted atrophy all change it: VBM with Jacobian modulation sees
    all three, so the truth must too.  Pre-images are found by fixed-point
    iteration (:meth:`Placement.mni_preimages`).
    """
    x = _world_coords(template.grid.shape, template.grid.affine).reshape(3, -1).astype(np.float64)
    det = np.full(x.shape[1], abs(np.linalg.det(place.affine[:3, :3])))
    after_warp, after_affine = place.mni_preimages(x, iterations)
    if place.atrophy is not None:
        det *= _field_jacobian_det(place.atrophy, place.atrophy_grid_affine, after_warp)
    det *= _field_jacobian_det(place.disp, place.disp_grid_affine, after_affine)
    return (1.0 / np.clip(det, 1e-3, None)).reshape(template.grid.shape).astype(np.float32)


# ---------------------------------------------------------------------------
# acquisition


@dataclass
class SubjectTruth:
    """Images and ground truth of one simulated subject."""

    subject: str
    row: dict
    mag: np.ndarray  # (echo, i, j, k)
    phase: np.ndarray
    gre_affine: np.ndarray
    t1w: np.ndarray
    t1w_affine: np.ndarray
    echo_times: np.ndarray
    chi_native: np.ndarray  # true brain chi on the GRE grid (ppm)
    brain_mask_native: np.ndarray
    local_field_ppm: np.ndarray
    total_field_ppm: np.ndarray
    gm_t1: np.ndarray
    wm_t1: np.ndarray
    csf_t1: np.ndarray
    mni_to_scanner: np.ndarray  # displacement-free: T1 scanner coords of every MNI voxel (3, ...)
    mni: dict
    tiv_ml: float
    placement: Placement
    mag_step: float  # the magnitude series' slope: mag holds multiples of it
    t1w_step: float


def _pull(maps: dict, names, template: Template, mni_xyz: np.ndarray, order: int = 1) -> dict:
    inv = np.linalg.inv(template.grid.affine)
    ijk = np.einsum("ab,b...->a...", inv[:3, :3], mni_xyz) + inv[:3, 3].reshape(3, 1, 1, 1)
    return {n: ndimage.map_coordinates(maps[n], ijk, order=order, mode="constant", cval=0.0).astype(np.float32)
            for n in names}


def _pull_air(maps: dict, template: Template, mni_xyz: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(template.grid.affine)
    ijk = np.einsum("ab,b...->a...", inv[:3, :3], mni_xyz) + inv[:3, 3].reshape(3, 1, 1, 1)
    return ndimage.map_coordinates(maps["air"], ijk, order=1, mode="constant", cval=1.0).astype(np.float32)


def _series_step(values: np.ndarray) -> float:
    """The slope that maps a series' largest value to the top 12-bit code (a float32, as NIfTI stores it)."""
    return float(np.float32(float(values.max()) / ADC_LEVELS))


def _digitised(values: np.ndarray, step: float) -> np.ndarray:
    """``values`` rounded to multiples of ``step``: what reading the scanner's scaled integers gives."""
    return (np.rint(values / step) * step).astype(np.float32)


def _digitised_phase(phase: np.ndarray) -> np.ndarray:
    """Phase rounded to 12-bit codes -4096..4095 of ``PHASE_STEP``; +pi wraps to -pi like any angle."""
    codes = np.rint(phase / PHASE_STEP)
    codes[codes >= 4096] -= 8192
    return (codes * PHASE_STEP).astype(np.float32)


def _bias_field(shape, rng, amplitude=0.15) -> np.ndarray:
    lat = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*lat, indexing="ij", sparse=True)
    c = rng.normal(0, 1, 6)
    f = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * y + c[4] * y * z + c[5] * x * z)
    f = f / max(np.abs(f).max(), 1e-9)
    return (1 + amplitude * f).astype(np.float32)


def _tissue_relaxation(g: dict, air: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proton density and R2* (1/s) of every GRE voxel from its tissue shares."""
    pd_map = (PD["gm"] * g["gm"] + PD["wm"] * g["wm"] + PD["csf"] * (g["csf"] + g["rim"]) + PD["scalp"] * g["scalp"]
              + PD["skull"] * g["skull"]) * (1 - air) * (1 - g["sinus"])
    denom = np.maximum(g["gm"] + g["wm"] + g["csf"] + g["rim"] + g["scalp"] + g["skull"], 1e-3)
    r2s = (R2S["gm"] * g["gm"] + R2S["wm"] * g["wm"] + R2S["csf"] * (g["csf"] + g["rim"]) + R2S["scalp"] * g["scalp"]
           + R2S["skull"] * g["skull"]) / denom
    return pd_map, r2s + R2S_PER_PPM * np.clip(g["chi_brain"], 0, None)


def _gre_echoes(g: dict, air, coil, phi0, omega, tes):
    """Noise-free complex GRE signal of each echo time."""
    pd_map, r2s = _tissue_relaxation(g, air)
    for te in tes:
        yield coil * pd_map * np.exp(-r2s * te) * np.exp(1j * (phi0 + omega * te))


def _upsample(x: np.ndarray, f: int) -> np.ndarray:
    """A smooth map on the grid ``f`` times finer whose voxel ``f*i`` lies on voxel ``i``."""
    ijk = np.indices(tuple(n * f for n in x.shape), dtype=np.float32) / np.float32(f)
    return ndimage.map_coordinates(x, ijk, order=1, mode="nearest").astype(x.dtype)


def _acquired_matrix(s_fine: np.ndarray, shape, f: int) -> np.ndarray:
    """The image a scanner reconstructs: the fine object's k-space cropped to the acquired matrix."""
    k = sfft.fftshift(sfft.fftn(s_fine))
    kept = tuple(slice(n * f // 2 - n // 2, n * f // 2 - n // 2 + n) for n in shape)
    return sfft.ifftn(sfft.ifftshift(k[kept])) / f**3


def simulate_subject(spec: SimulationSpec, row: dict, index: int) -> SubjectTruth:
    """Simulate one subject (deterministic for ``spec.seed`` and ``index``)."""
    rng = np.random.default_rng([spec.seed, 1, index])
    template = load_template(spec.voxel_size)
    maps = subject_mni_maps(template, spec, row, rng)
    place = _placement(rng, spec, row["head_scale"])
    place = _place_volume_change(place, maps["atrophy"], template, rng, spec)
    vs = spec.voxel_size
    # --- T1w grid (axial, slightly rotated and shifted) --------------------
    t1_rot = _rotation(np.deg2rad(rng.uniform(-3, 3, 3)))
    t1_shape, t1_aff = _grid_affine((230.0, 240.0, 200.0), vs, t1_rot, center=rng.uniform(-5, 5, 3) + (0, -15, 15))
    t1_mni = place.to_mni(_world_coords(t1_shape, t1_aff))
    tis = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim"), template, t1_mni)
    t1_air = _pull_air(maps, template, t1_mni)
    signal = (T1W["gm"] * tis["gm"] + T1W["wm"] * tis["wm"] + T1W["csf"] * (tis["csf"] + tis["rim"])
              + T1W["scalp"] * tis["scalp"] + T1W["skull"] * tis["skull"]) * (1 - t1_air)
    signal = signal * _bias_field(t1_shape, rng)
    sigma_t1 = T1W["wm"] / spec.t1_snr
    noisy = np.hypot(signal + sigma_t1 * rng.standard_normal(t1_shape), sigma_t1 * rng.standard_normal(t1_shape))
    t1w = (noisy * 1000).astype(np.float32)
    t1w_step = _series_step(t1w)
    t1w = _digitised(t1w, t1w_step)
    tiv = float((tis["gm"] + tis["wm"] + tis["csf"]).sum() * vs**3 / 1000.0)
    # --- GRE grid (oblique slab) --------------------------------------------
    tilt = np.deg2rad(rng.uniform(-spec.oblique_deg, spec.oblique_deg))
    gre_rot = _rotation((tilt, 0.0, 0.0))
    gre_shape, gre_aff = _grid_affine(spec.fov_mm, vs, gre_rot, center=rng.uniform(-4, 4, 3) + (0, -15, 18))
    gre_mni = place.to_mni(_world_coords(gre_shape, gre_aff), gre=True)
    g = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim", "chi_brain", "chi_full", "sinus"), template, gre_mni)
    air = np.clip(_pull_air(maps, template, gre_mni), 0, 1)
    tissue = np.clip(g["gm"] + g["wm"] + g["csf"], 0, 1)
    brain = tissue > 0.5
    chi_full = g["chi_full"] + CHI["air"] * air
    chi_brain = np.where(brain, g["chi_brain"], 0.0).astype(np.float32)
    b0dir = b0_direction(gre_aff)
    voxel = (vs, vs, vs)
    # The air outside the field of view continues indefinitely; referencing chi
    # to air makes the zero padding of the FFT physically right (a uniform
    # medium creates no field), so no artificial edge of the FOV appears.
    # The scanner samples a continuous field.  The FFT field of a voxelised
    # air/bone boundary rings (Gibbs) through the whole brain at a level
    # comparable to the tissue's own field, so sources outside the brain are
    # anti-aliased (Gaussian, 0.7 voxel) first; the brain is left exact and
    # its boundary untouched, so the background stays harmonic inside it.
    outside = np.where(brain, CHI["csf"], chi_full) - CHI["air"]
    outside = ndimage.gaussian_filter(outside, ANTIALIAS_SIGMA_VOX)
    source = np.where(brain, chi_brain - CHI["air"], outside)
    total = forward_field(source, voxel, b0dir).astype(np.float32)
    local = forward_field(chi_brain, voxel, b0dir).astype(np.float32)
    tes = spec.echo_times
    # Receiver phase offset: smooth, echo-independent.
    lat = [np.linspace(-1, 1, n) for n in gre_shape]
    x, y, z = np.meshgrid(*lat, indexing="ij", sparse=True)
    c = rng.uniform(-1, 1, 4)
    phi0 = (np.pi * c[0] + 0.8 * (c[1] * x + c[2] * y + c[3] * z)).astype(np.float32)
    coil = _bias_field(gre_shape, rng, amplitude=0.2)
    omega = 2 * np.pi * GAMMA_HZ_PER_T * spec.b0 * 1e-6 * total  # rad/s
    sigma = float(PD["wm"] * np.exp(-R2S["wm"] * tes[0])) / (spec.snr * vs**3)
    f = int(spec.kspace_truncation)
    if f == 1:
        echoes = _gre_echoes(g, air, coil, phi0, omega, tes)
    else:
        fine_shape = tuple(n * f for n in gre_shape)
        fine_aff = gre_aff.copy()
        fine_aff[:3, :3] /= f  # fine voxel f*i lies on acquired voxel i
        fine_mni = place.to_mni(_world_coords(fine_shape, fine_aff), gre=True)
        g_fine = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim", "sinus", "chi_brain"), template, fine_mni)
        air_fine = (_pull_air(maps, template, fine_mni) > 0.5).astype(np.float32)  # skin is a sharp edge
        del fine_mni
        fine = _gre_echoes(g_fine, air_fine, _upsample(coil, f), _upsample(phi0, f), _upsample(omega, f), tes)
        echoes = (_acquired_matrix(s_fine, gre_shape, f) for s_fine in fine)
    mags, phases = [], []
    for s_te in echoes:
        s_te = s_te + sigma * (rng.standard_normal(gre_shape) + 1j * rng.standard_normal(gre_shape))
        mags.append(np.abs(s_te).astype(np.float32))
        phases.append(_digitised_phase(np.angle(s_te)))
    mag = np.stack(mags) * np.float32(1000)
    mag_step = _series_step(mag)
    mag = _digitised(mag, mag_step)
    phase = np.stack(phases)
    mni = {k: maps[k] for k in ("gm", "wm", "csf", "chi_brain")}
    # What VBM's modulated GM should find: the template's GM carried back by
    # the subject's whole volume change, head size and anatomy included.
    mni["gm_mod"] = maps["gm"] * volume_fraction(place, template)
    return SubjectTruth(
        subject=row["participant_id"], row=row, mag=mag, phase=phase, gre_affine=gre_aff, t1w=t1w,
        t1w_affine=t1_aff, echo_times=tes, chi_native=chi_brain, brain_mask_native=brain.astype(np.uint8),
        local_field_ppm=np.where(brain, local, 0).astype(np.float32), total_field_ppm=total,
        gm_t1=tis["gm"], wm_t1=tis["wm"], csf_t1=tis["csf"], mni_to_scanner=np.zeros(0), mni=mni, tiv_ml=tiv,
        placement=place, mag_step=mag_step, t1w_step=t1w_step,
    )


# ---------------------------------------------------------------------------
# writing BIDS


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
        from .progress import track

        n = len(rows)
        futures = client.map(_simulate_and_write, [spec] * n, rows, list(range(n)), [str(out)] * n, [truth_maps] * n,
                             pure=False, key=[f"simulate-{r['participant_id']}" for r in rows])
        for fut in track(futures, "simulate", enabled=progress):
            r = fut.result()
            truths[r["subject"]] = r
    write_dataset_files(out, spec, participants, truths)
    participants["tiv_ml"] = [truths[s]["tiv_ml"] for s in participants["participant_id"]]
    return participants
