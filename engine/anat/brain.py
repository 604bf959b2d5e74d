"""The subject's brain: the network's mask checked for plausibility, the rough and template-based masks."""

from __future__ import annotations

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ..qsm.mask import brain_mask, dilate_by, largest_component
from .antsbridge import (
    from_ants,
)
from .extraction import extract_brain
from .params import AnatParams
from .resampling import sample_at

__all__ = ["PLAUSIBLE_BRAIN_ML"]

#: an extraction whose volume lies outside this range (ml) is not a brain: the template's mask is used instead
PLAUSIBLE_BRAIN_ML = (250.0, 2600.0)


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
