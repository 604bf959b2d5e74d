"""The magnetic dipole kernel and the susceptibility-to-field forward model.

Convention: the field perturbation (relative to B0, in ppm when chi is in
ppm) is ``delta_b = ifft(D * fft(chi))`` with
``D(k) = 1/3 - (k . b0)^2 / |k|^2`` and ``D(0) = 0`` (Lorentz-sphere corrected;
chi referenced to the mean).  Wave vectors are in cycles/mm along the voxel
axes, so anisotropic voxels and oblique slices (B0 not along a voxel axis)
are handled exactly.

It lives in ``cohort`` (below ``engine``) because both the simulator, which
computes the field of a known χ, and the QSM chain, which inverts it, use it.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = ["dipole_kernel", "b0_direction", "forward_field", "padded_shape", "GAMMA_HZ_PER_T"]

#: Proton gyromagnetic ratio / 2 pi (Hz/T).
GAMMA_HZ_PER_T = 42.57747892e6


def b0_direction(affine: np.ndarray, b0_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 direction in the voxel axes of an image with ``affine``.

    The scanner's B0 is along world z (NIfTI scanner RAS).  For an oblique
    acquisition the voxel axes are rotated, and B0 has components along all
    three of them.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world affine.
    b0_world : 3-vector
        B0 direction in world coordinates (default +z).
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0):
        raise ValueError("affine has a zero-length voxel axis")
    rot = m / norms
    b = np.asarray(b0_world, dtype=float)
    b = b / np.linalg.norm(b)
    # Components of B0 along each (unit) voxel axis.
    d = rot.T @ b
    return d / np.linalg.norm(d)


def padded_shape(shape, factor: float = 2.0) -> tuple[int, ...]:
    """A fast FFT size at least ``factor`` times ``shape`` along each axis."""
    return tuple(sfft.next_fast_len(int(np.ceil(n * factor))) for n in shape)


def dipole_kernel(shape, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), dtype=np.float64) -> np.ndarray:
    """Dipole kernel ``D(k)`` on the FFT grid of ``shape`` (unshifted).

    Parameters
    ----------
    shape : 3 ints
        FFT grid (usually padded).
    voxel_size : 3 floats
        Voxel size in mm along each array axis.
    b0_dir : 3 floats
        B0 direction in voxel-axis components (see :func:`b0_direction`).

    Returns
    -------
    ndarray
        Real kernel, ``D[0, 0, 0] = 0``.
    """
    if len(shape) != 3 or any(int(n) < 2 for n in shape):
        raise ValueError(f"shape must be 3 sizes >= 2, got {shape}")
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (3,) or np.any(vs <= 0):
        raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size}")
    b = np.asarray(b0_dir, dtype=float)
    if b.shape != (3,) or not np.isfinite(b).all() or np.linalg.norm(b) == 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {b0_dir}")
    b = b / np.linalg.norm(b)
    k = [sfft.fftfreq(int(n), d=v).astype(dtype) for n, v in zip(shape, vs)]
    kx, ky, kz = np.meshgrid(*k, indexing="ij", sparse=True)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.astype(dtype, copy=False)


def even_dipole_kernel(shape, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0)) -> np.ndarray:
    """:func:`dipole_kernel` averaged with its mirror ``D(-k)`` on the FFT grid.

    With B0 oblique to the grid the kernel is not even on the Nyquist planes
    (their frequency -1/2 is its own mirror, but the other coordinates are
    not), so it would map a real image to a complex one.  The even part maps
    real to real, which is what the real part of the complex product keeps
    anyway, and lets inversions use real-input FFTs (half the work).
    Identical to :func:`dipole_kernel` off the Nyquist planes.
    """
    d = dipole_kernel(shape, voxel_size, b0_dir)
    mirror = np.roll(np.flip(d), 1, axis=(0, 1, 2))  # mirror[i] = d[-i mod n]
    return 0.5 * (d + mirror)


def forward_field(chi: np.ndarray, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad_factor: float = 2.0,
                  workers: int | None = None) -> np.ndarray:
    """Field perturbation (same units as ``chi``, relative to B0) of a susceptibility map.

    The map is zero-padded to ``pad_factor`` times its size before the FFT so
    that periodic images of the object do not leak into the field.
    """
    chi = np.asarray(chi)
    if chi.ndim != 3:
        raise ValueError(f"chi must be 3-D, got shape {chi.shape}")
    shape = padded_shape(chi.shape, pad_factor)
    d = dipole_kernel(shape, voxel_size, b0_dir)
    f = sfft.rfftn(chi.astype(np.float64), s=shape, workers=workers)
    half = d[..., : f.shape[-1]]
    out = sfft.irfftn(f * half, s=shape, workers=workers)
    return out[: chi.shape[0], : chi.shape[1], : chi.shape[2]]
