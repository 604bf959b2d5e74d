"""Truncation (Gibbs) ringing of the complex GRE signal.

A scanner measures a finite part of k-space; every sharp edge of the image then
rings, most of all the bright scalp.  In the magnitude the ripples are small,
but in the phase they carry the scalp's frequency into the brain as fine
stripes parallel to the head's outline, which background removal keeps (they
are not harmonic) and the dipole inversion amplifies into concentric rings.

:func:`unring` removes the ringing by local sub-voxel shifts (Kellner et al.
2016, as MRtrix's ``mrdegibbs`` and DIPY's ``gibbs_removal``), applied to the
complex signal along each axis of a 3-D acquisition: each voxel is re-sampled
at the sub-voxel position where its neighbourhood oscillates least.  Unlike a
k-space filter it leaves an image without ringing (such as a simulated one)
nearly unchanged, so it costs no resolution where there is nothing to remove.
:func:`taper_kspace` is the plain filter, kept as an option.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .phasor import phasor

__all__ = ["unring", "tukey_taper", "taper_kspace", "taper_noise_gain"]


def _oscillation(z: np.ndarray, axis: int, n_points: int) -> np.ndarray:
    """Smaller of the total variations over ``n_points`` steps to the right and to the left of each voxel."""
    step = np.abs(np.diff(z, axis=axis, append=np.take(z, [0], axis=axis)))  # |z[x+1] - z[x]|, periodic
    right = sum(np.roll(step, -k, axis=axis) for k in range(n_points))
    left = sum(np.roll(step, k + 1, axis=axis) for k in range(n_points))
    return np.minimum(right, left)


def _unring_axis(z: np.ndarray, axis: int, n_shifts: int, n_points: int, workers=None) -> np.ndarray:
    """Local sub-voxel-shift unringing of complex ``z`` along one axis."""
    n = z.shape[axis]
    freq = sfft.fftfreq(n).reshape([-1 if a == axis else 1 for a in range(z.ndim)])
    spectrum = sfft.fft(z, axis=axis, workers=workers)
    best = {}
    for sign in (1.0, -1.0):
        value, shift, tv = z.copy(), np.zeros(z.shape), _oscillation(z, axis, n_points)
        for s in np.arange(1, n_shifts + 1) / (2.0 * n_shifts):  # (0, 0.5] voxel
            moved = sfft.ifft(spectrum * np.exp(2j * np.pi * freq * sign * s), axis=axis, workers=workers)
            tv_s = _oscillation(moved, axis, n_points)
            better = tv_s < tv
            value[better], shift[better], tv[better] = moved[better], s, tv_s[better]
        best[sign] = (value, shift)
    (v_pos, s_pos), (v_neg, s_neg) = best[1.0], best[-1.0]
    # back to the voxel centre: linear interpolation between the best samples on either side
    total = s_pos + s_neg
    out = z.copy()
    moved = total > 0
    out[moved] = v_neg[moved] + (v_pos[moved] - v_neg[moved]) * (s_neg[moved] / total[moved])
    return out


def unring(magnitude: np.ndarray, phase: np.ndarray, n_shifts: int = 10, n_points: int = 3,
           workers=None) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (echo, x, y, z) with the Gibbs ringing of each echo removed.

    Parameters
    ----------
    magnitude, phase : arrays (echo, x, y, z)
    n_shifts : int
        Sub-voxel shifts tried on each side, up to half a voxel.
    n_points : int
        Neighbours over which the oscillation of a voxel is measured.
    """
    magnitude = np.asarray(magnitude)
    phase = np.asarray(phase)
    if magnitude.shape != phase.shape or magnitude.ndim != 4:
        raise ValueError(f"magnitude and phase must both be (echo, x, y, z); got {magnitude.shape}, {phase.shape}")
    if n_shifts < 1 or n_points < 1:
        raise ValueError(f"n_shifts and n_points must be at least 1, got {n_shifts} and {n_points}")
    mags, phases = [], []
    for m, p in zip(magnitude, phase):
        z = phasor(p, m, dtype=np.complex128)
        for axis in range(3):
            if z.shape[axis] > 2 * n_points + 1:
                z = _unring_axis(z, axis, n_shifts, n_points, workers)
        mags.append(np.abs(z).astype(magnitude.dtype, copy=False))
        phases.append(np.angle(z).astype(phase.dtype, copy=False))
    return np.stack(mags), np.stack(phases)


def tukey_taper(n: int, fraction: float) -> np.ndarray:
    """The Tukey window over the FFT frequencies of ``n`` samples, tapering the outer ``fraction``.

    1 for ``|f| <= (1 - fraction) * Nyquist``, falling as a raised cosine to 0 at the Nyquist
    frequency; ``fraction = 0`` gives all ones.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the taper fraction must be in [0, 1], got {fraction}")
    f = np.abs(sfft.fftfreq(n)) * 2.0  # 0 at DC, 1 at Nyquist
    if fraction == 0:
        return np.ones(n)
    edge = 1.0 - fraction
    return np.where(f <= edge, 1.0, 0.5 * (1.0 + np.cos(np.pi * (f - edge) / fraction)))


def _axis_tapers(shape, fraction: float, dtype=np.float64) -> list[np.ndarray]:
    """:func:`tukey_taper` along each axis of the FFT grid of ``shape``, each shaped to broadcast along it."""
    windows = []
    for axis, n in enumerate(shape):
        along = [1] * len(shape)
        along[axis] = int(n)
        windows.append(tukey_taper(int(n), fraction).astype(dtype).reshape(along))
    return windows


def _separable_taper(shape, fraction: float) -> np.ndarray:
    """The product of :func:`tukey_taper` along each axis, on the FFT grid of ``shape``."""
    window = np.ones(())
    for along in _axis_tapers(shape, fraction):
        window = window * along
    return window


def taper_kspace(magnitude: np.ndarray, phase: np.ndarray, fraction: float = 0.3,
                 workers=None, box: tuple[slice, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (echo, x, y, z) with the outer ``fraction`` of k-space tapered.

    The complex signal ``m exp(i phi)`` of every echo is filtered with a separable
    Tukey window (:func:`tukey_taper`) along each spatial axis.  It blurs every
    image, ringing or not.

    ``box`` (three slices) returns only that part of the filtered images.  The
    window is separable, so the filter runs axis by axis, and each axis is cropped
    to the box as soon as it is filtered: the axis that keeps the smallest share
    first, so that the other axes transform as little as they can.
    Single-precision input is filtered in single precision.
    """
    magnitude = np.asarray(magnitude)
    phase = np.asarray(phase)
    if magnitude.shape != phase.shape or magnitude.ndim != 4:
        raise ValueError(f"magnitude and phase must both be (echo, x, y, z); got {magnitude.shape}, {phase.shape}")
    box = (slice(None),) * 3 if box is None else tuple(box)
    if len(box) != 3:
        raise ValueError(f"box must hold three slices, got {box!r}")
    if fraction == 0:
        return magnitude[(slice(None), *box)], phase[(slice(None), *box)]
    real = np.float32 if magnitude.dtype == np.float32 and phase.dtype == np.float32 else np.float64
    shape = magnitude.shape[1:]
    kept = [range(n)[b] for n, b in zip(shape, box)]
    windows = _axis_tapers(shape, fraction, real)
    order = sorted(range(3), key=lambda a: len(kept[a]) / shape[a])
    out_m = np.empty((len(magnitude), *(len(k) for k in kept)), magnitude.dtype)
    out_p = np.empty(out_m.shape, phase.dtype)
    signal = np.empty(shape, np.result_type(real, np.complex64))  # every echo's transforms run in this one
    for m, p, m_box, p_box in zip(magnitude, phase, out_m, out_p):
        z = phasor(p, m, out=signal)
        for axis in order:
            z = sfft.fft(z, axis=axis, workers=workers, overwrite_x=True)
            z *= windows[axis]
            z = sfft.ifft(z, axis=axis, workers=workers, overwrite_x=True)
            z = z[tuple(box[axis] if a == axis else slice(None) for a in range(3))]
        np.abs(z, out=m_box, casting="unsafe")
        np.arctan2(z.imag, z.real, out=p_box, casting="unsafe")
    return out_m, out_p


def taper_noise_gain(shape, fraction: float) -> float:
    """How much :func:`taper_kspace` lowers a Laplacian-based noise estimate of white noise.

    The ratio ``sqrt(sum |L W|^2 / sum |L|^2)`` over the k-space of ``shape``,
    ``L`` the 7-point Laplacian's transfer function and ``W`` the separable
    Tukey window.  The taper removes most of the high frequencies such an
    estimate reads, but not the middle ones the dipole inversion amplifies
    along its cone: dividing the estimate by this gain gives the noise level
    the regularisation must match.
    """
    if fraction == 0:
        return 1.0
    grids = np.meshgrid(*[sfft.fftfreq(int(n)) for n in shape], indexing="ij", sparse=True)
    lap = sum(2.0 * np.cos(2.0 * np.pi * g) - 2.0 for g in grids)
    window = _separable_taper(shape, fraction)
    return float(np.sqrt(np.sum((lap * window) ** 2) / np.sum(lap**2)))
