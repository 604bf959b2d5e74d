"""Anatomy stages: bias correction, brain extraction, tissue segmentation, TIV,
GRE→T1 coregistration, diffeomorphic normalisation to MNI and VBM.

ANTs (antspyx) does the registrations and the N4 and Atropos steps; every
resampling into MNI space is done here from point maps.  The anatomy runs
before QSM: its brain mask, carried to the GRE grid by the coregistration,
bounds the QSM mask, and χ then goes from the GRE grid to MNI through
coregistration ∘ normalisation (the stored point map) with one interpolation
only (:func:`chi_to_mni`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ..params import check_choices
from ..qsm.mask import brain_mask, dilate_by, largest_component
from ..timing import StepClock
from .antsbridge import (
    LPS,
    atropos,
    deterministic,
    from_ants,
    itk_matrix_to_ras,
    points_map,
    scratch_dir,
    to_ants,
)
from .extraction import extract_brain
from .fov import HeadBox, find_head, working_voxel_size

__all__ = ["AnatParams", "AnatResult", "process_anatomy", "process_anatomy_checked", "renormalise_on_tissue", "bias_correct", "sample_at",
           "t1_brain_on_gre", "t1_map_on_gre", "chi_to_mni", "jacobian_determinant", "smooth_fwhm"]


@dataclass(frozen=True)
class AnatParams:
    """Parameters of :func:`process_anatomy` (recorded with its outputs)."""

    #: the values each method-naming parameter accepts (checked by the study spec)
    choices: ClassVar[dict] = {
        "syn_metric": ("mattes", "CC", "meansquares"),
        "normalise_on": ("t1", "tissue"),
        "tissue_metric": ("meansquares", "CC", "mattes"),
        "brain_extraction": ("deepbet", "template"),
        "affine_start": ("search", "centre"),
    }

    n4_shrink: int = 4  # N4 works on the image shrunk by this factor (ANTs' default; the field is smooth)
    #: B-spline fitting levels of N4 (each doubles the mesh).  Fewer than ANTs'
    #: default 4: a fine mesh bends the field into the image's own low-frequency
    #: contrast and moves deep grey matter's intensity against the rest of the brain.
    n4_levels: int = 2
    syn_iterations: tuple = (40, 20, 10)  # T1 SyN iterations per level (shrink 4, 2, 1)
    syn_metric: str = "mattes"  # similarity of the T1 SyN: mutual information (mattes), CC or mean squares
    syn_sampling: int = 32  # histogram bins for mattes, radius for CC
    #: What drives the normalisation whose deformation VBM and χ use:
    #: "tissue" (after segmentation, a second SyN of the subject's GM and WM
    #: posteriors against the template's GM and WM maps, as DARTEL registers
    #: tissue maps) or "t1" (the bias-corrected T1 against the MNI T1 only).
    #: Tissue maps have no intensity contrast to match, so local volume changes
    #: are followed more faithfully (``docs/vbm-contraction``).
    normalise_on: str = "tissue"
    tissue_metric: str = "meansquares"  # similarity of the tissue SyN
    tissue_sampling: int = 0  # metric parameter (radius for CC)
    tissue_iterations: tuple = (40, 20, 10)  # tissue SyN iterations per level (shrink 4, 2, 1)
    #: The rigid GRE → T1 registration runs against the bias-corrected T1 resampled to this voxel size
    #: (mm) when the T1 is finer (None: the T1 as it is).  Six parameters need no 1 mm samples, and
    #: the full-resolution level of a 1 mm T1 costs most of the registration's time.
    coreg_voxel_mm: float | None = 2.0
    #: Weight of the template priors against the intensities in Atropos.  The priors
    #: are smooth population maps: a strong weight pulls GM into the sulcal CSF of a
    #: real T1; a weak one keeps them as the classes' start and guide.
    seg_prior_weight: float = 0.05
    seg_iterations: int = 5  # Atropos EM iterations
    seg_mrf: float = 0.1  # Atropos Markov random field smoothing weight
    vbm_fwhm_mm: float = 4.0  # Gaussian smoothing of the modulated GM (FWHM)
    seed: int = 1  # random seed of the registrations and Atropos (results are repeatable)
    skull_strip: bool = True  # register and segment the brain only (extracted first), not the whole head
    #: How the brain is found before any registration: "deepbet" (a network trained on
    #: thousands of T1w scans, :mod:`.extraction`) or "template" (the template's brain
    #: mask carried back through an affine from a rough intensity mask: the fallback
    #: when the network's mask is not a plausible brain).
    brain_extraction: str = "deepbet"
    #: Where the affine to the template starts: "search" (the extracted brain against
    #: the template's brain from many rotations, ITK's antsAffineInitializer, best by
    #: mutual information) or "centre" (a translation to the estimated brain centre).
    #: A subject whose normalisation fails QC is tried once more from the other start.
    affine_start: str = "search"
    search_degrees: float = 30.0  # the start search covers rotations up to this about each axis
    search_step_degrees: float = 15.0  # in steps of this
    search_voxel_mm: float = 4.0  # both brains are resampled to this for the search (it sets the start only)
    strip_detach_mm: float = 5.0  # erosion that cuts the scalp off the first, intensity-based brain mask
    strip_margin_mm: float = 4.0  # margin kept around that mask for the affine
    #: Field of view kept below the top of the head (FSL's robustfov keeps 170 mm):
    #: neck and shoulders of real scans otherwise pull the first registration down.
    fov_below_top_mm: float = 180.0
    #: How far below the top of the head an adult brain's centre lies: where the
    #: registration to the template starts, instead of the centre of the image.
    brain_centre_below_top_mm: float = 75.0
    #: The rough, intensity-based brain mask is kept within this distance of that
    #: centre (larger than any adult brain's half-length), which cuts off the face,
    #: neck and shoulders a threshold alone keeps.
    rough_brain_radius_mm: float = 95.0
    #: Images finer than this (e.g. 0.5 mm in-plane reconstructions) are resampled
    #: to 1 mm for segmentation and normalisation; the maps come back on the T1 grid.
    finest_voxel_mm: float = 0.9
    #: Resample every T1 to this voxel size (mm) for segmentation and normalisation
    #: (None: only images finer than ``finest_voxel_mm``, to 1 mm).  Coarser is
    #: faster and less precise: for quick looks and tests, not for a study.
    working_voxel_mm: float | None = None

    def __post_init__(self):
        check_choices(self)
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, int | float) and not isinstance(v, bool) and not np.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.vbm_fwhm_mm < 0:
            raise ValueError(f"vbm_fwhm_mm must be >= 0 (0: no smoothing), got {self.vbm_fwhm_mm!r}")
        if not 0 < self.search_degrees <= 180 or not 0 < self.search_step_degrees <= self.search_degrees:
            raise ValueError(f"search_degrees must lie in (0, 180] and search_step_degrees in (0, search_degrees]; "
                             f"got {self.search_degrees!r} and {self.search_step_degrees!r}")
        for name in ("search_voxel_mm", "fov_below_top_mm", "brain_centre_below_top_mm", "rough_brain_radius_mm",
                     "finest_voxel_mm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnatResult:
    """Per-subject anatomy outputs (native T1 grid and MNI grid)."""

    gm: np.ndarray  # native T1 grid posteriors
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    tiv_ml: float
    gre_to_t1: np.ndarray  # 4x4 RAS: T1 world point -> GRE world point
    gm_mni: np.ndarray  # warped GM (unmodulated)
    wm_mni: np.ndarray  # warped WM (unmodulated)
    gm_mod: np.ndarray  # modulated by the Jacobian determinant
    gm_mod_smooth: np.ndarray
    jacobian: np.ndarray
    qc_gm_corr: float  # correlation of warped GM with the template GM
    qc_dice: float  # Dice of warped GM > 0.5 with template GM > 0.5
    #: correlation of the warped T1 with the template T1 in the template brain:
    #: an intensity check that a wrong normalisation cannot pass by construction
    qc_t1_corr: float = float("nan")
    #: distance (mm) from the top of the head down to the top of the brain mask:
    #: a brain mask in the neck or face lies far below the vertex
    qc_brain_top_gap_mm: float = float("nan")
    gm_ml: float = float("nan")
    wm_ml: float = float("nan")
    csf_ml: float = float("nan")
    #: how the T1 was prepared: field of view cut below the brain, working voxel size
    preparation: dict | None = None
    t1_points: np.ndarray | None = None  # (3, x, y, z): T1 world point of every MNI voxel
    t1_mni: np.ndarray | None = None  # bias-corrected T1 brain on the MNI grid (for a study template)
    seconds: dict | None = None  # per-step wall time
    #: the affine part of the normalisation (MNI point -> T1 point), as ITK
    #: transform parameters, so :func:`renormalise_on_tissue` can start from it
    affine_itk: dict | None = None


def sample_at(data: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int = 1, cval=np.nan) -> np.ndarray:
    """Values of ``data`` (placed by ``affine``) at world points (3, ...)."""
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    shp = points.shape[1:]
    p = points.reshape(3, -1)
    valid = np.isfinite(p).all(axis=0)
    ijk = inv[:3, :3] @ np.where(valid, p, 0) + inv[:3, 3:4]
    out = ndimage.map_coordinates(np.asarray(data, dtype=np.float64), ijk, order=order, mode="constant", cval=cval)
    out[~valid] = cval
    return out.reshape(shp)


def t1_map_on_gre(values: np.ndarray, t1_affine: np.ndarray, gre_to_t1: np.ndarray, gre_shape,
                  gre_affine: np.ndarray) -> np.ndarray:
    """A map of the T1 grid (a mask, a tissue probability) on the GRE grid, by linear interpolation
    through the rigid GRE -> T1 coregistration (``gre_to_t1``); 0 outside the T1's field of view."""
    gre_affine = np.asarray(gre_affine, float)
    ijk = np.indices(tuple(gre_shape), dtype=np.float64).reshape(3, -1)
    world = gre_affine[:3, :3] @ ijk + gre_affine[:3, 3:4]
    to_t1 = np.linalg.inv(np.asarray(gre_to_t1, float))  # gre_to_t1 maps T1 points to GRE points
    pts = (to_t1[:3, :3] @ world + to_t1[:3, 3:4]).reshape((3, *tuple(gre_shape)))
    return sample_at(np.asarray(values, np.float32), t1_affine, pts, order=1, cval=0.0)


def t1_brain_on_gre(brain_mask: np.ndarray, t1_affine: np.ndarray, gre_to_t1: np.ndarray, gre_shape,
                    gre_affine: np.ndarray) -> np.ndarray:
    """The T1 brain mask on the GRE grid, through the rigid GRE -> T1 coregistration (``gre_to_t1``)."""
    return t1_map_on_gre(brain_mask, t1_affine, gre_to_t1, gre_shape, gre_affine) > 0.5


def jacobian_determinant(points: np.ndarray, voxel_size) -> np.ndarray:
    """det of the spatial derivative of a point map (moving mm per fixed mm)."""
    vs = np.asarray(voxel_size, dtype=float)
    grads = np.empty((3, 3, *points.shape[1:]))
    for a in range(3):
        for b in range(3):
            grads[a, b] = np.gradient(points[a], axis=b) / vs[b]
    J = np.moveaxis(grads, (0, 1), (-2, -1))
    with np.errstate(invalid="ignore"):  # NaN where the map leaves the image
        return np.linalg.det(J)


def smooth_fwhm(data: np.ndarray, fwhm_mm: float, voxel_size, mask: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing by ``fwhm_mm`` (NaN treated as 0, as SPM's spm_smooth)."""
    sigma = fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / np.asarray(voxel_size, dtype=float)
    x = np.nan_to_num(np.asarray(data, dtype=np.float64))
    out = ndimage.gaussian_filter(x, sigma, mode="constant")
    return np.where(mask, out, 0.0) if mask is not None else out


def bias_correct(t1_img, params: AnatParams = AnatParams()):
    """N4 bias-field correction of an ANTsImage with ``params.n4_levels`` fitting levels."""
    import ants

    if params.n4_levels < 1:
        raise ValueError(f"n4_levels must be >= 1, got {params.n4_levels}")
    return ants.n4_bias_field_correction(t1_img, shrink_factor=params.n4_shrink,
                                         convergence={"iters": [50] * params.n4_levels, "tol": 1e-7})


def process_anatomy(t1: np.ndarray, t1_affine: np.ndarray, gre_mag: np.ndarray, gre_affine: np.ndarray,
                    template, params: AnatParams = AnatParams(), targets: dict | None = None) -> AnatResult:
    """Segment and normalise one subject, and coregister its GRE to its T1.

    Steps: field of view cut below the brain (and very fine images resampled),
    N4, a rough brain mask near the head's brain centre, an affine to the
    template started at that centre, the template's brain mask back to the
    subject (skull strip), SyN, prior-guided Atropos, the tissue SyN, rigid
    GRE → T1, and one resampling of the tissue maps to MNI.  Native maps are
    returned on the grid of ``t1`` whatever was cut or resampled; the point
    map (:attr:`AnatResult.t1_points`) and ``gre_to_t1`` carry χ to MNI later
    (:func:`chi_to_mni`).

    Parameters
    ----------
    t1, t1_affine : T1w image and its RAS affine.
    gre_mag, gre_affine : first-echo GRE magnitude and its affine.
    template : cohort.templates.Template
        MNI grid, T1 template and tissue priors.
    params : AnatParams
    targets : dict, optional
        Images on the template grid to normalise to instead of the
        template's own: ``"t1"`` for the affine and the T1 normalisation,
        ``"gm"`` and ``"wm"`` for the tissue normalisation (a study
        template).  Segmentation priors and QC stay the template's.
    """
    import ants

    t1 = np.asarray(t1, dtype=np.float32)
    if t1.ndim != 3 or not np.isfinite(t1).all() or t1.max() <= 0:
        raise ValueError("T1w image must be a 3-D, finite, non-empty array")
    grid = template.grid
    unknown = set(targets or {}) - {"t1", "gm", "wm"}
    if unknown:
        raise ValueError(f"unknown normalisation targets {sorted(unknown)}; use 't1', 'gm' and 'wm'")
    targets = {"t1": template.t1, "gm": template.gm, "wm": template.wm, **(targets or {})}
    _check_target_shapes(targets, grid)
    clock = StepClock()
    lap = clock.lap

    work, work_affine, box, preparation = _prepare_t1(t1, np.asarray(t1_affine, float), params)
    work_voxel = tuple(float(v) for v in voxel_sizes(work_affine))
    lap("field of view")
    extracted = None
    if params.skull_strip and params.brain_extraction == "deepbet":
        extracted, preparation["brain_extraction"] = _extracted_brain(t1[box.slices], box.affine, work.shape,
                                                                      work_affine)
        lap("brain extraction")
    if params.skull_strip and extracted is None:
        preparation.setdefault("brain_extraction", {})["method"] = TEMPLATE_EXTRACTION
    with deterministic(params.seed), scratch_dir() as tmp:
        t1_img = to_ants(work, work_affine)
        n4 = _bias_corrected(t1_img, params, tmp)
        lap("n4")
        mni_t1 = to_ants(np.asarray(targets["t1"], np.float32), grid.affine)
        # The template is brain only, so the mask restricts every metric to the MNI brain.
        mni_mask = _metric_mask(template)
        centre = _centre_transform(box.centre_mm, template, os.path.join(tmp, "centre.mat"))
        moving, initial = n4, [centre]
        if params.skull_strip:
            def rough():
                return _rough_brain_mask(n4.numpy(), n4, box.centre_mm, params)

            moving = _brain_only(n4, extracted if extracted is not None else rough())
            start = centre
            if params.affine_start == "search":
                start = _searched_start(moving, mni_t1, params, os.path.join(tmp, "search.mat"))
            initial = _brain_affine(moving, mni_t1, mni_mask, start, params, tmp)
            fit = _affine_fit(moving, mni_t1, initial, template.brain_mask)
            preparation["brain_extraction"]["affine_t1_correlation"] = round(fit, 3)
            if extracted is not None and fit < MIN_AFFINE_FIT:
                # what the network found does not look like the template's brain: not a brain, or not all of it
                preparation["brain_extraction"]["fallback"] = (
                    f"the network's brain, placed by its affine, correlates {fit:.2f} < {MIN_AFFINE_FIT} with the "
                    f"template T1: the template's brain mask was used")
                preparation["brain_extraction"]["method"] = TEMPLATE_EXTRACTION
                extracted = None
                moving = _brain_only(n4, rough())
                initial = _brain_affine(moving, mni_t1, mni_mask, start, params, tmp)
            if extracted is None:  # the template's brain mask, back through the affine, strips the T1
                moving = _template_stripped(n4, mni_mask, initial)
            preparation["affine_start"] = params.affine_start
            lap("affine + skull strip")
        reg = ants.registration(fixed=mni_t1, moving=moving,
                                type_of_transform="SyNOnly" if params.skull_strip else "SyN",
                                mask=mni_mask, initial_transform=initial,
                                syn_metric=params.syn_metric, syn_sampling=params.syn_sampling,
                                reg_iterations=tuple(params.syn_iterations),
                                outprefix=os.path.join(tmp, "norm_"), random_seed=params.seed)
        lap("normalisation (SyN)")
        priors, brain_prob, mask_img = _priors_on_subject(n4, template, reg["invtransforms"])
        if extracted is not None:  # the subject's own brain, not the template's carried back
            mask_img = n4.new_image_like(extracted.astype(np.float32))
        post = [p.numpy() for p in atropos(n4, mask_img, priors, tmp, mrf=params.seg_mrf,
                                            iterations=params.seg_iterations,
                                            prior_weight=params.seg_prior_weight)]
        lap("segmentation (Atropos)")
        affine_file = initial[0] if params.skull_strip else reg["fwdtransforms"][-1]
        if params.normalise_on == "tissue":
            tissue_img = [n4.new_image_like(np.asarray(p, np.float32)) for p in post]  # CSF, GM, WM
            reg = _tissue_syn(tissue_img[1], tissue_img[2], targets, grid, mni_mask, [affine_file], params, tmp)
            lap("normalisation on tissue (SyN)")
        affine_itk = _read_affine(affine_file)
        gre_to_t1 = _coregister_gre(n4, gre_mag, gre_affine, params, tmp)
        lap("coregistration (rigid)")
        # Point map MNI voxel -> T1 world, then everything sampled once.
        pts_t1 = points_map(grid.shape, grid.affine, reg["fwdtransforms"], n4)
        n4_arr, brain, icv = n4.numpy(), mask_img.numpy() > 0, np.clip(brain_prob.numpy(), 0.0, 1.0)
    csf, gm, wm = post
    vox_ml = float(np.prod(work_voxel)) / 1000.0
    # TIV as the soft intracranial mask of the template brought back to the
    # subject (the "reverse-normalised ICV mask" of Keihaninejad et al.
    # 2010): partial voxels at the skull count by their fraction, and
    # atrophy (GM turning into CSF) does not change it.
    tiv = float(icv.sum() * vox_ml)
    _, t1_aff_ants = from_ants(t1_img)
    n4_brain = n4_arr * brain
    t1_norm = n4_brain / max(float(n4_brain[brain].mean()), 1e-12)
    mni = _to_mni(pts_t1, t1_aff_ants, gm, wm, template, params, t1=t1_norm)
    volumes = {f"{name}_ml": float(np.sum(m) * vox_ml) for name, m in (("gm", gm), ("wm", wm), ("csf", csf))}
    brain_top = _world_top(brain, t1_aff_ants)
    native = _back_to_t1_grid({"gm": gm, "wm": wm, "csf": csf, "brain_mask": brain.astype(np.float32)},
                              t1_aff_ants, box, t1.shape, np.asarray(t1_affine, float))
    lap("resampling, modulation, smoothing")
    return AnatResult(gm=native["gm"], wm=native["wm"], csf=native["csf"], brain_mask=native["brain_mask"] > 0.5,
                      tiv_ml=tiv, gre_to_t1=gre_to_t1, t1_points=pts_t1, seconds=clock.steps, affine_itk=affine_itk,
                      qc_t1_corr=_t1_similarity(mni["t1_mni"], targets["t1"], template.brain_mask),
                      qc_brain_top_gap_mm=box.top_mm - brain_top, preparation=preparation, **volumes, **mni)


def process_anatomy_checked(t1: np.ndarray, t1_affine: np.ndarray, gre_mag: np.ndarray, gre_affine: np.ndarray,
                            template, params: AnatParams = AnatParams(), targets: dict | None = None,
                            failures: Callable[[AnatResult], list[str]] | None = None) -> AnatResult:
    """:func:`process_anatomy`, tried once more from the other affine start when its result fails ``failures``.

    A registration that starts in the wrong basin ends there; QC catches it,
    but the subject would be lost.  The second attempt starts the affine the
    other way (:attr:`AnatParams.affine_start`); the attempt with fewer QC
    failures is kept (the first on a tie), and both are recorded in
    ``preparation["attempts"]`` so the report can say what happened.

    Parameters
    ----------
    failures : callable, optional
        The QC failures of a result in words (empty: it passes); without it,
        this is :func:`process_anatomy`.
    """
    first = process_anatomy(t1, t1_affine, gre_mag, gre_affine, template, params, targets)
    problems = failures(first) if failures is not None else []
    if not problems or not params.skull_strip:
        return first
    retry = replace(params, affine_start="centre" if params.affine_start == "search" else "search")
    second = process_anatomy(t1, t1_affine, gre_mag, gre_affine, template, retry, targets)
    again = failures(second)
    kept = second if len(again) < len(problems) else first
    kept.preparation["attempts"] = [
        {"affine_start": params.affine_start, "qc_failures": problems, "kept": kept is first},
        {"affine_start": retry.affine_start, "qc_failures": again, "kept": kept is second}]
    other = first if kept is second else second
    kept.seconds = {**kept.seconds, "the other attempt": float(sum(other.seconds.values()))}
    return kept


def _bias_corrected(t1_img, params: AnatParams, tmp: str):
    """N4 of the working T1, read back from NIfTI.

    Atropos re-reads its priors from NIfTI files, whose header stores the
    orientation in single precision; the T1 goes through the same precision so
    that ITK sees one physical space.
    """
    import ants

    n4_file = os.path.join(tmp, "t1_n4.nii")  # uncompressed: a scratch file
    ants.image_write(bias_correct(t1_img, params), n4_file)
    return ants.image_read(n4_file)


#: an extraction whose volume lies outside this range (ml) is not a brain: the template's mask is used instead
PLAUSIBLE_BRAIN_ML = (250.0, 2600.0)
#: nor is one whose T1, after its affine to the template, correlates less than this with the template T1 in
#: the template's brain (a head's brain reaches about 0.6-0.8 after the affine; noise or a neck about 0)
MIN_AFFINE_FIT = 0.4
TEMPLATE_EXTRACTION = "template brain mask through an affine"


def _extracted_brain(t1_box: np.ndarray, box_affine: np.ndarray, work_shape, work_affine: np.ndarray):
    """The trained brain extraction of the cut T1 at its own resolution, as a mask on the working grid.

    Returns the mask (None where the network's mask is not a plausible brain)
    and the provenance record of the extraction.
    """
    found = extract_brain(t1_box, box_affine)
    volume = found.volume_ml(box_affine)
    record = {"method": found.method, "volume_ml": round(volume, 1)}
    if not PLAUSIBLE_BRAIN_ML[0] <= volume <= PLAUSIBLE_BRAIN_ML[1]:
        record["fallback"] = (f"the network's mask ({volume:.0f} ml) is outside {PLAUSIBLE_BRAIN_ML[0]:.0f}-"
                              f"{PLAUSIBLE_BRAIN_ML[1]:.0f} ml: the template's brain mask was used")
        return None, record
    mask = found.mask
    if mask.shape != tuple(work_shape) or not np.allclose(box_affine, work_affine, atol=1e-4):
        ijk = np.indices(tuple(work_shape), dtype=np.float64).reshape(3, -1)
        pts = (work_affine[:3, :3] @ ijk + work_affine[:3, 3:4]).reshape((3, *tuple(work_shape)))
        mask = sample_at(found.probability, box_affine, pts, order=1, cval=0.0) > 0.5
        mask = ndimage.binary_fill_holes(largest_component(mask))
    return mask, record


def _searched_start(brain, mni_t1, params: AnatParams, path: str) -> str:
    """The best of many starts of the brain-to-template affine, by mutual information (antsAffineInitializer).

    Both brains are resampled to ``params.search_voxel_mm``: the search only has
    to land in the right basin, which the full affine then refines.  Rotations
    up to ``search_degrees`` about each axis in ``search_step_degrees`` steps,
    each followed by a short local affine optimisation; the centres of mass are
    aligned first.
    """
    import ants

    spacing = (params.search_voxel_mm,) * 3
    fixed = ants.resample_image(mni_t1, spacing, use_voxels=False, interp_type=0)
    moving = ants.resample_image(brain, spacing, use_voxels=False, interp_type=0)
    return ants.affine_initializer(fixed, moving, search_factor=params.search_step_degrees,
                                   radian_fraction=params.search_degrees / 180.0, use_principal_axis=False,
                                   local_search_iterations=10, txfn=path)


def _affine_fit(brain, mni_t1, affine_files: list, template_brain: np.ndarray) -> float:
    """Correlation of the brain, moved by its affine, with the template T1 inside the template's brain."""
    import ants

    moved = ants.apply_transforms(mni_t1, brain, affine_files, interpolator="linear").numpy()
    return _t1_similarity(moved, mni_t1.numpy(), template_brain)


def _brain_affine(brain, mni_t1, mni_mask, start: str, params: AnatParams, tmp: str) -> list:
    """The affine of the extracted brain to the template's brain from ``start`` (its transform files)."""
    import ants

    aff = ants.registration(fixed=mni_t1, moving=brain, type_of_transform="Affine", mask=mni_mask,
                            initial_transform=[start], outprefix=os.path.join(tmp, "aff_"), random_seed=params.seed)
    return aff["fwdtransforms"]


def _brain_only(n4, mask: np.ndarray):
    """The bias-corrected T1 with everything outside ``mask`` (on its grid) set to 0."""
    return n4 * n4.new_image_like(np.asarray(mask, np.float32))


def _template_stripped(n4, mni_mask, affine_files: list):
    """The T1 stripped by the template's brain mask carried back through the affine (the fallback extraction).

    The affine was computed from a rough intensity mask (threshold, erosion to
    cut the scalp off, the largest part near the brain centre, as for the GRE).
    """
    import ants

    head_mask = ants.apply_transforms(n4, mni_mask, affine_files, interpolator="nearestNeighbor",
                                      whichtoinvert=[True])
    return n4 * ants.copy_image_info(n4, head_mask)


def _priors_on_subject(n4, template, invtransforms: list):
    """The template's CSF, GM and WM priors on the subject's T1 grid, their sum, and the brain mask it gives."""
    import ants

    priors = []
    for prior in (template.csf, template.gm, template.wm):
        p = ants.apply_transforms(n4, to_ants(prior, template.grid.affine), invtransforms,
                                  interpolator="linear", whichtoinvert=[True, False])
        priors.append(ants.copy_image_info(n4, p))
    brain_prob = priors[0] + priors[1] + priors[2]
    mask_img = ants.copy_image_info(n4, ants.threshold_image(brain_prob, 0.3, 1e9).iMath("FillHoles"))
    return priors, brain_prob, mask_img


def _coregister_gre(n4, gre_mag: np.ndarray, gre_affine: np.ndarray, params: AnatParams, tmp: str) -> np.ndarray:
    """Rigid GRE -> T1 by mutual information: the 4x4 RAS matrix mapping T1 points to GRE points."""
    import ants

    gre_img = to_ants(np.asarray(gre_mag, dtype=np.float32), gre_affine)
    fixed = n4
    t1, t1_affine = from_ants(n4)
    if params.coreg_voxel_mm is not None and float(voxel_sizes(t1_affine).min()) < params.coreg_voxel_mm:
        fixed = to_ants(*_resample_isotropic(t1, t1_affine, params.coreg_voxel_mm))
    rig = ants.registration(fixed=fixed, moving=gre_img, type_of_transform="Rigid", aff_metric="mattes",
                            outprefix=os.path.join(tmp, "coreg_"), random_seed=params.seed)
    return itk_matrix_to_ras(rig["fwdtransforms"][0])


def _prepare_t1(t1: np.ndarray, affine: np.ndarray, params: AnatParams):
    """The part of the T1 that holds the head down to the skull base, at a working voxel size.

    Returns the working image, its affine, the :class:`~.fov.HeadBox` and a record
    of what was done (for the subject's provenance).
    """
    box = find_head(t1, affine, keep_below_top_mm=params.fov_below_top_mm,
                    brain_centre_below_top_mm=params.brain_centre_below_top_mm)
    work = t1[box.slices]
    work_affine = box.affine
    target = params.working_voxel_mm or working_voxel_size(affine, params.finest_voxel_mm)
    record = {"cropped_below_brain_mm": round(box.cropped_mm, 1), "crop_voxels": [[s.start, s.stop] for s in box.slices],
              "head_top_mm": round(box.top_mm, 1), "brain_centre_mm": [round(float(v), 1) for v in box.centre_mm],
              "working_voxel_mm": None}
    if target is not None:
        work, work_affine = _resample_isotropic(work, work_affine, target)
        record["working_voxel_mm"] = target
    return np.ascontiguousarray(work, dtype=np.float32), work_affine, box, record


def _resample_isotropic(data: np.ndarray, affine: np.ndarray, voxel_mm: float):
    """``data`` on a grid of ``voxel_mm`` voxels with the same axes and extent (anti-aliased linear)."""
    vs = voxel_sizes(affine)
    shape = tuple(int(np.ceil(n * v / voxel_mm)) for n, v in zip(data.shape, vs))
    scale = voxel_mm / vs
    sigma = np.sqrt(np.clip(scale**2 - 1, 0, None)) / 2.3548
    smooth = ndimage.gaussian_filter(np.asarray(data, np.float32), sigma)
    out = ndimage.affine_transform(smooth, np.diag(scale), output_shape=shape, order=1, mode="nearest")
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * scale
    return out, new_affine


def _back_to_t1_grid(maps: dict, work_affine: np.ndarray, box: HeadBox, shape, t1_affine: np.ndarray) -> dict:
    """Maps of the working image on the full T1 grid (zero outside the field of view kept)."""
    sub_shape = tuple(s.stop - s.start for s in box.slices)
    same_grid = np.allclose(work_affine, box.affine, atol=1e-4) and all(
        m.shape == sub_shape for m in maps.values())
    out = {}
    for name, m in maps.items():
        if not same_grid:
            ijk = np.indices(sub_shape, dtype=np.float64).reshape(3, -1)
            pts = (box.affine[:3, :3] @ ijk + box.affine[:3, 3:4]).reshape((3, *sub_shape))
            m = sample_at(m, work_affine, pts, order=1, cval=0.0)
        full = np.zeros(shape, np.float32)
        full[box.slices] = m
        out[name] = full
    return out


def _centre_transform(centre_mm: np.ndarray, template, path: str) -> str:
    """An ITK translation file that maps the template's brain centre onto ``centre_mm``."""
    import ants

    grid = template.grid
    ijk = np.argwhere(template.brain_mask).mean(axis=0)
    mni_centre = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
    shift_lps = LPS @ (np.asarray(centre_mm, float) - mni_centre)  # fixed (MNI) point -> moving (subject) point
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=tuple(shift_lps))
    ants.write_transform(tx, path)
    return path


def _rough_brain_mask(n4: np.ndarray, n4_img, centre_mm: np.ndarray, params: AnatParams) -> np.ndarray:
    """Intensity brain mask, kept within ``rough_brain_radius_mm`` of the brain centre, dilated by a margin."""
    _, aff = from_ants(n4_img)
    vox = voxel_sizes(aff)
    ijk = np.indices(n4.shape, dtype=np.float32).reshape(3, -1)
    xyz = aff[:3, :3].astype(np.float32) @ ijk + aff[:3, 3:4].astype(np.float32)
    near = (np.linalg.norm(xyz - np.asarray(centre_mm, np.float32)[:, None], axis=0)
            <= params.rough_brain_radius_mm).reshape(n4.shape)
    rough = brain_mask(np.where(near, n4, 0.0), tuple(vox), detach_mm=params.strip_detach_mm)
    return dilate_by(rough, params.strip_margin_mm, vox)


def _world_top(mask: np.ndarray, affine: np.ndarray) -> float:
    """World S coordinate (mm) of the top of a mask (the 99.9th percentile of its voxels)."""
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        return float("nan")
    return float(np.percentile(ijk @ affine[2, :3] + affine[2, 3], 99.9))


def _t1_similarity(t1_mni: np.ndarray | None, target: np.ndarray, brain: np.ndarray) -> float:
    """Correlation of the warped T1 with the template T1 inside the template brain."""
    if t1_mni is None:
        return float("nan")
    a, b = np.asarray(t1_mni, float)[brain], np.asarray(target, float)[brain]
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def renormalise_on_tissue(gm: np.ndarray, wm: np.ndarray, t1_affine: np.ndarray, affine_itk: dict,
                          template, targets: dict, params: AnatParams = AnatParams(),
                          preparation: dict | None = None) -> dict:
    """The tissue normalisation of a segmented subject again, to new GM and WM targets.

    A study template's second pass (DARTEL registers every subject to the
    cohort's mean again) needs nothing of :func:`process_anatomy` but its
    last registration: the native posteriors, the affine and the GRE → T1
    coregistration of the first pass stay valid, so only the tissue SyN runs,
    from the same affine, to ``targets["gm"]`` and ``targets["wm"]``.

    Parameters
    ----------
    gm, wm : native GM and WM posteriors of the first pass (T1w grid).
    t1_affine : their RAS affine.
    affine_itk : :attr:`AnatResult.affine_itk` of the first pass.
    template : cohort.templates.Template (grid, brain mask, QC reference).
    targets : dict with ``"gm"`` and ``"wm"`` on the template grid.
    params : AnatParams
    preparation : dict, optional
        :attr:`AnatResult.preparation` of the first pass: the posteriors are cut
        and resampled as the first pass's T1 was, so that the registration sees
        the same images.

    Returns
    -------
    dict
        The MNI-space fields of :class:`AnatResult` (``gm_mni``,
        ``wm_mni``, ``gm_mod``, ``gm_mod_smooth``, ``jacobian``, ``qc_gm_corr``,
        ``qc_dice``, ``t1_mni`` = None) and ``t1_points``, ``seconds``.
    """
    gm = np.asarray(gm, np.float32)
    wm = np.asarray(wm, np.float32)
    if gm.ndim != 3 or gm.shape != wm.shape:
        raise ValueError(f"GM and WM posteriors must be 3-D arrays of one shape, got {gm.shape} and {wm.shape}")
    if not {"parameters", "fixed_parameters"} <= set(affine_itk or {}):
        raise ValueError("affine_itk must hold the first pass's 'parameters' and 'fixed_parameters'")
    grid = template.grid
    missing = {"gm", "wm"} - set(targets or {})
    if missing:
        raise ValueError(f"renormalisation needs targets {sorted(missing)}")
    _check_target_shapes(targets, grid)
    t0 = time.perf_counter()
    with deterministic(params.seed), scratch_dir() as tmp:
        import ants

        affine_file = os.path.join(tmp, "affine.mat")
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                        parameters=np.asarray(affine_itk["parameters"], float),
                                        fixed_parameters=np.asarray(affine_itk["fixed_parameters"], float))
        ants.write_transform(tx, affine_file)
        (gm_w, wm_w), work_affine = _as_prepared((gm, wm), np.asarray(t1_affine, float), preparation)
        gm_img, wm_img = to_ants(gm_w, work_affine), to_ants(wm_w, work_affine)
        mni_mask = _metric_mask(template)
        reg = _tissue_syn(gm_img, wm_img, targets, grid, mni_mask, [affine_file], params, tmp)
        pts_t1 = points_map(grid.shape, grid.affine, reg["fwdtransforms"], gm_img)
    _, t1_aff_ants = from_ants(gm_img)
    mni = _to_mni(pts_t1, t1_aff_ants, gm_w, wm_w, template, params)
    return {**mni, "t1_points": pts_t1, "seconds": {"normalisation on tissue (SyN)": time.perf_counter() - t0}}


def _as_prepared(maps, affine: np.ndarray, preparation: dict | None):
    """Maps on the T1 grid cut and resampled as :func:`_prepare_t1` prepared the T1 (see its record)."""
    if not preparation or not preparation.get("crop_voxels"):
        return maps, affine
    lo = np.array([a for a, _ in preparation["crop_voxels"]])
    slices = tuple(slice(int(a), int(b)) for a, b in preparation["crop_voxels"])
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    out = [np.asarray(m)[slices] for m in maps]
    if preparation.get("working_voxel_mm"):
        resampled = [_resample_isotropic(m, crop_affine, float(preparation["working_voxel_mm"])) for m in out]
        return [m for m, _ in resampled], resampled[0][1]
    return out, crop_affine


def _check_target_shapes(targets: dict, grid) -> None:
    for name, image in targets.items():
        if np.shape(image) != grid.shape:
            raise ValueError(f"normalisation target {name!r} has shape {np.shape(image)}, "
                             f"the template grid {grid.shape}")


def _metric_mask(template):
    """Where the registration metric counts: the MNI brain, dilated by two voxels (the templates are brain only)."""
    return to_ants(ndimage.binary_dilation(template.brain_mask, iterations=2).astype(np.float32), template.grid.affine)


def _read_affine(path: str) -> dict:
    import ants

    tx = ants.read_transform(path)
    return {"parameters": [float(v) for v in tx.parameters],
            "fixed_parameters": [float(v) for v in tx.fixed_parameters]}


def _tissue_syn(gm_img, wm_img, targets, grid, mni_mask, initial: list, params: AnatParams, tmp: str):
    """SyN of the subject's GM and WM posteriors to the GM and WM targets, from ``initial``."""
    import ants

    return ants.registration(fixed=to_ants(np.asarray(targets["gm"], np.float32), grid.affine),
                             moving=gm_img, type_of_transform="SyNOnly", mask=mni_mask,
                             initial_transform=initial, syn_metric=params.tissue_metric,
                             syn_sampling=params.tissue_sampling,
                             multivariate_extras=[(params.tissue_metric,
                                                   to_ants(np.asarray(targets["wm"], np.float32), grid.affine),
                                                   wm_img, 1, params.tissue_sampling)],
                             reg_iterations=tuple(params.tissue_iterations),
                             outprefix=os.path.join(tmp, "tissue_"), random_seed=params.seed)


def chi_to_mni(chi: np.ndarray, chi_mask: np.ndarray, gre_affine: np.ndarray, gre_to_t1: np.ndarray,
               t1_points: np.ndarray) -> np.ndarray:
    """χ on the MNI grid through coregistration ∘ normalisation, in one interpolation.

    Parameters
    ----------
    chi, chi_mask : χ (ppm) on the GRE grid and where it is defined.
    gre_affine : the GRE grid's RAS affine.
    gre_to_t1 : :attr:`AnatResult.gre_to_t1` (T1 world point -> GRE world point).
    t1_points : :attr:`AnatResult.t1_points`, (3, x, y, z): the T1 world point of every MNI voxel.

    Returns
    -------
    ndarray (x, y, z), float32
        χ normalised by the interpolated mask coverage (so the mask's edge
        does not pull values towards 0), NaN where less than half of the
        interpolation weight falls inside ``chi_mask``.
    """
    g = np.asarray(gre_to_t1, float)
    pts = np.asarray(t1_points, float)
    if g.shape != (4, 4) or pts.ndim != 4 or pts.shape[0] != 3:
        raise ValueError(f"gre_to_t1 must be 4x4 and t1_points (3, x, y, z); got {g.shape} and {pts.shape}")
    pts_gre = np.einsum("ab,b...->a...", g[:3, :3], pts) + g[:3, 3].reshape(3, 1, 1, 1)
    mask = np.asarray(chi_mask, dtype=bool)
    values = sample_at(np.where(mask, chi, 0.0), gre_affine, pts_gre, order=1, cval=0.0)
    cover = sample_at(mask.astype(np.float64), gre_affine, pts_gre, order=1, cval=0.0)
    return np.where(cover > 0.5, values / np.maximum(cover, 1e-6), np.nan).astype(np.float32)


def _to_mni(pts_t1, t1_aff, gm, wm, template, params: AnatParams, t1=None) -> dict:
    """GM, WM (and the T1, if given) sampled once through the point map; modulation, smoothing, QC."""
    grid = template.grid
    vs = (grid.voxel_size,) * 3
    jac = jacobian_determinant(pts_t1, vs)
    gm_mni = np.nan_to_num(sample_at(gm, t1_aff, pts_t1, order=1, cval=0.0))
    wm_mni = np.nan_to_num(sample_at(wm, t1_aff, pts_t1, order=1, cval=0.0))
    t1_mni = None if t1 is None else np.nan_to_num(sample_at(t1, t1_aff, pts_t1, order=1, cval=0.0)).astype(np.float32)
    jac_safe = np.nan_to_num(jac, nan=0.0)
    gm_mod = gm_mni * jac_safe
    gm_mod_s = smooth_fwhm(gm_mod, params.vbm_fwhm_mm, vs)
    tgm = template.gm
    sel = template.brain_mask
    corr = float(np.corrcoef(gm_mni[sel], tgm[sel])[0, 1])
    a, b = gm_mni > 0.5, tgm > 0.5
    dice = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return {"gm_mni": gm_mni.astype(np.float32),
            "wm_mni": wm_mni.astype(np.float32), "gm_mod": gm_mod.astype(np.float32),
            "gm_mod_smooth": gm_mod_s.astype(np.float32), "jacobian": jac.astype(np.float32),
            "qc_gm_corr": corr, "qc_dice": dice, "t1_mni": t1_mni}
