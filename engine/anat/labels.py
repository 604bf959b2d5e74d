"""MNI-space labels carried to a subject's native grid through its own normalisation.

The anatomy stage stores its normalisation as a point map: the T1 world point
of every MNI voxel (``t1_points``), and the coregistration ``gre_to_t1``
takes T1 points to GRE points.  Following both gives the GRE position of
every labelled MNI voxel.  :func:`labels_on_grid` inverts that map by nearest
neighbour: each native voxel takes the label of the MNI voxel whose image in
native space lies nearest to it, if one lies within an MNI voxel's reach.  No
inverse warp is computed or stored, and the labels follow exactly the
deformation that carries χ and R2* to MNI.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["labels_on_grid", "erode_labels"]


def labels_on_grid(labels_mni: np.ndarray, points: np.ndarray, mni_voxel_mm: float, shape,
                   affine: np.ndarray, margin_vox: int = 2) -> np.ndarray:
    """Integer MNI labels (0 = none) on a native grid, by nearest mapped MNI voxel.

    Parameters
    ----------
    labels_mni : int array (x, y, z) on the MNI grid; 0 is background.
    points : (3, x, y, z)
        The native world point (mm) of every MNI voxel (:func:`.resampling.native_points`).
    mni_voxel_mm : float
        The MNI grid's voxel size: a native voxel farther than an MNI voxel's
        half-diagonal from every mapped MNI voxel gets no label.
    shape, affine : the native grid.
    margin_vox : int
        Background MNI voxels within this many voxels of a label also take part,
        so that a native voxel just outside a structure is not given its label.

    Returns
    -------
    ndarray of int32, ``shape``
    """
    labels_mni = np.asarray(labels_mni)
    if labels_mni.shape != points.shape[1:]:
        raise ValueError(f"labels {labels_mni.shape} and points {points.shape[1:]} must share the MNI grid")
    out = np.zeros(tuple(shape), np.int32)
    labelled = labels_mni > 0
    if not labelled.any():
        return out
    taking_part = ndimage.binary_dilation(labelled, iterations=margin_vox) & np.isfinite(points).all(axis=0)
    inv = np.linalg.inv(np.asarray(affine, float))
    src = points[:, taking_part]
    src_vox = (inv[:3, :3] @ src + inv[:3, 3:4]).T
    lo = np.maximum(np.floor(src_vox.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(src_vox.max(axis=0)).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return out
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ijk = np.indices(hi - lo).reshape(3, -1) + lo[:, None]
    world = np.asarray(affine, float)[:3, :3] @ ijk + np.asarray(affine, float)[:3, 3:4]
    distance, nearest = cKDTree(src.T).query(world.T)
    reach = np.sqrt(3) / 2 * mni_voxel_mm
    values = np.where(distance <= reach, labels_mni[taking_part][nearest], 0)
    out[box] = values.reshape(hi - lo)
    return out


def erode_labels(labels: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Each label eroded on its own (6-connected) by ``iterations`` voxels: its partial-volume edge removed."""
    labels = np.asarray(labels)
    if iterations < 0:
        raise ValueError(f"erosion must be 0 or more voxels, got {iterations}")
    if iterations == 0:
        return labels.copy()
    out = np.zeros_like(labels)
    for value in np.unique(labels[labels > 0]):
        out[ndimage.binary_erosion(labels == value, iterations=iterations)] = value
    return out
