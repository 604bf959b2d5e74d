"""Sampling maps through point maps and grids: T1 maps on the GRE grid, χ to MNI, Jacobians, smoothing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["sample_at", "t1_map_on_gre", "t1_brain_on_gre", "jacobian_determinant", "smooth_fwhm", "chi_to_mni", "native_points"]

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


def native_points(t1_points: np.ndarray, gre_to_t1: np.ndarray) -> np.ndarray:
    """GRE world points (3, x, y, z) of every MNI voxel: the coregistration applied to the point map."""
    g = np.asarray(gre_to_t1, float)
    pts = np.asarray(t1_points, float)
    if g.shape != (4, 4) or pts.ndim != 4 or pts.shape[0] != 3:
        raise ValueError(f"gre_to_t1 must be 4x4 and t1_points (3, x, y, z); got {g.shape} and {pts.shape}")
    return np.einsum("ab,b...->a...", g[:3, :3], pts) + g[:3, 3].reshape(3, 1, 1, 1)


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
    pts_gre = native_points(t1_points, gre_to_t1)
    mask = np.asarray(chi_mask, dtype=bool)
    values = sample_at(np.where(mask, chi, 0.0), gre_affine, pts_gre, order=1, cval=0.0)
    cover = sample_at(mask.astype(np.float64), gre_affine, pts_gre, order=1, cval=0.0)
    return np.where(cover > 0.5, values / np.maximum(cover, 1e-6), np.nan).astype(np.float32)
