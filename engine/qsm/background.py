"""Background field removal: V-SHARP (variable-radius SHARP)."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .mask import inside_ball_depth, mask_depth

__all__ = ["vsharp", "pdf", "smv_kernel"]


def _field_and_mask(field, mask) -> tuple[np.ndarray, np.ndarray]:
    field = np.asarray(field, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if field.shape != mask.shape or field.ndim != 3:
        raise ValueError(f"field {field.shape} and mask {mask.shape} must be the same 3-D shape")
    if not mask.any():
        raise ValueError("mask is empty")
    return field, mask


def smv_kernel(shape, radius_mm: float, voxel_size=(1.0, 1.0, 1.0), half: bool = False,
               dtype=np.float64) -> np.ndarray:
    """FFT of the spherical-mean-value kernel of ``radius_mm`` (centred at index 0).

    ``half=True`` gives the half spectrum of :func:`scipy.fft.rfftn` (the kernel
    is real and even, so its transform is real).  ``dtype`` is the precision of
    the result (float32 or float64).

    The ball is even along each axis on its own, so its discrete Fourier
    transform is a sum over the ball's voxels of products of one cosine per
    axis: three small matrix products on the ball's box (a few dozen voxels a
    side) instead of an FFT of a mostly empty grid, exact to rounding.
    """
    vs = np.asarray(voxel_size, dtype=float)
    r = radius_mm / vs
    # the ball on a box just large enough for it, each voxel at its nearest offset from voxel 0 of the
    # periodic grid (no more than half the grid)
    spans = [np.arange(-min(int(rr), (int(n) - 1) // 2), min(int(rr), int(n) // 2) + 1) for rr, n in zip(r, shape)]
    inside = sum((o / max(rr, 1e-6)) ** 2 for o, rr in zip(np.ix_(*spans), r)) <= 1.0
    spectrum = inside / np.count_nonzero(inside)
    last = len(shape) - 1
    for axis, (offsets, n) in enumerate(zip(spans, shape)):
        k = np.arange(n // 2 + 1 if half and axis == last else n)
        cosines = np.cos((2 * np.pi / n) * np.outer(offsets, k))  # (offset, frequency)
        spectrum = np.moveaxis(np.tensordot(spectrum, cosines, axes=([axis], [0])), -1, axis)
    return np.ascontiguousarray(spectrum, dtype=dtype)


def vsharp(field: np.ndarray, mask: np.ndarray, voxel_size=(1.0, 1.0, 1.0), radii_mm=None,
           threshold: float = 0.05, workers=None, kernels: dict | None = None,
           depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background removal (Li et al. 2011; Wu et al. 2012).

    The total field is high-pass filtered with ``delta - SMV_r`` for radii
    from large to small: each voxel takes the largest radius whose sphere
    stays inside the mask, so the mask needs to be eroded only by the
    smallest radius.  The filtered field is deconvolved with the largest
    radius' kernel, truncated where ``|1 - SMV| < threshold``.

    The transforms run in single precision: a total field of a few ppm loses
    nothing a local field of ~0.01 ppm needs (relative rounding 6e-8, times at
    most ``1 / threshold`` in the deconvolution).

    Parameters
    ----------
    field : array (x, y, z)
        Unwrapped total field (any unit; the result has the same unit).
    mask : array of bool
    voxel_size : 3 floats (mm)
    radii_mm : sequence of float
        Default: from 12 mm down to one voxel.
    threshold : float
        Truncation of the deconvolution (0.05 in the reference study).
    workers : int, optional
        Threads of the FFTs (``scipy.fft``; default one, like every other step of the chain: a
        cluster runs one subject per core, and more threads per subject only compete with the others).
    kernels : dict, optional
        A dictionary kept by the caller between calls on fields of the same shape and voxel size
        (as the chain's passes that drop outliers and remove the background again): the kernels'
        spectra are computed on the first call and reused.
    depth : array, optional
        :func:`.mask.mask_depth` of ``mask``, when the caller has it already.

    Returns
    -------
    local_field, eroded_mask
    """
    field, mask = _field_and_mask(field, mask)
    vs = np.asarray(voxel_size, dtype=float)
    if radii_mm is None:
        step = float(vs.max())
        radii_mm = np.arange(12.0, step - 1e-6, -step)
    radii = sorted({float(r) for r in radii_mm}, reverse=True)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    pad = int(np.ceil(radii[0] / vs.min())) + 2
    # real-to-complex transforms of fast lengths: half the spectrum, a third
    # of the time of full complex FFTs on the same padded grid
    shape = tuple(sfft.next_fast_len(n + 2 * pad, real=True) for n in field.shape)
    kernels = {} if kernels is None else kernels
    core = tuple(slice(pad, pad + n) for n in field.shape)
    f = np.zeros(shape, np.float32)
    np.multiply(field, mask, out=f[core], casting="same_kind")
    F = sfft.rfftn(f, workers=workers)
    if depth is None:
        depth = mask_depth(mask, vs)
    elif depth.shape != mask.shape:
        raise ValueError(f"depth {depth.shape} must have the mask's shape {mask.shape}")
    filtered = np.zeros(field.shape, np.float32)
    done = np.zeros(field.shape, bool)
    product = np.empty_like(F)  # each radius' spectrum is formed in this one buffer
    for r in radii:
        key = (shape, r, tuple(vs))
        if key not in kernels:
            kernels[key] = smv_kernel(shape, r, vs, half=True, dtype=np.float32)
        inside = depth > inside_ball_depth(r)  # the sphere fits: the mask eroded by it (as :func:`.mask.erode_by`)
        new = inside & ~done
        if new.any():
            smooth = sfft.irfftn(np.multiply(kernels[key], F, out=product), s=shape, workers=workers,
                                 overwrite_x=True)[core]
            np.copyto(filtered, np.subtract(f[core], smooth, out=smooth), where=new)
        done |= inside
    final = done
    inverse_key = (shape, radii[0], tuple(vs), "inverse", threshold)
    if inverse_key not in kernels:
        one_minus = 1.0 - kernels[(shape, radii[0], tuple(vs))]
        keep = np.abs(one_minus) >= threshold
        inverse = np.zeros_like(one_minus)
        inverse[keep] = 1.0 / one_minus[keep]
        kernels[inverse_key] = inverse
    f.fill(0)
    np.multiply(filtered, final, out=f[core])
    spectrum = sfft.rfftn(f, workers=workers)
    spectrum *= kernels[inverse_key]
    local = sfft.irfftn(spectrum, s=shape, workers=workers, overwrite_x=True)[core]
    return np.multiply(local, final, dtype=np.float64), final


def pdf(field: np.ndarray, mask: np.ndarray, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
        weight: np.ndarray | None = None, pad: int = 20, iterations: int = 100, tol: float = 1e-4,
        workers=None) -> tuple[np.ndarray, np.ndarray]:
    """Projection onto dipole fields (Liu et al. 2011).

    Fits a susceptibility distribution *outside* the mask whose dipole field
    best explains the field *inside* it (weighted least squares, conjugate
    gradients on the normal equations, zero padding so that sources beyond
    the field of view can be represented).  The local field is the rest.

    Returns
    -------
    local_field, mask
    """
    from ferritin.cohort.dipole import dipole_kernel

    field, mask = _field_and_mask(field, mask)
    w = np.ones(field.shape) if weight is None else np.asarray(weight, dtype=np.float64)
    pw = [(pad, pad)] * 3
    f = np.pad(field * mask, pw)
    m = np.pad(mask, pw)
    W = np.pad(w * mask, pw) ** 2
    D = dipole_kernel(f.shape, voxel_size, b0_dir)
    outside = ~m

    def A(x):  # field inside the mask of sources outside it
        return sfft.ifftn(D * sfft.fftn(x * outside, workers=workers), workers=workers).real

    def At(y):
        return outside * sfft.ifftn(D * sfft.fftn(y, workers=workers), workers=workers).real

    def normal(x):
        return At(W * A(x))

    b = At(W * f)
    x = np.zeros_like(f)
    r = b.copy()
    p = r.copy()
    rs = float((r * r).sum())
    b_norm = np.sqrt(float((b * b).sum())) or 1.0
    for _ in range(int(iterations)):
        Ap = normal(p)
        alpha = rs / float((p * Ap).sum())
        x += alpha * p
        r -= alpha * Ap
        rs_new = float((r * r).sum())
        if np.sqrt(rs_new) / b_norm < tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    background = A(x)
    core = tuple(slice(pad, pad + n) for n in field.shape)
    return (f - background)[core] * mask, mask
