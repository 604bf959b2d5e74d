"""The QSM chain of the reference study as one pure function."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ferritin.cohort.dipole import b0_direction

from ..params import check_choices
from .background import vsharp
from .inversion import ilsqr, star_qsm, tkd, tv_admm
from .mask import bounding_box, brain_mask, dilate_by, largest_component, mask_depth
from .ringing import ringing_evidence, taper_kspace, taper_noise_gain, unring
from .unwrap import combine_echoes, field_to_ppm

__all__ = ["QSMParams", "reconstruct_qsm", "support_box", "outlier_voxels", "field_noise_ppm",
           "regularisation_scale"]


def outlier_voxels(local_field: np.ndarray, mask: np.ndarray, n_mad: float = 8.0) -> np.ndarray:
    """Voxels whose local field lies more than ``n_mad`` robust s.d. from the median."""
    values = local_field[mask]
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    if mad == 0:
        return np.zeros(mask.shape, bool)
    return mask & (np.abs(local_field - med) > n_mad * mad)


def field_noise_ppm(local_field: np.ndarray, mask: np.ndarray) -> float:
    """Robust estimate of the voxel noise of a local field map (ppm).

    The 7-point Laplacian of white noise of s.d. sigma has s.d. sqrt(42) sigma; the
    median absolute deviation of the Laplacian inside the mask (away from its edge)
    ignores the few large values at tissue boundaries and veins.
    """
    core = ndimage.binary_erosion(mask)
    if not core.any():
        return 0.0
    lap = ndimage.laplace(np.asarray(local_field, dtype=np.float64))[core]
    return float(1.4826 * np.median(np.abs(lap - np.median(lap))) / np.sqrt(42.0))


def regularisation_scale(noise_ppm: float, reference_ppm: float | None) -> float:
    """Factor on the regularisation weights for a local field's noise: max(1, (noise / reference)^2).

    ``noise_ppm`` is :func:`field_noise_ppm` of the field divided by how much a filter
    applied before (the k-space taper) lowered it (:func:`.ringing.taper_noise_gain`).
    """
    if reference_ppm is None:
        return 1.0
    return max(1.0, (noise_ppm / reference_ppm) ** 2)


@dataclass(frozen=True)
class QSMParams:
    """Parameters of :func:`reconstruct_qsm` (all recorded with the output)."""

    #: the values each method-naming parameter accepts (checked by the study spec)
    choices: ClassVar[dict] = {
        "combine": ("phase-difference", "nonlinear", "laplacian-wls", "laplacian-te", "path-wls"),
        "unwrapper": ("path", "laplacian"),
        "inversion": ("tv", "star", "tkd", "ilsqr"),
        "ringing": ("auto", "unring", "taper", "none"),
        "reference": ("brain", "csf", "wm"),
        "mask_source": ("t1", "magnitude"),
    }

    #: Against truncation (Gibbs) ringing of the scalp into the brain's phase (see
    #: :mod:`.ringing`): "auto" filters the outer k-space only along the axes where
    #: the first echo shows the ringing's signature, and leaves an image without it
    #: untouched; "taper" filters every axis, "unring" shifts locally (Kellner 2016),
    #: "none" leaves the images as they are (as QSMxT, SEPIA and MEDI do).
    ringing: str = "auto"
    kspace_taper: float = 0.3  # outer fraction of k-space the "taper" (and "auto", where it filters) tapers
    #: Where the QSM mask comes from.  "t1": the brain mask of the subject's T1
    #: (the anatomy stage's, carried to the GRE grid by the coregistration)
    #: intersected with the magnitude mask; "magnitude": the magnitude mask
    #: alone.  A magnitude mask of a real head reaches into the scalp, the skull
    #: base and the sinuses, where the phase is not the brain's: the inversion
    #: spreads those fields into the brain as rings and stripes.
    mask_source: str = "t1"
    #: How the echoes' phases become one field map: "phase-difference" (complex
    #: differences of successive echoes, refined with every echo, one spatial
    #: unwrap), a nonlinear complex fit, or weighted fits after unwrapping each echo.
    combine: str = "phase-difference"
    unwrapper: str = "path"  # spatial unwrapping: exact path following, or Laplacian (fast, approximate)
    mask_detach_mm: float = 5.0  # erosion that detaches the scalp from the brain in the magnitude mask
    mask_erode_mm: float | None = None  # final erosion of the mask; None: one voxel (the bright CSF rim is unreliable)
    vsharp_max_radius_mm: float = 12.0  # largest V-SHARP sphere
    vsharp_min_radius_vox: float = 2.0  # smallest V-SHARP sphere, in voxels
    vsharp_threshold: float = 0.05  # truncation of V-SHARP's deconvolution
    #: Passes that drop local-field outliers near the mask's edge (background
    #: V-SHARP could not remove) and remove the background again.
    quality_iterations: int = 2
    quality_mad: float = 12.0  # an outlier lies this many median absolute deviations from the median
    quality_margin_mm: float = 6.0  # margin cut around each outlier
    inversion: str = "tv"  # dipole inversion: total variation (ADMM), STAR-QSM, TKD or iLSQR
    tkd_threshold: float = 0.15  # truncation of the dipole kernel for TKD
    tv_lambda: float = 1e-4  # weight of the total variation (before the noise scaling below)
    tv_iterations: int = 20  # over-relaxed ADMM iterations of TV and STAR (see engine.qsm.inversion.tv_admm)
    star_lambda_large: float = 3e-3  # STAR-QSM's weight for the large-susceptibility stage
    star_lambda_small: float = 1e-4  # STAR-QSM's weight for the small-susceptibility stage
    #: The regularisation weights above hold for a local field whose noise is at most
    #: this (ppm; robust estimate, :func:`field_noise_ppm`): the level of the simulated
    #: cohorts they were chosen on.  Noisier fields (few or short echoes, coarse voxels,
    #: low SNR) get the weights multiplied by (noise / reference)^2, as the optimal
    #: weight of a Gaussian likelihood grows with its variance; None keeps them fixed.
    reference_noise_ppm: float | None = 0.0025
    ilsqr_tol: float = 0.01  # relative residual at which iLSQR stops
    #: The region whose mean χ is zero: the whole QSM mask ("brain"), the CSF of the
    #: lateral ventricles ("csf") or the white matter ("wm"), from the subject's own
    #: segmentation (see :mod:`ferritin.engine.chi_reference`).
    reference: str = "brain"
    #: voxels eroded from every deep-grey label before its table is read (see :mod:`ferritin.engine.nuclei`)
    nuclei_erosion_vox: int = 1

    def __post_init__(self):
        check_choices(self)
        if not 0.0 <= self.kspace_taper <= 1.0:
            raise ValueError(f"kspace_taper must lie in [0, 1], got {self.kspace_taper}")
        if int(self.nuclei_erosion_vox) != self.nuclei_erosion_vox or self.nuclei_erosion_vox < 0:
            raise ValueError(f"nuclei_erosion_vox must be a whole number of voxels >= 0, got {self.nuclei_erosion_vox}")

    def to_dict(self) -> dict:
        return asdict(self)


def reconstruct_qsm(magnitude, phase, echo_times, affine, b0_tesla, params: QSMParams = QSMParams(),
                    mask: np.ndarray | None = None, brain: np.ndarray | None = None,
                    provenance: dict | None = None):
    """Magnitude and phase (echo, x, y, z) to chi (ppm) and its mask.

    Steps: brain mask from the magnitude (within ``brain``, the anatomical
    brain mask on this grid, when given), optional removal of truncation
    ringing, Laplacian unwrapping and weighted echo combination, V-SHARP (radii
    from ``vsharp_max_radius_mm`` down to ``vsharp_min_radius_vox`` voxels), an
    estimate of the local field's noise that scales the regularisation, dipole
    inversion with B0 taken from the affine (oblique slabs), chi referenced to
    the mean over the mask.

    A precomputed ``mask`` may be given instead of the magnitude-based one;
    ``brain`` (e.g. :func:`ferritin.engine.anat.t1_brain_on_gre`)
    restricts the magnitude-based one to the brain.

    ``provenance``, a dict, receives what the chain decided for these images:
    the ringing evidence and the axes filtered, the echo combination used, the
    local field's noise and the regularisation weights that ran.

    Returns
    -------
    chi : ndarray (x, y, z), ppm
    mask : ndarray of bool, where chi is defined
    """
    magnitude = np.asarray(magnitude)
    if not np.issubdtype(magnitude.dtype, np.floating):
        magnitude = magnitude.astype(np.float64)
    affine = np.asarray(affine, dtype=float)
    vs = tuple(float(v) for v in voxel_sizes(affine))
    mask = _qsm_mask(magnitude, vs, params, mask, brain)
    # Everything below reads the images only inside the mask (and pads its own FFT grids), so it runs
    # on the mask's bounding box: a third or less of a head-sized field of view at the study's 1 mm.
    full_shape, box = mask.shape, support_box(mask, margin=_BOX_MARGIN_VOX)
    record = {} if provenance is None else provenance
    omega, tapered = _combined_field(magnitude, np.asarray(phase), echo_times, vs, mask, box, params, record)
    del magnitude, phase  # the background removal and the inversion run without the echoes
    local, lmask = _local_field(field_to_ppm(omega, b0_tesla), mask[box], vs, params)
    noise = field_noise_ppm(local, lmask) / taper_noise_gain(full_shape, params.kspace_taper, tapered)
    record["local_field_noise_ppm"] = round(noise, 6)
    chi = _inverted(local, lmask, vs, b0_direction(affine), regularisation_scale(noise, params.reference_noise_ppm),
                    params, record)
    return _paste(chi.astype(np.float32), box, full_shape), _paste(lmask, box, full_shape)


def _qsm_mask(magnitude, vs, params: QSMParams, mask, brain) -> np.ndarray:
    """The given mask checked, or the first echo's brain mask within ``brain`` (the T1's, when given)."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != magnitude.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from the image shape {magnitude.shape[1:]}")
        return mask
    erode = max(vs) if params.mask_erode_mm is None else params.mask_erode_mm
    mask = brain_mask(magnitude[0], vs, detach_mm=params.mask_detach_mm, erode_mm=erode)
    if brain is None:
        return mask
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != mask.shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from the image shape {mask.shape}")
    mask = largest_component(mask & brain)
    if not mask.any():
        raise ValueError("the brain mask and the magnitude mask do not overlap: check the coregistration")
    return mask


def _combined_field(magnitude, phase, echo_times, vs, mask, box, params: QSMParams, record: dict):
    """The echoes' frequency (rad/s) on ``box``, after the ringing filter; and the axes tapered."""
    # after the mask, which is drawn on the unfiltered magnitude: the taper widens the head's edge
    tapered = _tapered_axes(magnitude, phase, params, record)
    if params.ringing == "unring":
        magnitude, phase = unring(magnitude, phase)
    if tapered:  # filters the whole field of view, keeps the box
        magnitude, phase = taper_kspace(magnitude, phase, params.kspace_taper, box=box, axes=tapered)
    else:
        magnitude, phase = magnitude[(slice(None), *box)], phase[(slice(None), *box)]
    method = params.combine
    te = np.asarray(echo_times, dtype=float)
    if method in ("phase-difference", "nonlinear") and (te.size < 2 or not np.allclose(np.diff(te), np.diff(te)[0], rtol=1e-3)):
        method = "laplacian-wls"  # unequal echo spacing: fit each unwrapped echo instead
    record["combine"] = method
    return combine_echoes(phase, magnitude, echo_times, vs, method=method, mask=mask[box],
                          unwrapper=params.unwrapper), tapered


def _local_field(total, mask, vs, params: QSMParams):
    """V-SHARP, then passes that cut the edge's local-field outliers and remove the background again."""
    step = max(vs)
    radii = np.arange(params.vsharp_max_radius_mm, params.vsharp_min_radius_vox * step - 1e-6, -step)
    if radii.size == 0:
        radii = np.array([params.vsharp_max_radius_mm])
    kernels = {}  # the passes below filter on the same grid: its kernels are computed once
    depth = mask_depth(mask, vs)
    local, lmask = vsharp(total, mask, vs, radii_mm=radii, threshold=params.vsharp_threshold, kernels=kernels,
                          depth=depth)
    for _ in range(params.quality_iterations):
        # Background that V-SHARP could not remove (next to sinuses, at the
        # edge of the field of view) shows up as local-field outliers that the
        # inversion would smear over the whole brain: drop them from the mask
        # and remove the background again.  Such residues lie within V-SHARP's
        # largest sphere of the mask's edge; deeper outliers are real sources
        # (iron-rich nuclei, veins): cutting them punched holes in the deep
        # grey matter of some subjects, and the group mask lost them for all.
        bad = outlier_voxels(local, lmask, params.quality_mad) & (depth <= params.vsharp_max_radius_mm)
        if not bad.any():
            break
        grow = dilate_by(bad, params.quality_margin_mm, vs)
        mask = largest_component(mask & ~grow)
        depth = mask_depth(mask, vs)
        local, lmask = vsharp(total, mask, vs, radii_mm=radii, threshold=params.vsharp_threshold,
                              kernels=kernels, depth=depth)
    # V-SHARP's spectra (a quarter of a GiB at 1 mm) are freed on return, before the inversion's own buffers
    return local, lmask


def _inverted(local, lmask, vs, b, scale: float, params: QSMParams, record: dict) -> np.ndarray:
    """The dipole inversion the parameters name, its weights multiplied by ``scale``."""
    record["regularisation_scale"] = round(scale, 4)
    if params.inversion == "tkd":
        return tkd(local, lmask, vs, b, threshold=params.tkd_threshold)
    if params.inversion == "tv":
        record["tv_lambda_effective"] = params.tv_lambda * scale
        return tv_admm(local, lmask, vs, b, lam=params.tv_lambda * scale, iterations=params.tv_iterations)
    if params.inversion == "star":
        record["star_lambdas_effective"] = [params.star_lambda_large * scale, params.star_lambda_small * scale]
        return star_qsm(local, lmask, vs, b, lam_large=params.star_lambda_large * scale,
                        lam_small=params.star_lambda_small * scale, iterations=params.tv_iterations)
    if params.inversion == "ilsqr":
        return ilsqr(local, lmask, vs, b, tol=params.ilsqr_tol)
    raise ValueError(f"unknown dipole inversion {params.inversion!r} (tkd, tv, star or ilsqr)")


def _tapered_axes(magnitude, phase, params: QSMParams, record: dict) -> tuple[int, ...]:
    """The axes the k-space taper filters: all with "taper", those that ring with "auto", none otherwise."""
    if params.ringing == "taper":
        axes = (0, 1, 2)
    elif params.ringing == "auto":
        evidence = ringing_evidence(magnitude, phase)
        record["ringing_evidence"] = evidence.to_dict()
        axes = evidence.axes
    else:
        axes = ()
    record["ringing"] = params.ringing
    record["tapered_axes"] = list(axes)
    return axes


#: voxels kept around the mask's bounding box: the Laplacian unwrapper and the edge tests see a border
_BOX_MARGIN_VOX = 2


def support_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding every voxel of ``mask``, grown by ``margin`` voxels (within the array)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("mask is empty")
    return bounding_box(mask, margin)


def _paste(values: np.ndarray, box: tuple[slice, ...], shape) -> np.ndarray:
    out = np.zeros(shape, dtype=values.dtype)
    out[box] = values
    return out
