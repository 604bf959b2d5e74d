"""``spm_est_smoothness``: the smoothness of standardised residuals, as FWHM in voxels and RESELs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .rft import EPS, FOUR_LN2, _in_mask, resel_counts

__all__ = ["Smoothness", "est_smoothness"]


class Smoothness(NamedTuple):
    """Result of :func:`est_smoothness`."""

    fwhm_vox: np.ndarray  # (3,)
    rpv: np.ndarray  # resels per voxel image (x, y, z), NaN outside / invalid
    resels: np.ndarray  # (4,) resel counts of the mask


def _mask_box(inside: np.ndarray) -> tuple[slice, ...] | None:
    """The mask's bounding box and one voxel beyond it on the upper side (within the image); None if empty."""
    if not inside.any():
        return None
    box = []
    for axis in range(inside.ndim):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        box.append(slice(int(hit[0]), min(int(hit[-1]) + 2, inside.shape[axis])))
    return tuple(box)


def _forward_cube_has_nan(nan: np.ndarray) -> np.ndarray:
    """True where any voxel of the forward 2x2x2 cube (clamped at the edge) is NaN."""
    out = nan.copy()
    for axis in range(3):
        shifted = out.copy()
        n = out.shape[axis]
        if n > 1:
            sl_hi = [slice(None)] * 3
            sl_lo = [slice(None)] * 3
            sl_hi[axis] = slice(1, None)
            sl_lo[axis] = slice(0, n - 1)
            shifted[tuple(sl_lo)] |= out[tuple(sl_hi)]
        out = shifted
    return out


def est_smoothness(resid, mask, ndf=None, voxel_size=None) -> Smoothness:
    """``spm_est_smoothness``: FWHM (voxels) and resels from standardised residuals.

    Parameters
    ----------
    resid : array-like (m, x, y, z)
        Standardised residual images (residual / sqrt(RSS / edf)); NaN
        outside the analysis mask, as SPM writes them.  Any object whose
        ``resid[i]`` gives one image works (e.g. a dask array), so memory is
        bounded by a few volumes.
    mask : array (x, y, z)
        Analysis mask (non-zero inside).
    ndf : (n, edf), optional
        Number of scans and error degrees of freedom; default ``(m, m)``.
    voxel_size : 3 floats, optional
        Unused in the computation (FWHM is in voxels); accepted so that
        callers can pass it for FWHM in mm: ``fwhm_vox * voxel_size``.

    Returns
    -------
    Smoothness
        ``fwhm_vox`` (3,), ``rpv`` image and ``resels`` (4,) of the mask.
    """
    m_img = int(resid.shape[0])
    inside = _in_mask(mask)
    shape = inside.shape
    if tuple(resid.shape[1:]) != shape[: len(resid.shape) - 1] and tuple(resid.shape[1:]) != shape:
        raise ValueError(f"resid images {tuple(resid.shape[1:])} and mask {shape} differ in shape")
    if ndf is None or np.any(np.isnan(np.asarray(ndf, dtype=float))):
        n, edf = float(m_img), float(m_img)
    else:
        n, edf = (float(v) for v in ndf)
        if edf <= 0:
            raise ValueError(f"error degrees of freedom must be positive, got {edf}")
    axes = [a for a in range(3) if shape[a] > 1]
    D = len(axes)
    if D == 0:
        return Smoothness(np.full(3, np.inf), np.full(shape, np.nan), np.zeros(4))
    full_shape = shape
    box = _mask_box(inside)
    if box is not None:
        # Forward differences reach one voxel up: the mask's bounding box and one
        # voxel beyond it hold everything the estimate reads, so the rest is skipped.
        resid = resid[(slice(None), *box[: len(resid.shape) - 1])]
        inside = inside[box]
        shape = inside.shape
    if hasattr(resid, "dask"):
        # a lazy stack is computed once (at most SPM's 64 images), not once per image
        resid = resid.persist()
    _, ssq, L, ever_bad = _residual_moments(resid, inside, axes, m_img)
    ssq[ever_bad] = np.nan
    scale = n / edf / m_img
    for key in L:
        L[key] *= scale
        L[key][ever_bad] = np.nan
    rpv, rx = _resels_per_voxel(L, axes)
    rpv_full = np.full(full_shape, np.nan)
    rpv_full[box if box is not None else ()][inside] = rpv
    valid = ~np.isnan(ssq) & (ssq >= np.sqrt(EPS))
    rbar = float(np.mean(rpv[valid]))
    xbar = rx[:, valid].mean(axis=1)
    resel = rbar ** (1 / D) * xbar / np.prod(xbar) ** (1 / D)
    fwhm = np.ones(3)
    for ia, a in enumerate(axes):
        f = 1.0 / resel[ia]
        fwhm[a] = 1.0 if (not np.isfinite(f) or f == 0) else f
    return Smoothness(fwhm, rpv_full, resel_counts(_in_mask(mask), fwhm))


def _residual_moments(resid, inside: np.ndarray, axes: list, m_img: int):
    """Sums over the images of each mask voxel's squared residual and of the products of its forward differences.

    Returns the mask's voxel indices, the sum of squares, the sums ``L[(a, b)]`` of
    ``d_a e * d_b e`` and where any image had a NaN in the voxel's forward cube.
    """
    shape = inside.shape
    # Every sum runs over the mask's voxels only, each with its forward neighbour
    # along each axis (itself at the image's edge, where the difference is 0), in
    # the image's voxel order, so the means below add the same numbers in the same order.
    voxel = np.flatnonzero(inside.ravel())
    coords = np.unravel_index(voxel, shape)
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]
    ahead = {a: np.where(coords[a] + 1 < shape[a], voxel + strides[a], voxel) for a in axes}
    ssq = np.zeros(voxel.size)
    L = {(a, b): np.zeros(voxel.size) for i, a in enumerate(axes) for b in axes[i:]}
    ever_bad = np.zeros(voxel.size, bool)  # a NaN in a voxel's forward cube in any image
    nan = None
    for i in range(m_img):
        e = np.asarray(resid[i], dtype=float).reshape(-1)
        this_nan = np.isnan(e)
        if nan is None or not np.array_equal(this_nan, nan):  # usually every image has the mask's NaNs
            nan = this_nan
            ever_bad |= _forward_cube_has_nan(nan.reshape(shape)).reshape(-1)[voxel]
        e0 = e[voxel]
        g = {a: e[ahead[a]] - e0 for a in axes}
        ssq += e0**2
        for (a, b), acc in L.items():
            acc += g[a] * g[b]
    return voxel, ssq, L, ever_bad


def _resels_per_voxel(L: dict, axes: list):
    """RESELs per voxel (the root determinant of the gradients' covariance) and per axis, from ``L``."""
    D = len(axes)
    size = next(iter(L.values())).size
    # determinant of the symmetric DxD matrix per voxel
    M = np.zeros((size, D, D))
    for ia, a in enumerate(axes):
        for ib, b in enumerate(axes):
            M[:, ia, ib] = L[(min(a, b), max(a, b))]
    with np.errstate(invalid="ignore"):
        det = np.linalg.det(np.nan_to_num(M))
    det = np.where(np.isnan(M).any(axis=(-1, -2)), np.nan, det)
    det = np.where(det < 0, 0.0, det)
    rpv = np.sqrt(det / FOUR_LN2**D)
    rx = np.stack([np.sqrt(L[(a, a)] / FOUR_LN2) for a in axes])
    return rpv, rx
