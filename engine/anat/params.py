"""Typed parameters and results of the anatomy chain."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

from ..params import check_choices

__all__ = ["AnatParams", "AnatResult"]

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
