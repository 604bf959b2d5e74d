"""Real T1w heads for the anatomy tests, and the same head moved and resampled in its field of view."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

REAL_T1 = Path(__file__).parent / "data" / "real-t1"
#: the real T1w scans of other scanners (README and LICENSE beside each), the child last
ADULTS = ("siemens-prisma-mprage", "philips-achieva-tfe-defaced")
CHILD = "siemens-skyra-child-mprage"


def load_t1(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A real T1w image of tests/data/real-t1 and its affine, as stored (no reorientation)."""
    img = nib.load(REAL_T1 / name / "T1w.nii.gz")
    return img.get_fdata(dtype=np.float32), img.affine


def moved_in_field_of_view(t1: np.ndarray, affine: np.ndarray, shift_mm=(0.0, 0.0, 0.0),
                           angles_deg=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with the head shifted by whole voxels in the array (zeros fill in) and the grid
    turned in the world by ``angles_deg`` (an oblique acquisition): no interpolation, so the image is
    as sharp as the original, as a second scan of a head that sat elsewhere would be."""
    steps = np.round(np.asarray(shift_mm, float) / np.sqrt((affine[:3, :3] ** 2).sum(0))).astype(int)
    moved = np.zeros_like(t1)
    src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(steps, t1.shape))
    dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(steps, t1.shape))
    moved[dst] = t1[src]
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    return moved, turn @ affine


def moved_and_resampled(t1: np.ndarray, affine: np.ndarray, voxel_mm, shift_mm=(0.0, 0.0, 0.0),
                        angles_deg=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The same head rotated about the world origin and shifted in the field of view, on a grid of
    ``voxel_mm`` voxels (one number or one per axis) with the original grid's axes and extent (cubic)."""
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    motion = np.eye(4)
    motion[:3, :3] = rot
    motion[:3, 3] = shift_mm
    old_vox = np.sqrt((affine[:3, :3] ** 2).sum(0))
    new_vox = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
    shape = tuple(int(np.ceil(n * v / w)) for n, v, w in zip(t1.shape, old_vox, new_vox))
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / old_vox * new_vox
    # a coarser voxel integrates the signal over its extent: low-pass first, as a coarser acquisition would
    sigma = np.sqrt(np.clip((new_vox / old_vox) ** 2 - 1, 0, None)) / 2.3548
    source = ndimage.gaussian_filter(t1, sigma) if sigma.any() else t1
    # new voxel -> world (new grid) -> world of the head before it moved -> old voxel
    m = np.linalg.inv(affine) @ np.linalg.inv(motion) @ new_affine
    moved = ndimage.affine_transform(source, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=3,
                                     mode="constant")
    return np.clip(moved, 0, None).astype(np.float32), new_affine
