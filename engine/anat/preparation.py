"""The T1 as the chain works on it: cut below the brain, resampled, and maps back on its own grid."""

from __future__ import annotations

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from .fov import HeadBox, find_head, working_voxel_size
from .params import AnatParams
from .resampling import sample_at

__all__ = []

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
