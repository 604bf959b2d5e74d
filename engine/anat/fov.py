"""Field of view of a T1w image: where the head is, and cutting away what lies below the brain.

Real T1w scans reach the neck and shoulders (ADNI's sagittal MPRAGE covers
~25 cm along the body axis) and some are reconstructed at 0.5 mm in-plane.
A registration to a brain template started from the centre of such an image
starts in the neck.  FSL's ``robustfov`` and fMRIPrep solve this by cutting
the image a fixed distance below the top of the head; this module does the
same in world coordinates, so that it holds for any orientation, and resamples
very fine images to a working voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ..qsm.mask import largest_component, otsu_threshold

__all__ = ["HeadBox", "find_head", "crop_below_brain", "paste_into", "working_voxel_size"]


@dataclass(frozen=True)
class HeadBox:
    """The voxel box of a T1w image that holds the brain, and where the head's top is.

    ``slices`` index the original array; ``affine`` places the cropped array;
    ``top_mm`` is the world S coordinate of the top of the head, ``centre_mm``
    an estimate of the brain centre (world RAS, mm).
    """

    slices: tuple[slice, slice, slice]
    affine: np.ndarray
    top_mm: float
    centre_mm: np.ndarray
    cropped_mm: float  # how much of the field of view below the brain was cut (along S)


def _head_mask(t1: np.ndarray) -> np.ndarray:
    """Voxels of the head (not air): Otsu on the square root of the intensities, the largest part, filled."""
    x = np.sqrt(np.clip(np.asarray(t1, np.float64), 0, None))
    positive = x[x > 0]
    if positive.size == 0:
        raise ValueError("the T1w image has no positive voxels")
    fg = x > 0.5 * otsu_threshold(positive)
    fg = ndimage.binary_opening(fg, iterations=1)
    if not fg.any():
        raise ValueError("no head found in the T1w image")
    return ndimage.binary_fill_holes(largest_component(fg))


def find_head(t1: np.ndarray, affine: np.ndarray, keep_below_top_mm: float = 180.0,
              brain_centre_below_top_mm: float = 75.0) -> HeadBox:
    """Locate the top of the head and the box that keeps ``keep_below_top_mm`` below it.

    The top is the most superior world point of the head mask (the 99.9th
    percentile, robust to a stray bright voxel); everything more than
    ``keep_below_top_mm`` below it (neck, shoulders) falls outside the box.  The
    brain centre is taken ``brain_centre_below_top_mm`` below the top, at the
    centroid (R, A) of the head in the slab of the top 100 mm.  180 mm and
    75 mm hold for adult heads (FSL's robustfov keeps 170 mm).
    """
    affine = np.asarray(affine, float)
    head = _head_mask(t1)
    ijk = np.argwhere(head)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    top = float(np.percentile(xyz[:, 2], 99.9))
    keep = xyz[:, 2] >= top - keep_below_top_mm
    lo = ijk[keep].min(axis=0)
    hi = ijk[keep].max(axis=0) + 1
    margin = np.ceil(5.0 / voxel_sizes(affine)).astype(int)  # a little air around the head
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, np.asarray(t1.shape))
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    upper = xyz[xyz[:, 2] >= top - 100.0]
    centre = np.array([upper[:, 0].mean(), upper[:, 1].mean(), top - brain_centre_below_top_mm])
    below = float(max(top - keep_below_top_mm - xyz[:, 2].min(), 0.0))
    return HeadBox(slices, cropped, top, centre, below)


def crop_below_brain(t1: np.ndarray, affine: np.ndarray, **kwargs) -> tuple[np.ndarray, HeadBox]:
    """The part of ``t1`` that holds the head down to the skull base (see :func:`find_head`)."""
    box = find_head(t1, affine, **kwargs)
    return np.asarray(t1)[box.slices], box


def paste_into(shape, box: HeadBox, data: np.ndarray, fill=0) -> np.ndarray:
    """A map computed on the cropped image, placed back into the full image's grid."""
    out = np.full(shape, fill, dtype=data.dtype)
    out[box.slices] = data
    return out


def working_voxel_size(affine: np.ndarray, finest_mm: float = 0.9) -> float | None:
    """The voxel size to resample to when an image is finer than ``finest_mm`` (None: keep it).

    Segmentation and normalisation gain nothing from voxels finer than about 1 mm
    and cost with the number of voxels: a 1 x 0.5 x 0.5 mm reconstruction is
    4 times the work of 1 mm.
    """
    vs = voxel_sizes(np.asarray(affine, float))
    return 1.0 if float(vs.min()) < finest_mm else None
