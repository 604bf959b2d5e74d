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

:func:`ringing_evidence` decides, axis by axis, whether an acquisition rings
at all, so that the default filters only the axes that do (see
``docs/ringing.md``).  The evidence is the Gibbs signature itself: next to the
head's strong edges, a sub-voxel shift along the axis lowers the signal's
oscillation by more than it does far from them, where only noise moves the
minimum.  An image sampled without truncation (a simulated one) has no such
excess and is left bit for bit as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .phasor import phasor

__all__ = ["unring", "tukey_taper", "taper_kspace", "taper_noise_gain", "ringing_evidence", "RingingEvidence"]


def _oscillation(z: np.ndarray, axis: int, n_points: int) -> np.ndarray:
    """Smaller of the total variations over ``n_points`` steps to the right and to the left of each voxel."""
    step = _steps(z, axis)
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


def _axis_tapers(shape, fraction: float, dtype=np.float64, axes=(0, 1, 2)) -> list[np.ndarray]:
    """:func:`tukey_taper` along each axis of the FFT grid of ``shape``, each shaped to broadcast along it
    (all ones along an axis not in ``axes``)."""
    windows = []
    for axis, n in enumerate(shape):
        along = [1] * len(shape)
        along[axis] = int(n)
        windows.append(tukey_taper(int(n), fraction if axis in axes else 0.0).astype(dtype).reshape(along))
    return windows


def _separable_taper(shape, fraction: float, axes=(0, 1, 2)) -> np.ndarray:
    """The product of :func:`tukey_taper` along each of ``axes``, on the FFT grid of ``shape``."""
    window = np.ones(())
    for along in _axis_tapers(shape, fraction, axes=axes):
        window = window * along
    return window


def taper_kspace(magnitude: np.ndarray, phase: np.ndarray, fraction: float = 0.3,
                 workers=None, box: tuple[slice, ...] | None = None,
                 axes: tuple[int, ...] = (0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (echo, x, y, z) with the outer ``fraction`` of k-space tapered along ``axes``.

    The complex signal ``m exp(i phi)`` of every echo is filtered with a separable
    Tukey window (:func:`tukey_taper`) along each spatial axis of ``axes``
    (0, 1, 2 of the image array).  It blurs every image along them, ringing or not.

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
    axes = tuple(sorted(set(int(a) for a in axes)))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be among 0, 1, 2; got {axes}")
    if fraction == 0 or not axes:
        return magnitude[(slice(None), *box)], phase[(slice(None), *box)]
    real = np.float32 if magnitude.dtype == np.float32 and phase.dtype == np.float32 else np.float64
    shape = magnitude.shape[1:]
    kept = [range(n)[b] for n, b in zip(shape, box)]
    windows = _axis_tapers(shape, fraction, real, axes)
    order = sorted(axes, key=lambda a: len(kept[a]) / shape[a])
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
        z = z[tuple(slice(None) if a in axes else box[a] for a in range(3))]
        np.abs(z, out=m_box, casting="unsafe")
        np.arctan2(z.imag, z.real, out=p_box, casting="unsafe")
    return out_m, out_p


def taper_noise_gain(shape, fraction: float, axes: tuple[int, ...] = (0, 1, 2)) -> float:
    """How much :func:`taper_kspace` lowers a Laplacian-based noise estimate of white noise.

    The ratio ``sqrt(sum |L W|^2 / sum |L|^2)`` over the k-space of ``shape``,
    ``L`` the 7-point Laplacian's transfer function and ``W`` the separable
    Tukey window.  The taper removes most of the high frequencies such an
    estimate reads, but not the middle ones the dipole inversion amplifies
    along its cone: dividing the estimate by this gain gives the noise level
    the regularisation must match.
    """
    if fraction == 0 or not axes:
        return 1.0
    grids = np.meshgrid(*[sfft.fftfreq(int(n)) for n in shape], indexing="ij", sparse=True)
    lap = sum(2.0 * np.cos(2.0 * np.pi * g) - 2.0 for g in grids)
    window = _separable_taper(shape, fraction, axes)
    return float(np.sqrt(np.sum((lap * window) ** 2) / np.sum(lap**2)))


#: Near the head's edges, a sub-voxel shift must lower the oscillation along an axis by at
#: least this share of it (Gibbs ringing), and by at least ``RINGING_EXCESS`` more than it
#: lowers it far from any edge (where only noise moves the minimum), for the axis to ring.
RINGING_NEAR_EDGE = 0.04
RINGING_EXCESS = 0.01
RINGING_RELATIVE = 0.5
#: an edge faces an axis when the step along it is at least this share of the steps' norm (within ~35°)
FACING = 0.8


@dataclass(frozen=True)
class RingingEvidence:
    """Per spatial axis: how much local sub-voxel shifts lower the oscillation near and far from edges."""

    near_edge: tuple[float, float, float]
    far_from_edge: tuple[float, float, float]

    @property
    def axes(self) -> tuple[int, ...]:
        """The axes whose ringing is evident (0, 1, 2 of the image array).

        An axis rings when its near-edge share and its excess over the far share
        pass their limits, and its excess is at least ``RINGING_RELATIVE`` of the
        strongest axis's: a weaker excess is that axis's ringing seen across the
        curved edges of the head, which follows it away when it is filtered.
        """
        excess = [near - far for near, far in zip(self.near_edge, self.far_from_edge)]
        strongest = max(excess)
        return tuple(a for a, (near, e) in enumerate(zip(self.near_edge, excess))
                     if near >= RINGING_NEAR_EDGE and e >= RINGING_EXCESS and e >= RINGING_RELATIVE * strongest)

    def to_dict(self) -> dict:
        return {"axes": list(self.axes), "near_edge": [round(v, 4) for v in self.near_edge],
                "far_from_edge": [round(v, 4) for v in self.far_from_edge]}


def ringing_evidence(magnitude: np.ndarray, phase: np.ndarray, n_shifts: int = 10, n_points: int = 3,
                     edge_share: float = 0.3, max_voxels: int = 1_500_000) -> RingingEvidence:
    """Whether the first echo's complex signal shows truncation ringing, axis by axis.

    Along each axis, :func:`unring`'s local sub-voxel shifts are applied and the
    total variation (sum of ``|z[x+1] - z[x]|``) before and after is compared in
    two places: within ``n_points`` voxels of a strong edge (a step larger than
    ``edge_share`` of the 99th percentile of the magnitude), not counting the
    step itself, and far from any such edge inside the head.  Ringing lowers
    the oscillation near edges much more than elsewhere; noise lowers both
    alike; a sampled step that never rang is already at its least oscillation.

    Parameters
    ----------
    magnitude, phase : arrays (echo, x, y, z)
    n_shifts, n_points : as :func:`unring`
    edge_share : float
        The smallest step, as a share of the bright tissue's magnitude, that counts as an edge.
    max_voxels : int
        Ringing runs along lines, and each line is judged on its own: along each
        axis only every k-th line in the other two directions is read, k chosen
        to read at most about this many voxels (a 1 mm head: every third line).

    Returns
    -------
    RingingEvidence
        The shares of the oscillation removed near and far from edges; ``.axes``
        names the axes that ring.
    """
    magnitude = np.asarray(magnitude)
    phase = np.asarray(phase)
    if magnitude.shape != phase.shape or magnitude.ndim != 4:
        raise ValueError(f"magnitude and phase must both be (echo, x, y, z); got {magnitude.shape}, {phase.shape}")
    if not 0 < edge_share < 1:
        raise ValueError(f"edge_share must lie between 0 and 1, got {edge_share}")
    z = phasor(phase[0], magnitude[0], dtype=np.complex128)
    m = np.abs(z)
    bright = float(np.percentile(m, 99))
    near_shares, far_shares = [], []
    every = max(1, int(np.ceil(np.sqrt(z.size / max_voxels))))
    full_z, full_m = z, m
    for axis in range(3):
        if full_z.shape[axis] <= 2 * n_points + 1 or bright <= 0:
            near_shares.append(0.0)
            far_shares.append(0.0)
            continue
        lines = tuple(slice(None) if a == axis else slice(None, None, every) for a in range(3))
        z, m = full_z[lines], full_m[lines]
        steps = [_steps(m, a) for a in range(3)]
        # only edges that face this axis: at an oblique edge, another axis's ringing crosses this one's lines
        facing = steps[axis] >= FACING * np.sqrt(sum(st**2 for st in steps))
        edge = (steps[axis] > edge_share * bright) & facing
        reach = ndimage.binary_dilation(edge, _line(axis, 2 * n_points + 1))
        near = reach & ~ndimage.binary_dilation(edge, _line(axis, 2), origin=_origin(axis, -1))
        far = ~reach & (m > 0.2 * bright)
        before = _steps(z, axis)
        after = _steps(_unring_axis(z, axis, n_shifts, n_points), axis)
        near_shares.append(_share_removed(before, after, near))
        far_shares.append(_share_removed(before, after, far))
    return RingingEvidence(tuple(near_shares), tuple(far_shares))


def _line(axis: int, length: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = length
    return np.ones(shape, bool)


def _origin(axis: int, offset: int) -> list[int]:
    origin = [0, 0, 0]
    origin[axis] = offset
    return origin


def _steps(z: np.ndarray, axis: int) -> np.ndarray:
    """``|z[x+1] - z[x]|`` along ``axis``, periodic (the last voxel's step is to the first)."""
    return np.abs(np.diff(z, axis=axis, append=np.take(z, [0], axis=axis)))


def _share_removed(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> float:
    total = float(before[where].sum())
    return 0.0 if total == 0 else float(1.0 - after[where].sum() / total)
