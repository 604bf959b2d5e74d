"""The susceptibility reference: the region whose mean χ is called zero.

χ from a local field is defined up to a constant; a study must say which
region it takes as zero (the 2024 QSM consensus asks that it be stated).
Three choices: the whole QSM mask's mean (``brain``, the default), the CSF of
the lateral ventricles, or the white matter, each taken from the subject's own
segmentation, carried to the GRE grid by the coregistration:

* ``csf``: voxels the subject's segmentation calls CSF with probability above
  ``TISSUE_PROBABILITY``, inside the template's lateral ventricles brought to the
  subject through its normalisation (sulcal CSF is not a stable reference: it
  is thin, next to veins and to the brain's edge).
* ``wm``: voxels the subject's segmentation calls WM with probability above
  ``TISSUE_PROBABILITY``, eroded by one voxel so that none shares its volume with GM.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anat import t1_map_on_gre
from .anat.labels import labels_on_grid
from .anat.resampling import native_points

__all__ = ["REFERENCES", "lateral_ventricles", "reference_region", "referenced"]

REFERENCES = ("brain", "csf", "wm")
TISSUE_PROBABILITY = 0.9
#: fewer voxels than this make a reference mean too uncertain to call zero
MIN_REFERENCE_VOXELS = 20
#: MNI box (mm) that holds the lateral ventricles and no sulcal CSF: bodies, frontal and occipital horns
VENTRICLE_BOX_MM = ((-32.0, 32.0), (-50.0, 32.0), (-4.0, 36.0))


def lateral_ventricles(template) -> np.ndarray:
    """The lateral ventricles on the template's grid: its CSF (probability > 0.5) in the ventricles' box."""
    inside = np.ones(template.csf.shape, bool)
    for axis, (lo, hi) in enumerate(VENTRICLE_BOX_MM):
        mm = template.grid.coords()["xyz"[axis]]
        shape = [1, 1, 1]
        shape[axis] = -1
        inside &= ((mm >= lo) & (mm <= hi)).reshape(shape)
    return inside & (template.csf > 0.5) & template.brain_mask


def reference_region(kind: str, qsm_mask: np.ndarray, gre_affine: np.ndarray, anat, t1_affine: np.ndarray,
                     template=None) -> np.ndarray:
    """The reference voxels on the GRE grid, within the QSM mask.

    Parameters
    ----------
    kind : "brain", "csf" or "wm"
    qsm_mask : where χ is defined (GRE grid)
    gre_affine, t1_affine : the two grids
    anat : the subject's anatomy (``csf``, ``wm`` on the T1 grid; ``gre_to_t1``; ``t1_points``)
    template : the MNI template of ``t1_points`` (for ``csf``)

    Raises
    ------
    ValueError
        An unknown kind, or a region with fewer than ``MIN_REFERENCE_VOXELS`` voxels.
    """
    if kind not in REFERENCES:
        raise ValueError(f"unknown susceptibility reference {kind!r}: one of {', '.join(REFERENCES)}")
    qsm_mask = np.asarray(qsm_mask, dtype=bool)
    if kind == "brain":
        return qsm_mask
    gre_to_t1 = np.asarray(anat["gre_to_t1"], float)
    tissue = t1_map_on_gre(anat[kind], t1_affine, gre_to_t1, qsm_mask.shape, gre_affine) > TISSUE_PROBABILITY
    if kind == "wm":
        region = ndimage.binary_erosion(tissue) & qsm_mask
    else:
        if template is None:
            raise ValueError("the CSF reference needs the MNI template its lateral ventricles are drawn on")
        ventricles = labels_on_grid(lateral_ventricles(template).astype(np.int32),
                                    native_points(anat["t1_points"], gre_to_t1), template.grid.voxel_size,
                                    qsm_mask.shape, gre_affine) > 0
        region = tissue & ventricles & qsm_mask
    n = int(region.sum())
    if n < MIN_REFERENCE_VOXELS:
        raise ValueError(f"the {kind} reference holds {n} voxels of the QSM mask (at least {MIN_REFERENCE_VOXELS} "
                         f"are needed): choose another qsm.reference")
    return region


def referenced(chi: np.ndarray, mask: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, float]:
    """χ with the mean over ``region`` subtracted inside ``mask``, and that mean (ppm)."""
    offset = float(np.mean(chi[region], dtype=np.float64))
    return np.where(mask, chi - offset, 0.0).astype(chi.dtype), offset
